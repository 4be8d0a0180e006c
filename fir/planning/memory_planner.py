"""Offsets for buffers in one arena: greedy placement under several orderings, the smallest arena wins.

A buffer has a size in bytes and a lifetime [start, end] of integer positions, both ends inclusive. Two buffers
whose lifetimes share a position must not share a byte. A buffer may name an in-place `parent` that starts
before it and ends where it starts (the op that overwrites it is its last reader): it then takes exactly its
parent's offset. The
two, and any chain of them, form one *group*, placed as one interval of the chain's largest size over the
chain's whole lifetime (the pass only chains buffers of equal size).

Every size is rounded up to ALIGNMENT bytes and every offset is a multiple of it; the lower bound and the
no-reuse total use the same rounded sizes, so they compare with the arena like for like.

The orderings (`ORDERINGS`), each a greedy pass that places one group at a time among the already placed
groups whose lifetimes overlap its own:

| ordering   | groups in the order of (then the lower index)                     | offset chosen                       |
| ---------- | ----------------------------------------------------------------- | ----------------------------------- |
| `size`     | size, largest first; then the earlier start                       | best fit: the smallest gap holding it |
| `start`    | start position, earliest first; then the larger size              | first fit: the lowest gap holding it |
| `lifetime` | lifetime length, longest first; then the larger size, earlier start | best fit                          |
| `area`     | size x lifetime length, largest first; then the earlier start     | best fit                            |

(`size` is the TFLite / XLA heap simulator / OneFlow MemSizeFirst rule.) When no gap between the conflicting
groups holds it, a group goes on top of them. The smallest
arena wins; while it is above the lower bound, a search within a budget of group placements tries to shrink
it: first a skyline placement (the group that can go lowest goes next, by first fit), kept if smaller, then a
seeded local search over the kept placement order (as TVM's hill climbing). Size first stacks the largest
groups in fixed slots, so a short large group keeps its slot empty between its uses; the skyline fills the
lowest hole at each step instead (a 12-layer GPT-2's loss stage: 1.101 x the bound by every ordering, the bound
after the skyline).

Speed: the time axis is cut into blocks as wide as a typical short lifetime. A group is listed in the blocks
it touches when it spans few of them; a longer one is listed in its first and last block and put, as an offset
interval, into a segment tree over the blocks in between whose nodes keep merged interval lists. A query then
reads a few short lists and O(log blocks) merged lists instead of every placed group; a long query, or one
whose blocks list many groups, scans the placed groups with numpy.
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
import dataclasses
from dataclasses import dataclass, field

import numpy as np

ALIGNMENT = 256
ORDERINGS: tuple[str, ...] = ("size", "start", "lifetime", "area")

# A group spanning at most this many blocks (past its first) is listed in each of them; longer ones go to the tree.
_SHORT_SPAN = 3
# A query spanning more blocks than this, or whose blocks list more groups than _SCAN_LISTS, scans every placed
# group with numpy instead.
_QUERY_SPAN = 8
_SCAN_LISTS = 512
# Local search: each step re-places every group. At most MAX_SEARCH_STEPS steps and SEARCH_BUDGET group
# placements in all (up to about a second on a 2-core machine); when the budget allows fewer than
# MIN_SEARCH_STEPS steps (more than 4,000 groups), none are taken.
MAX_SEARCH_STEPS = 300
MIN_SEARCH_STEPS = 10
SEARCH_BUDGET = 40_000
# The skyline placement that opens the search orders only the groups holding this share of the area (size x
# lifetime length), largest first; the small rest would each be refitted at many heights for little gain.
SKYLINE_AREA = 0.99


@dataclass(frozen=True)
class Buffer:
    """One buffer: bytes, first and last position it is live at (inclusive), and its in-place parent's index."""

    size: int
    start: int
    end: int
    parent: int | None = None


@dataclass(frozen=True)
class MemoryPlan:
    """Where each buffer goes and how good that is."""

    offsets: list[int]
    arena_size: int
    lower_bound: int  # the most bytes live at one position (rounded sizes, an in-place chain counted once)
    no_reuse: int  # every buffer in its own bytes (rounded sizes)
    ordering: str  # the ordering that gave the smallest arena
    arena_by_ordering: dict[str, int] = field(default_factory=dict)
    in_place: int = 0  # buffers that take their parent's bytes
    search_steps: int = 0  # skyline and local search steps after the orderings (arena_size is after them)


def align(nbytes: int) -> int:
    """`nbytes` rounded up to a multiple of ALIGNMENT."""
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


# ----------------------------------------------------------------------------------------------- groups
@dataclass
class _Groups:
    """In-place chains merged into groups: each buffer's group, and each group's interval and size."""

    of: np.ndarray  # buffer -> group
    start: np.ndarray
    end: np.ndarray
    size: np.ndarray


def _groups(buffers: Sequence[Buffer]) -> _Groups:
    n = len(buffers)
    child_of: dict[int, int] = {}
    for i, b in enumerate(buffers):
        if b.size < 0 or b.start > b.end:
            raise ValueError(f"buffer {i}: needs size >= 0 and start <= end, got {b}")
        p = b.parent
        if p is None:
            continue
        if not 0 <= p < n or p == i:
            raise ValueError(f"buffer {i}: parent {p} is not another buffer")
        if buffers[p].end != b.start or buffers[p].start >= b.start:
            raise ValueError(f"buffer {i}: its in-place parent {p} ([{buffers[p].start}, {buffers[p].end}]) must "
                             f"start before it and end where it starts ({b.start})")
        if p in child_of:
            raise ValueError(f"buffer {p} is the in-place parent of both {child_of[p]} and {i}")
        child_of[p] = i
    root = [-1] * n
    for i in range(n):
        chain = []
        j = i
        while root[j] < 0 and buffers[j].parent is not None:
            chain.append(j)
            j = buffers[j].parent  # type: ignore[assignment]
            if len(chain) > n:
                raise ValueError("in-place parents form a cycle")
        r = j if root[j] < 0 else root[j]
        root[j] = r
        for k in chain:
            root[k] = r
    roots = sorted(set(root))
    index = {r: g for g, r in enumerate(roots)}
    of = np.array([index[r] for r in root], dtype=np.int64)
    m = len(roots)
    start = np.full(m, np.iinfo(np.int64).max, dtype=np.int64)
    end = np.full(m, np.iinfo(np.int64).min, dtype=np.int64)
    size = np.zeros(m, dtype=np.int64)
    if n:
        bstart = np.array([b.start for b in buffers], dtype=np.int64)
        bend = np.array([b.end for b in buffers], dtype=np.int64)
        bsize = np.array([align(b.size) for b in buffers], dtype=np.int64)
        np.minimum.at(start, of, bstart)
        np.maximum.at(end, of, bend)
        np.maximum.at(size, of, bsize)
    return _Groups(of, start, end, size)


def _peak(start: np.ndarray, end: np.ndarray, size: np.ndarray) -> int:
    """The most bytes live at one position."""
    if len(size) == 0:
        return 0
    times = np.concatenate([start, end + 1])
    deltas = np.concatenate([size, -size])
    order = np.lexsort((deltas, times))  # at one time, frees (negative) before allocations
    return int(max(0, np.cumsum(deltas[order]).max()))


def lower_bound(buffers: Sequence[Buffer]) -> int:
    """The most (rounded) bytes live at one position, an in-place chain counted once: no arena is smaller."""
    g = _groups(buffers)
    return _peak(g.start, g.end, g.size)


# ----------------------------------------------------------------------------------------------- placement
def _insert_interval(los: list[int], his: list[int], a: int, b: int) -> None:
    """Add [a, b) to a sorted list of disjoint intervals, merging those it overlaps or touches."""
    j = bisect_left(his, a)
    k = bisect_right(los, b)
    if j < k:
        a = min(a, los[j])
        b = max(b, his[k - 1])
    los[j:k] = [a]
    his[j:k] = [b]


def _fit(intervals: list[tuple[int, int]], size: int, best: bool) -> int:
    """The offset of the chosen gap among occupied [lo, hi) intervals (any order, overlaps allowed)."""
    intervals.sort()
    cur = 0
    choice, choice_gap = -1, 0
    for lo, hi in intervals:
        gap = lo - cur
        if gap >= size:
            if not best:
                return cur
            if choice < 0 or gap < choice_gap:
                choice, choice_gap = cur, gap
        if hi > cur:
            cur = hi
    return cur if choice < 0 else choice


def _fit_numpy(lo: np.ndarray, hi: np.ndarray, size: int, best: bool) -> int:
    """_fit on arrays."""
    if len(lo) == 0:
        return 0
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    top = np.maximum.accumulate(hi)
    prev = np.concatenate(([0], top[:-1]))
    gap = lo - prev
    ok = np.flatnonzero(gap >= size)
    if len(ok) == 0:
        return int(top[-1])
    if not best:
        return int(prev[ok[0]])
    return int(prev[ok[np.argmin(gap[ok])]])  # argmin takes the first, i.e. lowest, of equal gaps


class _Placer:
    """Greedy placement of groups, one at a time, against the placed groups whose lifetimes overlap."""

    def __init__(self, start: np.ndarray, end: np.ndarray, size: np.ndarray):
        self.start, self.end, self.size = start.tolist(), end.tolist(), size.tolist()
        n = len(self.size)
        t0 = int(start.min()) if n else 0
        lengths = end - start + 1
        # Blocks about as wide as a typical short lifetime, so that most short groups touch one or two of them;
        # the long ones (weights, live from start to end) go to the tree whatever their number.
        self.t0 = t0
        short = lengths[lengths <= max(1, (int(end.max()) - t0) // 16)] if n else lengths
        self.width = max(1, int(np.median(short if len(short) else lengths))) if n else 1
        nblocks = (int(end.max()) - t0) // self.width + 1 if n else 1
        self.lists: list[list[int]] = [[] for _ in range(nblocks)]
        self.leaves = 1 << max(0, (nblocks - 1).bit_length())
        self.tree_lo: list[list[int] | None] = [None] * (2 * self.leaves)
        self.tree_hi: list[list[int] | None] = [None] * (2 * self.leaves)
        # Per block: the merged intervals of the tree nodes on its path (None: to be gathered again).
        self.cache: list[list[tuple[int, int]] | None] = [None] * nblocks
        self.offset = [-1] * n
        # Placed groups in placement order, for the numpy scan of long queries.
        self.pstart = np.zeros(n, dtype=np.int64)
        self.pend = np.zeros(n, dtype=np.int64)
        self.plo = np.zeros(n, dtype=np.int64)
        self.phi = np.zeros(n, dtype=np.int64)
        self.count = 0

    def _block(self, t: int) -> int:
        return (t - self.t0) // self.width

    def fit(self, g: int, best: bool) -> int:
        """Group g's offset among the groups placed so far (nothing is recorded)."""
        s, e, size = self.start[g], self.end[g], self.size[g]
        bs, be = self._block(s), self._block(e)
        if be - bs > _QUERY_SPAN or sum(len(self.lists[b]) for b in range(bs, be + 1)) > _SCAN_LISTS:
            c = self.count
            mask = (self.pstart[:c] <= e) & (self.pend[:c] >= s)
            return _fit_numpy(self.plo[:c][mask], self.phi[:c][mask], size, best)
        return _fit(self._conflicts(s, e, bs, be), size, best)

    def place(self, g: int, best: bool, off: int | None = None) -> int:
        """Choose group g's offset (unless given), record it, and return it."""
        if off is None:
            off = self.fit(g, best)
        self._add(g, off, self._block(self.start[g]), self._block(self.end[g]))
        return off

    def _conflicts(self, s: int, e: int, bs: int, be: int) -> list[tuple[int, int]]:
        start, end, offset, size = self.start, self.end, self.offset, self.size
        out = []
        for b in range(bs, be + 1):
            for h in self.lists[b]:
                if start[h] <= e and end[h] >= s:
                    o = offset[h]
                    out.append((o, o + size[h]))
            out.extend(self._covering(b))
        return out

    def _covering(self, b: int) -> list[tuple[int, int]]:
        """The merged offset intervals of the groups that cover block b whole (the tree nodes on its path)."""
        cached = self.cache[b]
        if cached is not None:
            return cached
        pairs: list[tuple[int, int]] = []
        node = b + self.leaves
        while node:
            los = self.tree_lo[node]
            if los:
                pairs.extend(zip(los, self.tree_hi[node]))  # type: ignore[arg-type]
            node >>= 1
        merged: list[tuple[int, int]] = []
        if pairs:
            pairs.sort()
            lo, hi = pairs[0]
            for a, z in pairs[1:]:
                if a > hi:
                    merged.append((lo, hi))
                    lo, hi = a, z
                elif z > hi:
                    hi = z
            merged.append((lo, hi))
        self.cache[b] = merged
        return merged

    def _add(self, g: int, off: int, bs: int, be: int) -> None:
        self.offset[g] = off
        top = off + self.size[g]
        c = self.count
        self.pstart[c], self.pend[c], self.plo[c], self.phi[c] = self.start[g], self.end[g], off, top
        self.count = c + 1
        if be - bs <= _SHORT_SPAN:
            for b in range(bs, be + 1):
                self.lists[b].append(g)
            return
        self.lists[bs].append(g)
        self.lists[be].append(g)
        self.cache[bs + 1:be] = [None] * (be - bs - 1)  # exactly the blocks whose paths gain this group
        lo, hi = bs + 1 + self.leaves, be + self.leaves  # the blocks in between, [lo, hi)
        while lo < hi:
            if lo & 1:
                self._tree_add(lo, off, top)
                lo += 1
            if hi & 1:
                hi -= 1
                self._tree_add(hi, off, top)
            lo >>= 1
            hi >>= 1

    def _tree_add(self, node: int, lo: int, hi: int) -> None:
        if self.tree_lo[node] is None:
            self.tree_lo[node], self.tree_hi[node] = [], []
        _insert_interval(self.tree_lo[node], self.tree_hi[node], lo, hi)  # type: ignore[arg-type]


def _order(name: str, start: np.ndarray, end: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, bool]:
    """The groups in the ordering's order, and whether it places by best fit."""
    length = end - start + 1
    index = np.arange(len(size))
    if name == "size":
        return np.lexsort((index, start, -size)), True
    if name == "start":
        return np.lexsort((index, -size, start)), False
    if name == "lifetime":
        return np.lexsort((index, start, -size, -length)), True
    if name == "area":
        return np.lexsort((index, start, -size * length)), True
    raise ValueError(f"unknown ordering '{name}' (known: {', '.join(ORDERINGS)})")


def _place_in_order(order: list[int], best: bool, start: np.ndarray, end: np.ndarray, size: np.ndarray) -> \
        tuple[np.ndarray, int]:
    """Offsets (and the arena) of the groups placed greedily in the given order."""
    placer = _Placer(start, end, size)
    for g in order:
        if size[g] > 0:  # empty groups hold no bytes: offset 0, never in anyone's way
            placer.place(g, best)
    offsets = np.array([max(o, 0) for o in placer.offset], dtype=np.int64)
    return offsets, int((offsets + size).max()) if len(offsets) else 0


def place_groups(start: np.ndarray, end: np.ndarray, size: np.ndarray, ordering: str) -> np.ndarray:
    """Offsets of intervals (groups) placed greedily in one ordering."""
    order, best = _order(ordering, start, end, size)
    return _place_in_order(order.tolist(), best, start, end, size)[0]


def _lowest_first(start: np.ndarray, end: np.ndarray, size: np.ndarray, limit: int) -> \
        tuple[list[int], np.ndarray, int, int] | None:
    """Skyline placement: repeatedly place, by first fit, the group that can go lowest (ties: the larger size x
    lifetime length). Only the groups holding SKYLINE_AREA of all bytes x positions take part (the rest, small or
    short, follow by size); first fit in the returned order gives the same offsets. Returns the order, offsets,
    arena and fits used, or None past `limit` fits."""
    n = len(size)
    area = size * (end - start + 1)
    by_area = np.lexsort((np.arange(n), start, -area))
    cover = np.cumsum(area[by_area])
    k = int(np.searchsorted(cover, SKYLINE_AREA * cover[-1])) + 1 if n else 0
    lead = by_area[:k].tolist()
    placer = _Placer(start, end, size)
    # A group's lowest offset only rises as others are placed, so a heap keyed by a possibly stale offset finds
    # the lowest by refitting the top until its offset holds.
    heap = [(0, -int(area[g]), g) for g in sorted(lead) if size[g] > 0]
    heapq.heapify(heap)
    order: list[int] = []
    fits = 0
    while heap:
        if fits >= limit:
            return None
        off, key, g = heap[0]
        fits += 1
        new = placer.fit(g, False)
        if new != off:
            heapq.heapreplace(heap, (new, key, g))
            continue
        heapq.heappop(heap)
        placer.place(g, False, off)
        order.append(g)
    led = set(lead)
    for g in np.lexsort((np.arange(n), start, -size)).tolist():
        if g not in led:
            order.append(g)
            if size[g] > 0:
                placer.place(g, False)
    fits += n - len(led)
    offsets = np.array([max(o, 0) for o in placer.offset], dtype=np.int64)
    return order, offsets, int((offsets + size).max()) if n else 0, fits


def _search(order: list[int], best: bool, start: np.ndarray, end: np.ndarray, size: np.ndarray,
            offsets: np.ndarray, arena: int, bound: int, steps: int) -> tuple[np.ndarray, int, int]:
    """Local search over the placement order (as TVM's hill climbing): move a group that reaches the top of the
    arena earlier or to the front, move a group it conflicts with later, or swap two groups; keep a new order
    whose arena is no larger. Stops at the lower bound. Returns offsets, arena and the steps taken."""
    rng = random.Random(0)  # deterministic: the same program always gets the same plan
    order = list(order)
    taken = 0
    while taken < steps and arena > bound:
        taken += 1
        tops = np.flatnonzero(offsets + size == arena).tolist()
        top = rng.choice(tops)
        i = order.index(top)
        new = list(order)
        move = rng.randrange(4)
        if move == 0:
            new.insert(0, new.pop(i))
        elif move == 1 and i > 0:
            new.insert(rng.randrange(i), new.pop(i))
        elif move == 2:
            rivals = [h for h in order[:i] if start[h] <= end[top] and end[h] >= start[top]]
            if not rivals:
                continue
            k = new.index(rng.choice(rivals))
            h = new.pop(k)
            new.insert(rng.randrange(k, len(new) + 1), h)
        else:
            a, b = rng.randrange(len(new)), rng.randrange(len(new))
            new[a], new[b] = new[b], new[a]
        new_offsets, new_arena = _place_in_order(new, best, start, end, size)
        if new_arena <= arena:
            order, offsets, arena = new, new_offsets, new_arena
    return offsets, arena, taken


def plan_buffers(buffers: Sequence[Buffer], orderings: Sequence[str] = ORDERINGS,
                 search_budget: int = SEARCH_BUDGET) -> MemoryPlan:
    """Place every buffer under each ordering, keep the smallest arena (ties: the earlier ordering), then improve
    it by local search while `search_budget` group placements last (0: no search). The answer depends on the
    buffers alone (the search is seeded), so it is remembered: the devices of a symmetric mesh, whose programs
    have the same buffers, are planned once."""
    key = (tuple(buffers), tuple(orderings), search_budget)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _plan_buffers(list(buffers), tuple(orderings), search_budget)
        if len(_PLANS) >= _PLANS_KEPT:
            _PLANS.pop(next(iter(_PLANS)))  # the oldest
        _PLANS[key] = plan
    return dataclasses.replace(plan, offsets=list(plan.offsets), arena_by_ordering=dict(plan.arena_by_ordering))


# Plans remembered by their buffers, oldest first; a compile's device programs come one after another.
_PLANS: dict[tuple, MemoryPlan] = {}
_PLANS_KEPT = 64


def _plan_buffers(buffers: list[Buffer], orderings: tuple[str, ...], search_budget: int) -> MemoryPlan:
    if not orderings:
        raise ValueError("plan_buffers needs at least one ordering")
    g = _groups(buffers)
    bound = _peak(g.start, g.end, g.size)
    by_ordering: dict[str, int] = {}
    best_name, best_order, best_fit, best_offsets, best_arena = "", [], True, np.zeros(0, dtype=np.int64), -1
    for name in orderings:
        order, fit = _order(name, g.start, g.end, g.size)
        offsets, arena = _place_in_order(order.tolist(), fit, g.start, g.end, g.size)
        by_ordering[name] = arena
        if best_arena < 0 or arena < best_arena:
            best_name, best_order, best_fit, best_offsets, best_arena = name, order.tolist(), fit, offsets, arena
    n = max(1, len(g.size))
    steps = min(MAX_SEARCH_STEPS, search_budget // n)
    if steps < MIN_SEARCH_STEPS:
        steps = 0  # a few random steps seldom help a large plan; spend no time on them
    offsets, arena, taken = best_offsets, best_arena, 0
    if steps and arena > bound:
        # First step: the skyline placement, which sees where the orderings' stacks leave holes (a short
        # vocab-sized buffer that keeps a whole slot free between its uses); its fits count against the budget.
        taken = 1
        sky = _lowest_first(g.start, g.end, g.size, search_budget)
        if sky is not None and sky[2] < arena:
            best_order, best_fit, offsets, arena = sky[0], False, sky[1], sky[2]
        steps = min(steps - 1, (search_budget - (search_budget if sky is None else sky[3])) // n)
    offsets, arena, more = _search(best_order, best_fit, g.start, g.end, g.size, offsets, arena, bound,
                                   max(0, steps))
    taken += more
    return MemoryPlan(
        offsets=offsets[g.of].tolist() if len(buffers) else [],
        arena_size=arena,
        lower_bound=bound,
        no_reuse=sum(align(b.size) for b in buffers),
        ordering=best_name,
        arena_by_ordering=by_ordering,
        in_place=sum(b.parent is not None for b in buffers),
        search_steps=taken,
    )


# ----------------------------------------------------------------------------------------------- checking
def clashes(buffers: Sequence[Buffer], offsets: Sequence[int], limit: int = 10) -> list[tuple[int, int]]:
    """Up to `limit` pairs of buffers that are live at one position and share a byte (in-place parent and child,
    which meet at one position, excepted): empty for a valid plan."""
    n = len(buffers)
    if n == 0:
        return []
    start = np.array([b.start for b in buffers], dtype=np.int64)
    end = np.array([b.end for b in buffers], dtype=np.int64)
    lo = np.asarray(offsets, dtype=np.int64)
    hi = lo + np.array([b.size for b in buffers], dtype=np.int64)
    order = np.lexsort((np.arange(n), start))
    sstart = start[order]
    out: list[tuple[int, int]] = []
    for rank, i in enumerate(order.tolist()):
        # Buffers starting in [start_i, end_i] after i in this order: every overlapping pair once.
        stop = int(np.searchsorted(sstart, end[i], side="right"))
        js = order[rank + 1:stop]
        if len(js) == 0 or hi[i] == lo[i]:
            continue
        js = js[(lo[js] < hi[i]) & (lo[i] < hi[js]) & (lo[js] < hi[js])]
        for j in js.tolist():
            a, b = (i, j) if buffers[j].parent == i else (j, i)
            if buffers[b].parent == a and buffers[a].end == buffers[b].start and lo[a] == lo[b]:
                continue
            out.append((min(i, j), max(i, j)))
            if len(out) >= limit:
                return out
    return out


__all__ = ["ALIGNMENT", "ORDERINGS", "Buffer", "MemoryPlan", "align", "lower_bound", "plan_buffers",
           "place_groups", "clashes"]

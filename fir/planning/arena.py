"""plan-memory: give every device buffer of a plan an offset in one arena, and make reuse safe with events.

Runs on plan functions (the `schedule` pass's output; others are left alone). Every result of an instruction
except `plan.store`'s (a host tensor) is a device buffer of `nbytes` of its type. Its lifetime, in issue
positions, runs from its defining instruction to its last accessor, widened for the asynchronous streams
(every stream but `compute`): an accessor there keeps the buffer until the first later instruction on another
stream that happens after it (else until the accessor itself), and a definer there starts it at the first
earlier-issued instruction of another stream that it may run alongside; and it lasts at least to the last
definer not ordered after every cross-device instruction its accessors are or wait for (so reuse never makes a
definer wait for another device: no wait cycle across devices). An elementwise flow op (see
`overwritable_operands`) may write its result over an operand whose lifetime ends at it, when every other
accessor of the operand happens before it. fir/planning/memory_planner.py places the buffers; the pass writes `offset`
on every buffer-defining instruction and `arena_size` on the function.

Safety: when B reuses bytes of A, which was defined before it, every accessor of A (but the in-place op
itself) must happen before B's defining instruction. Checking the consecutive holders of each byte suffices
(order is transitive); for the latest accessor of A on each stream that is not already ordered, the pass
records an event after it and waits for it before B's definer.

A function that already has `arena_size` is not planned again: its offsets are checked by the same rules
(`verify_memory`), so the pass is idempotent and a hand-written memory plan is validated.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from xdsl.dialects.builtin import IntegerAttr, TensorType
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Operation, SSAValue

from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.plan import ARENA_SIZE, FUNC_ATTRS, INSTR_ATTRS, OFFSET, RecordOp, StoreOp, WaitOp
from fir.dialects.base import to_tt
from fir.dialects.comm import CommOp
from fir.dialects.dtypes import nbytes, numpy_dtype
from fir.planning.memory_planner import Buffer, MemoryPlan, plan_buffers
from fir.planning.plan_ir import (HappensBefore, instructions, next_event, overwritable_operands, record_after,
                                  stream_of, wait_before)

# The stream whose accessors end a lifetime at once; other streams run asynchronously to it.
COMPUTE = "compute"


@dataclass
class FunctionReport:
    """What plan-memory did to one function."""

    name: str
    buffers: int
    plan: MemoryPlan
    events_added: int

    def text(self) -> str:
        """The report's lines, as printed to stderr."""
        p = self.plan
        ratio = p.arena_size / p.lower_bound if p.lower_bound else 1.0
        orderings = ", ".join(f"{k} {v}" for k, v in p.arena_by_ordering.items())
        search = f", then {p.search_steps} local search step(s)" if p.search_steps else ""
        return (f"plan-memory @{self.name}: {self.buffers} buffer(s)\n"
                f"  arena {p.arena_size} bytes, lower bound {p.lower_bound} bytes (ratio {ratio:.3f}), "
                f"no reuse {p.no_reuse} bytes\n"
                f"  ordering: {p.ordering} ({orderings}){search}\n"
                f"  in place: {p.in_place}, events added: {self.events_added}")


# ----------------------------------------------------------------------------------------------- buffers
@dataclass
class _Buf:
    """A device buffer of the plan: its value, size and accessors (the definer first)."""

    value: SSAValue
    size: int
    accessors: list[Operation]
    returned: bool  # read by func.return: live to the end, and no instruction is ordered after that read


def _buffers(ops: list[Operation]) -> list[_Buf]:
    """The device buffers, in the order of their defining instructions."""
    out = []
    for op in ops:
        if isinstance(op, StoreOp):
            continue
        if len(op.results) > 1:
            raise FirError(f"'{op.name}' has {len(op.results)} results; a plan instruction defines at most one "
                           "buffer", loc_of(op.location))
        for r in op.results:
            if not isinstance(r.type, TensorType):
                raise FirError(f"'{op.name}' makes a {r.type}, not a tensor", loc_of(op.location))
            readers: dict[Operation, None] = {}  # insertion-ordered, and linear in a weight's thousands of readers
            returned = False
            for use in r.uses:
                if isinstance(use.operation, ReturnOp):
                    returned = True
                else:
                    readers.setdefault(use.operation)
            out.append(_Buf(r, nbytes(r.type), [op, *readers], returned))
    return out


class _Overlap:
    """How far an instruction on an asynchronous stream may overlap the instructions issued around it."""

    def __init__(self, ops: list[Operation], order: HappensBefore):
        self.order = order
        self.col = {s: i for i, s in enumerate(order.streams)}
        by_stream: dict[str, list[Operation]] = {s: [] for s in order.streams}
        for op in ops:
            by_stream[stream_of(op)].append(op)
        n = len(order.streams)
        self.pos = {s: np.array([order.position[o] for o in xs], dtype=np.int64) for s, xs in by_stream.items()}
        self.known = {s: np.array([order.start[o] for o in xs], dtype=np.int64).reshape(len(xs), n)
                      for s, xs in by_stream.items()}
        # Per stream, from each index on: the position of the first instruction that touches a buffer (events
        # touch none), len(ops) when there is none.
        self.next_access: dict[str, np.ndarray] = {}
        for t, xs in by_stream.items():
            touch = np.array([len(ops) if isinstance(o, (RecordOp, WaitOp)) else order.position[o] for o in xs],
                             dtype=np.int64)
            self.next_access[t] = np.minimum.accumulate(touch[::-1])[::-1] if len(xs) else touch
        # Per stream that defines device buffers: the positions and clocks of those definers.
        self.definers: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for t, xs in by_stream.items():
            ds = [o for o in xs if o.results and not isinstance(o, StoreOp)]
            if ds:
                self.definers[t] = (np.array([order.position[o] for o in ds], dtype=np.int64),
                                    np.array([order.start[o] for o in ds], dtype=np.int64).reshape(len(ds), n))
        self._need: dict[Operation, tuple[int, ...]] = {}
        self._cross_end: dict[tuple[int, ...], int] = {}
        # Per stream, after its first k instructions: the 1-based index of the last cross-device one among them.
        self.cross_prefix: dict[str, np.ndarray] = {}
        for t, xs in by_stream.items():
            marks = np.array([i + 1 if isinstance(o, CommOp) else 0 for i, o in enumerate(xs)], dtype=np.int64)
            self.cross_prefix[t] = np.concatenate([[0], np.maximum.accumulate(marks)]) if len(xs) else np.zeros(1,
                                                                                                         np.int64)

    def first_unordered(self, op: Operation) -> int:
        """The position of the first instruction on another stream, issued before `op`, that touches a buffer and
        is not known to be complete when `op` starts (else op's own position): `op` may run alongside it."""
        s = stream_of(op)
        best = self.order.position[op]
        for t, c in self.col.items():
            k = self.order.start[op][c]  # t's first k instructions are complete before op starts
            if t != s and k < len(self.next_access[t]):
                best = min(best, int(self.next_access[t][k]))
        return best

    def cross_safe_end(self, accessors: list[Operation]) -> int:
        """The position of the last buffer definer not known to start after every cross-device instruction (a
        comm op: a send, a recv or a collective) that one of `accessors` is or waits for (-1: none). A buffer
        lives at least to there: a later definer may take its bytes, and the events that reuse adds then make
        it wait for nothing on another device that it did not wait for already, so the memory plan can never
        close a wait cycle across devices."""
        need = tuple(map(max, zip(*(self._cross_need(x) for x in accessors))))
        if not any(need):
            return -1
        end = self._cross_end.get(need)
        if end is None:  # many buffers wait for the same cross-device instructions: answer each set once
            end = -1
            for pos, known in self.definers.values():
                # A stream's clock only grows: the definers on it before the first that knows all of `need` do not.
                i = max(int(np.searchsorted(known[:, c], v, side="left")) for c, v in enumerate(need) if v)
                if i:
                    end = max(end, int(pos[i - 1]))
            self._cross_end[need] = end
        return end

    def _cross_need(self, x: Operation) -> tuple[int, ...]:
        """Per stream, the 1-based index of the last cross-device instruction `x` is or waits for (0: none)."""
        need = self._need.get(x)
        if need is None:
            s = stream_of(x)
            need = tuple(int(self.cross_prefix[t][self.order.index[x] if t == s else self.order.start[x][c]])
                         for t, c in self.col.items())  # x itself counts on its own stream
            self._need[x] = need
        return need

    def settled(self, op: Operation) -> int:
        """The position of the first later instruction on another stream that happens after `op` (binary search
        per stream: what a stream knows to be complete only grows), else op's own position."""
        s = stream_of(op)
        c, index = self.col[s], self.order.index[op]
        best = None
        for t, known in self.known.items():
            if t != s and len(known):
                i = int(np.searchsorted(known[:, c], index, side="left"))
                if i < len(known):
                    p = int(self.pos[t][i])
                    best = p if best is None else min(best, p)
        return self.order.position[op] if best is None else best


def _lifetimes(bufs: list[_Buf], ops: list[Operation], order: HappensBefore) -> list[tuple[int, int]]:
    """[start, end] issue positions of each buffer."""
    overlap = _Overlap(ops, order)
    last = len(ops) - 1
    pos = order.position
    out = []
    for b in bufs:
        definer = b.accessors[0]
        start = pos[definer] if stream_of(definer) == COMPUTE else overlap.first_unordered(definer)
        end = max(pos[definer], overlap.cross_safe_end(b.accessors))
        for a in b.accessors:
            end = max(end, pos[a] if stream_of(a) == COMPUTE else overlap.settled(a))
        if b.returned:
            end = max(end, last)
        out.append((start, end))
    return out


def _in_place(bufs: list[_Buf], spans: list[tuple[int, int]], order: HappensBefore) -> list[int | None]:
    """For each buffer, the buffer it overwrites in place (or None)."""
    index = {b.value: i for i, b in enumerate(bufs)}
    parent: list[int | None] = [None] * len(bufs)
    taken: set[int] = set()
    for i, b in enumerate(bufs):
        op = b.accessors[0]
        if stream_of(op) != COMPUTE:
            continue
        for k in overwritable_operands(op):
            a = index.get(op.operands[k])
            if a is None or a in taken or bufs[a].returned or spans[a][1] != spans[i][0]:
                continue
            if all(order.before(x, op) for x in bufs[a].accessors if x is not op):
                parent[i] = a
                taken.add(a)
                break
    return parent


# ----------------------------------------------------------------------------------------------- planning
def plan_function(func: FuncOp) -> FunctionReport:
    """Plan one plan function's memory: offsets, arena size, and the events that make reuse safe."""
    ops = instructions(func)
    order = HappensBefore(func)
    bufs = _buffers(ops)
    spans = _lifetimes(bufs, ops, order)
    parents = _in_place(bufs, spans, order)
    plan = plan_buffers([Buffer(b.size, s, e, p) for b, (s, e), p in zip(bufs, spans, parents)])
    for b, off in zip(bufs, plan.offsets):
        b.accessors[0].attributes[OFFSET] = INSTR_ATTRS[OFFSET].to_attr(off)
    func.attributes[ARENA_SIZE] = FUNC_ATTRS[ARENA_SIZE].to_attr(plan.arena_size)
    events = _make_reuse_safe(func, bufs, plan.offsets, parents, order)
    return FunctionReport(func.sym_name.data, len(bufs), plan, events)


def _occupants(bufs: list[_Buf], offsets: list[int]) -> Iterator[tuple[int, int]]:
    """(a, b) for each buffer b and each buffer a that last held some byte of b before b was defined
    (buffers in definer order; a byte's holders, in order, are chained by these pairs)."""
    bounds: list[int] = [0]  # segment k is [bounds[k], bounds[k + 1]) and was last held by owner[k] (-1: none)
    owner: list[int] = [-1]
    for b, buf in enumerate(bufs):
        lo, hi = offsets[b], offsets[b] + buf.size
        if hi <= lo:
            continue
        # Split the segments at lo and hi, then read and replace the owners in between.
        for cut in (lo, hi):
            k = bisect_right(bounds, cut) - 1
            if bounds[k] != cut:
                bounds.insert(k + 1, cut)
                owner.insert(k + 1, owner[k])
        first, stop = bisect_left(bounds, lo), bisect_left(bounds, hi)
        seen = set()
        for a in owner[first:stop]:
            if a >= 0 and a not in seen:
                seen.add(a)
                yield a, b
        bounds[first:stop] = [lo]
        owner[first:stop] = [b]


def _latest_per_stream(ops: list[Operation], order: HappensBefore) -> dict[str, Operation]:
    latest: dict[str, Operation] = {}
    for op in ops:
        s = stream_of(op)
        if s not in latest or order.index[op] > order.index[latest[s]]:
            latest[s] = op
    return latest


def _make_reuse_safe(func: FuncOp, bufs: list[_Buf], offsets: list[int], parents: list[int | None],
                     order: HappensBefore) -> int:
    """Insert the events that order each buffer's accessors before the definer of the next holder of its bytes;
    returns how many were inserted."""
    needed: dict[int, dict[str, Operation]] = {}  # buffer -> stream -> the latest unordered accessor
    for a, b in _occupants(bufs, offsets):
        definer = bufs[b].accessors[0]
        # The planner shares bytes only between lifetimes that do not meet, or in place.
        assert not bufs[a].returned and (parents[b] == a or definer not in bufs[a].accessors)
        for s, x in _latest_per_stream([x for x in bufs[a].accessors if x is not definer], order).items():
            if not order.before(x, definer):
                cur = needed.setdefault(b, {}).get(s)
                if cur is None or order.index[x] > order.index[cur]:
                    needed[b][s] = x
    col = {s: i for i, s in enumerate(order.streams)}
    # What each stream learned from the waits inserted so far (buffers in definer order, so a wait inserted
    # before one definer orders every later instruction of its stream); the instance `order` does not see them.
    learned = {s: [0] * len(order.streams) for s in order.streams}
    added = 0
    event = next_event(func)  # numbered on from here: one scan for a free event number, not one per event
    for b in sorted(needed):
        definer = bufs[b].accessors[0]
        mine = learned[stream_of(definer)]
        for x in sorted(needed[b].values(), key=lambda o: order.position[o], reverse=True):
            if mine[col[stream_of(x)]] >= order.index[x]:
                continue
            record_after(x, event)
            wait_before(definer, event)
            event += 1
            added += 1
            done = list(order.start[x])
            done[col[stream_of(x)]] = order.index[x]
            for k, v in enumerate(done):
                mine[k] = max(mine[k], v)
    return added


# ----------------------------------------------------------------------------------------------- checking
def _offset_of(op: Operation) -> int | None:
    attr = op.attributes.get(OFFSET)
    return attr.value.data if isinstance(attr, IntegerAttr) else None


def verify_memory(func: FuncOp) -> None:
    """Raise FirError unless the plan's offsets are a safe memory plan: every buffer has an offset inside the arena,
    aligned for its elements, and a buffer reusing bytes of an earlier one is defined only after every accessor of
    the earlier one is complete (an elementwise op overwriting its own operand in place excepted)."""
    ops = instructions(func)
    arena = func.attributes.get(ARENA_SIZE)
    arena_size = arena.value.data if isinstance(arena, IntegerAttr) else 0
    bufs = _buffers(ops)
    offsets = []
    for b in bufs:
        op = b.accessors[0]
        off = _offset_of(op)
        if off is None:
            raise FirError(f"'{op.name}' defines a device buffer but has no offset", loc_of(op.location))
        if off < 0:
            raise FirError(f"'{op.name}' buffer at offset {off}: offsets count bytes from the arena's start",
                           loc_of(op.location))
        if off + b.size > arena_size:
            raise FirError(f"'{op.name}' buffer [{off}, {off + b.size}) does not fit in the arena of "
                           f"{arena_size} bytes", loc_of(op.location))
        item = numpy_dtype(to_tt(b.value.type)[1]).itemsize
        if off % item:
            raise FirError(f"'{op.name}' buffer at offset {off} is not aligned for its {item}-byte elements",
                           loc_of(op.location))
        offsets.append(off)
    order = HappensBefore(func)
    for a, b in _occupants(bufs, offsets):
        definer = bufs[b].accessors[0]
        in_place = offsets[a] == offsets[b] and bufs[a].size == bufs[b].size and any(
            definer.operands[k] is bufs[a].value for k in overwritable_operands(definer))
        shared = f"'{definer.name}' writes [{offsets[b]}, {offsets[b] + bufs[b].size}) over bytes of " \
                 f"{_describe(bufs[a], offsets[a])}"
        if bufs[a].returned:
            raise FirError(f"{shared}, which the function returns", loc_of(definer.location))
        for x in sorted(bufs[a].accessors, key=lambda o: o is not definer):  # its own read first
            if (x is definer and in_place) or order.before(x, definer):
                continue
            if x is definer:
                why = "which it reads itself (only an elementwise op may overwrite its operand, at its offset)"
            else:
                loc = loc_of(x.location)
                at = f" (line {loc.line})" if loc is not None else ""
                why = f"which '{x.name}'{at} {'defines' if x is bufs[a].accessors[0] else 'reads'} without " \
                      "being ordered before it"
            raise FirError(f"{shared}, {why}", loc_of(definer.location))


def _describe(buf: _Buf, offset: int) -> str:
    name = f"%{buf.value.name_hint}" if buf.value.name_hint else "a buffer"
    return f"{name} [{offset}, {offset + buf.size})"


__all__ = ["FunctionReport", "plan_function", "verify_memory"]

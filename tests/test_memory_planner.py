"""fir.planning.memory_planner: valid packings, the bounds, in-place chains, agreement with a brute-force placer, quality
on deep-learning-like lifetimes, and speed on a plan-sized trace."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fir.planning import memory_planner as mp
from fir.planning.memory_planner import ALIGNMENT, ORDERINGS, Buffer, align, clashes, lower_bound, plan_buffers

SETTINGS = dict(deadline=None)
SIZES = [1, 100, 256, 257, 1000, 4096, 5000, 65536]


# ----------------------------------------------------------------------------------------------- independent checks
def brute_clashes(buffers: list[Buffer], offsets: list[int]) -> list[tuple[int, int]]:
    """Every pair live at one position sharing a byte, by brute force (in-place parent/child excepted)."""
    out = []
    for i, a in enumerate(buffers):
        for j in range(i + 1, len(buffers)):
            b = buffers[j]
            if a.start > b.end or b.start > a.end:
                continue
            if offsets[i] >= offsets[j] + b.size or offsets[j] >= offsets[i] + a.size or not a.size or not b.size:
                continue
            if (b.parent == i and a.end == b.start) or (a.parent == j and b.end == a.start):
                continue
            out.append((i, j))
    return out


def brute_bound(buffers: list[Buffer]) -> int:
    """Most rounded bytes live at one position, an in-place child (of its parent's size) counted once where the
    two meet."""
    best = 0
    for t in range(min(b.start for b in buffers), max(b.end for b in buffers) + 1):
        live = [i for i, b in enumerate(buffers) if b.start <= t <= b.end]
        total = sum(align(buffers[i].size) for i in live)
        # A parent ending where its child starts shares the child's bytes: count the larger of the two once.
        for i in live:
            p = buffers[i].parent
            if p is not None and p in live:
                total -= min(align(buffers[i].size), align(buffers[p].size))
        best = max(best, total)
    return best


def check_plan(buffers: list[Buffer], plan: mp.MemoryPlan) -> None:
    assert len(plan.offsets) == len(buffers)
    assert brute_clashes(buffers, plan.offsets) == []
    assert clashes(buffers, plan.offsets) == []
    assert all(o % ALIGNMENT == 0 and o >= 0 for o in plan.offsets)
    assert all(o + align(b.size) <= plan.arena_size for o, b in zip(plan.offsets, buffers))
    for i, b in enumerate(buffers):
        if b.parent is not None:
            assert plan.offsets[i] == plan.offsets[b.parent]
    assert plan.no_reuse == sum(align(b.size) for b in buffers)
    assert plan.lower_bound <= plan.arena_size <= max(plan.no_reuse, plan.lower_bound)
    assert plan.arena_by_ordering[plan.ordering] == min(plan.arena_by_ordering.values())
    # The local search only ever keeps a smaller or equal arena.
    assert plan.arena_size <= plan.arena_by_ordering[plan.ordering]
    if plan.search_steps == 0:
        assert plan.arena_size == plan.arena_by_ordering[plan.ordering]
    assert set(plan.arena_by_ordering) == set(ORDERINGS)


# ----------------------------------------------------------------------------------------------- strategies
@st.composite
def interval_sets(draw, max_n: int = 40, in_place: bool = True) -> list[Buffer]:
    """Random lifetimes (short and long), sizes, and in-place chains where a buffer starts as another ends."""
    n = draw(st.integers(1, max_n))
    horizon = draw(st.integers(1, 60))
    out: list[Buffer] = []
    ends: dict[int, list[int]] = {}
    has_child: set[int] = set()
    for i in range(n):
        start = draw(st.integers(0, horizon))
        length = draw(st.sampled_from([0, 0, 1, 2, 3, 5, 10, 40, 100]))
        size = draw(st.sampled_from(SIZES + [0]))
        parent = None
        if in_place and draw(st.integers(0, 3)) == 0:
            free = [j for j in ends.get(start, []) if j not in has_child and out[j].start < start]
            if free:
                parent = draw(st.sampled_from(free))
                has_child.add(parent)
                size = out[parent].size  # in place: the same bytes
        out.append(Buffer(size, start, start + length, parent))
        ends.setdefault(start + length, []).append(i)
    return out


def dag_trace(rng: random.Random, n_ops: int, fan: int = 3, weights: int = 0, sizes=(4096, 16384, 65536)) -> \
        list[Buffer]:
    """Lifetimes of a random DAG run in topological order: op i reads 1..fan recent values; optional weights
    (loaded first, read by the ops that use them, like parameters)."""
    bufs = [[rng.choice(sizes) * 4, p, p] for p in range(weights)]
    pos = weights
    for i in range(n_ops):
        me = len(bufs)
        bufs.append([rng.choice(sizes), pos, pos])
        recent = list(range(max(weights, me - 6), me))
        for r in rng.sample(recent, min(len(recent), rng.randint(1, fan))):
            bufs[r][2] = pos
        if weights:
            w = rng.randrange(weights)
            bufs[w][2] = max(bufs[w][2], pos)
        pos += 1
    return [Buffer(s, a, b) for s, a, b in bufs]


def chain_trace(rng: random.Random, n: int) -> list[Buffer]:
    """A chain with residual skips; a link whose operand dies at it may run in place (a transformer stack)."""
    sizes = [rng.choice([8192, 8192, 32768]) for _ in range(n)]
    end = list(range(n))
    for p in range(1, n):
        end[p - 1] = p
        if p >= 4 and rng.random() < 0.25:
            q = p - rng.randint(2, 4)
            end[q] = max(end[q], p)
    out = []
    for p in range(n):
        ok = p > 0 and end[p - 1] == p and sizes[p - 1] == sizes[p] and rng.random() < 0.5
        out.append(Buffer(sizes[p], p, end[p], p - 1 if ok else None))
    return out


# ----------------------------------------------------------------------------------------------- properties
@settings(max_examples=300, **SETTINGS)
@given(interval_sets())
def test_random_sets_pack_without_clashes_and_within_the_bounds(buffers):
    plan = plan_buffers(buffers, search_budget=0)
    check_plan(buffers, plan)
    assert plan.search_steps == 0
    assert plan.lower_bound == brute_bound(buffers) == lower_bound(buffers)
    assert plan.in_place == sum(b.parent is not None for b in buffers)


@settings(max_examples=40, **SETTINGS)
@given(interval_sets(max_n=25))
def test_local_search_keeps_plans_valid_and_never_worse(buffers):
    plan = plan_buffers(buffers, search_budget=2000)
    check_plan(buffers, plan)
    assert plan.search_steps <= mp.MAX_SEARCH_STEPS


def test_local_search_reaches_the_bound_where_the_orderings_do_not():
    # A fork/join trace whose optimum is its lower bound (checked with an exact solver) but whose orderings
    # all leave 5 % or more on the table.
    bufs = _stuck_trace()
    plan = plan_buffers(bufs)
    assert min(plan.arena_by_ordering.values()) > 1.05 * plan.lower_bound
    assert plan.arena_size == plan.lower_bound and 0 < plan.search_steps
    assert plan_buffers(bufs).offsets == plan.offsets  # deterministic
    no_search = plan_buffers(bufs, search_budget=0)
    assert no_search.search_steps == 0 and no_search.arena_size == min(plan.arena_by_ordering.values())


def _stuck_trace() -> list[Buffer]:
    """78 buffers of a random fork/join trace (sizes in 4 KiB units, start, end)."""
    raw = [
    (1, 0, 6), (16, 1, 2), (1, 2, 6), (4, 3, 9), (1, 4, 10), (4, 5, 11), (4, 6, 6), (1, 7, 13), (16, 8, 10),
    (4, 9, 15), (1, 10, 16), (1, 11, 16), (1, 12, 15), (1, 13, 19), (16, 14, 18), (1, 15, 20), (4, 16, 21),
    (1, 17, 22), (4, 18, 18), (1, 19, 24), (16, 20, 23), (1, 21, 26), (4, 22, 25), (1, 23, 23), (16, 24, 27),
    (16, 25, 29), (1, 26, 32), (4, 27, 30), (16, 28, 34), (4, 29, 32), (1, 30, 33), (16, 31, 35), (1, 32, 37),
    (4, 33, 38), (4, 34, 40), (1, 35, 36), (1, 36, 36), (4, 37, 41), (4, 38, 38), (4, 39, 43), (4, 40, 42),
    (4, 41, 47), (1, 42, 48), (1, 43, 44), (1, 44, 50), (1, 45, 45), (1, 46, 49), (4, 47, 53), (1, 48, 48),
    (1, 49, 49), (16, 50, 55), (16, 51, 51), (16, 52, 56), (1, 53, 53), (4, 54, 54), (1, 55, 57), (1, 56, 61),
    (16, 57, 60), (16, 58, 63), (1, 59, 62), (4, 60, 66), (4, 61, 64), (1, 62, 68), (4, 63, 69), (16, 64, 67),
    (16, 65, 71), (4, 66, 69), (4, 67, 71), (1, 68, 68), (4, 69, 75), (16, 70, 75), (1, 71, 71), (1, 72, 76),
    (1, 73, 77), (16, 74, 74), (16, 75, 76), (4, 76, 76), (4, 77, 77),
    ]
    return [Buffer(k * 4096, s, e) for k, s, e in raw]


def naive_place(start, end, size, ordering: str) -> list[int]:
    """The same greedy rule against every placed group (no blocks, no tree): the reference for the fast one."""
    n = len(size)
    length = [end[i] - start[i] + 1 for i in range(n)]
    key = {
        "size": lambda i: (-size[i], start[i], i),
        "start": lambda i: (start[i], -size[i], i),
        "lifetime": lambda i: (-length[i], -size[i], start[i], i),
        "area": lambda i: (-size[i] * length[i], start[i], i),
    }[ordering]
    best = ordering != "start"
    offsets = [0] * n
    placed: list[int] = []
    for g in sorted(range(n), key=key):
        if size[g] == 0:
            continue
        busy = sorted((offsets[h], offsets[h] + size[h]) for h in placed if start[h] <= end[g] and end[h] >= start[g])
        cur, choice, choice_gap = 0, None, None
        for lo, hi in busy:
            if lo - cur >= size[g] and (choice is None or (best and lo - cur < choice_gap)):
                choice, choice_gap = cur, lo - cur
            cur = max(cur, hi)
        offsets[g] = cur if choice is None else choice
        placed.append(g)
    return offsets


@settings(max_examples=150, **SETTINGS)
@given(interval_sets(max_n=120, in_place=False), st.sampled_from(ORDERINGS))
def test_fast_placement_equals_the_brute_force_greedy(buffers, ordering):
    start = np.array([b.start for b in buffers])
    end = np.array([b.end for b in buffers])
    size = np.array([align(b.size) for b in buffers])
    got = mp.place_groups(start, end, size, ordering).tolist()
    assert got == naive_place(start.tolist(), end.tolist(), size.tolist(), ordering)


@pytest.mark.parametrize("ordering", ORDERINGS)
def test_fast_placement_equals_brute_force_on_long_and_short_mixes(ordering):
    # Long lifetimes (tree and numpy paths) mixed with many short ones (block lists).
    rng = random.Random(7)
    for _ in range(5):
        bufs = dag_trace(rng, 400, weights=30)
        start = np.array([b.start for b in bufs])
        end = np.array([b.end for b in bufs])
        size = np.array([align(b.size) for b in bufs])
        assert mp.place_groups(start, end, size, ordering).tolist() == \
            naive_place(start.tolist(), end.tolist(), size.tolist(), ordering)


def test_in_place_chain_takes_one_offset_and_counts_once():
    # a -> b -> c in place; d overlaps all of them.
    bufs = [Buffer(1000, 0, 2), Buffer(1000, 2, 4, parent=0), Buffer(1000, 4, 6, parent=1), Buffer(300, 0, 6)]
    plan = plan_buffers(bufs)
    check_plan(bufs, plan)
    assert plan.offsets[0] == plan.offsets[1] == plan.offsets[2]
    assert plan.lower_bound == plan.arena_size == 1024 + 512
    assert plan.no_reuse == 3 * 1024 + 512
    assert plan.in_place == 2
    # The checker excuses a parent and its child only at one offset.
    assert clashes(bufs, plan.offsets) == []
    assert clashes(bufs[:2], [0, 512]) == [(0, 1)]


def test_sizes_round_up_to_the_alignment():
    assert [align(n) for n in (0, 1, 255, 256, 257, 1000)] == [0, 256, 256, 256, 512, 1024]
    plan = plan_buffers([Buffer(1, 0, 0), Buffer(1, 0, 0), Buffer(0, 0, 0)])
    assert sorted(plan.offsets[:2]) == [0, 256] and plan.arena_size == plan.lower_bound == plan.no_reuse == 512


def test_small_chain_exact():
    # x [0,3] 4096, a [3,4] 2048, b [4,5] 2048, c [5,8] 32: the bound is x + a at position 3.
    bufs = [Buffer(4096, 0, 3), Buffer(2048, 3, 4), Buffer(2048, 4, 5), Buffer(32, 5, 8)]
    plan = plan_buffers(bufs)
    assert plan.offsets == [0, 4096, 0, 2048]
    assert (plan.arena_size, plan.lower_bound, plan.no_reuse, plan.ordering) == (6144, 6144, 8448, "size")


def test_empty():
    plan = plan_buffers([])
    assert (plan.offsets, plan.arena_size, plan.lower_bound, plan.no_reuse) == ([], 0, 0, 0)


@pytest.mark.parametrize("bufs,message", [
    ([Buffer(8, 0, 3), Buffer(8, 2, 4, parent=0)], "end where it starts"),
    ([Buffer(8, 0, 1), Buffer(8, 3, 4, parent=0)], "end where it starts"),  # a gap would count the chain twice
    ([Buffer(8, 1, 1), Buffer(8, 1, 2, parent=0)], "start before it"),
    ([Buffer(8, 0, 1), Buffer(8, 1, 2, parent=0), Buffer(8, 1, 3, parent=0)], "parent of both"),
    ([Buffer(8, 0, 1, parent=0)], "not another buffer"),
    ([Buffer(8, 2, 1)], "start <= end"),
    ([Buffer(8, 1, 1, parent=1), Buffer(8, 1, 1, parent=0)], "start before it"),
])
def test_bad_in_place_requests_are_rejected(bufs, message):
    with pytest.raises(ValueError, match=message):
        plan_buffers(bufs)


def test_unknown_ordering():
    with pytest.raises(ValueError, match="unknown ordering"):
        plan_buffers([Buffer(8, 0, 1)], orderings=("zigzag",))


# ----------------------------------------------------------------------------------------------- quality
def _ratio(bufs: list[Buffer]) -> float:
    plan = plan_buffers(bufs)
    check_plan(bufs, plan) if len(bufs) <= 300 else None
    assert clashes(bufs, plan.offsets) == []
    return plan.arena_size / plan.lower_bound


def test_deep_learning_like_lifetimes_pack_within_5_percent_of_the_bound():
    rng = random.Random(0)
    worst = (0.0, "")
    for trial in range(40):
        kind = trial % 4
        if kind == 0:
            bufs, what = chain_trace(rng, rng.randint(20, 300)), "chain"
        elif kind == 1:
            bufs, what = dag_trace(rng, rng.randint(20, 300), fan=2), "fork/join DAG"
        elif kind == 2:
            bufs, what = dag_trace(rng, rng.randint(20, 300), fan=3, weights=rng.randint(1, 20)), "DAG + weights"
        else:
            bufs, what = dag_trace(rng, rng.randint(20, 300), fan=3, sizes=(768, 3072, 9216, 12288)), "DAG, odd sizes"
        r = _ratio(bufs)
        worst = max(worst, (r, f"{what}, {len(bufs)} buffers"))
    print(f"\nworst arena / lower bound on DL-like traces: {worst[0]:.4f} ({worst[1]})")
    assert worst[0] <= 1.05, worst


def test_adversarial_random_sets_stay_valid_and_reasonably_tight():
    # Packing is NP-hard: random interval sets can exceed 5 %; report the worst and bound it loosely.
    rng = random.Random(1)
    worst = 0.0
    for _ in range(100):
        n = rng.randint(5, 60)
        bufs = []
        for _ in range(n):
            s = rng.randint(0, 50)
            bufs.append(Buffer(rng.choice(SIZES), s, s + rng.choice([0, 1, 3, 10, 30])))
        worst = max(worst, _ratio(bufs))
    print(f"\nworst arena / lower bound on random interval sets: {worst:.4f}")
    assert worst < 1.10


def test_a_plan_sized_trace_is_planned_quickly():
    rng = random.Random(3)
    bufs = dag_trace(rng, 12000, fan=2, weights=400)
    t = time.perf_counter()
    plan = plan_buffers(bufs)
    elapsed = time.perf_counter() - t
    print(f"\n{len(bufs)} buffers planned in {elapsed:.2f} s; arena / bound {plan.arena_size / plan.lower_bound:.4f}")
    assert clashes(bufs, plan.offsets) == []
    assert plan.arena_size <= 1.05 * plan.lower_bound
    assert elapsed < 20  # about 1 s on one core; a quadratic Python loop would take minutes

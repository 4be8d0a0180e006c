"""Tests of fir.distribution.boxing (cheapest boxing paths, their bytes, cross-mesh transfers) and
fir.runtime.collectives (numpy semantics of each collective): every planned path, run step by step on
scattered data, must hold the same logical tensor after each step."""

from __future__ import annotations

import itertools
import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fir.distribution.boxing import Step, boxing_cost, boxing_path, step_kind, transfer_cost, transfer_path
from fir.distribution.layout import assemble, broadcast_mismatch, check_nd, scatter
from fir.runtime.collectives import all_gather, all_reduce, all_to_all, apply_step, local_slice, reduce_scatter
from fir.distribution.sbp import PMAX, B, Broadcast, Mesh, NdSbp, P, Partial, S

MESH_SHAPES = [(1,), (2,), (3,), (4,), (2, 2), (2, 3), (3, 2)]


def mesh(shape: tuple[int, ...], name: str = "m", first: int = 0) -> Mesh:
    return Mesh(name, shape, tuple(range(first, first + math.prod(shape))))


def kinds(path: list[Step] | None) -> list[str] | None:
    return None if path is None else [s.kind for s in path]


def partial_locals(x: np.ndarray, nd: NdSbp, m: Mesh, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Locals of x under nd where partial axes hold genuinely mixed values (not just x and the identity)."""
    locs = scatter(x, nd, m)
    for axis, s in enumerate(nd):
        if not isinstance(s, Partial) or m.shape[axis] < 2:
            continue
        noises: dict[tuple[int, ...], np.ndarray] = {}
        for coord in m.coords():
            if coord[axis] != 0:
                continue
            a, b = m.device_at(coord), m.device_at(coord[:axis] + (1,) + coord[axis + 1:])
            # Copies along broadcast axes must stay equal: they share their noise.
            key = tuple(0 if isinstance(t, Broadcast) else c for t, c in zip(nd, coord))
            noise = noises.setdefault(key, rng.standard_normal(locs[a].shape))
            if s.op == "sum":  # move some of a's value to b: the sum is unchanged
                locs[a] = locs[a] + noise
                locs[b] = locs[b] - noise
            else:  # b holds something no larger than a's copy of x: the max is unchanged
                locs[b] = np.maximum(locs[b], locs[a] - np.abs(noise))
    return locs


def check_holds(locs: dict[int, np.ndarray], nd: NdSbp, m: Mesh, x: np.ndarray) -> None:
    assert broadcast_mismatch(locs, nd, m) is None
    np.testing.assert_allclose(assemble(locs, nd, m, x.shape, x.dtype), x, rtol=1e-12, atol=1e-12)


def run_path(path: list[Step], src: NdSbp, locs: dict[int, np.ndarray], m: Mesh, x: np.ndarray,
             shape: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Apply each step, checking that it is well formed and that every intermediate state still holds x."""
    state = src
    for step in path:
        assert step.src == state
        assert [a for a in range(len(state)) if step.src[a] != step.dst[a]] == [step.axis]
        assert step.kind == step_kind(step.src[step.axis], step.dst[step.axis])
        assert check_nd(shape, step.dst, m.shape) is None
        locs = apply_step(step, locs, m)
        state = step.dst
        check_holds(locs, state, m, x)
    return locs


def reachable(src: NdSbp, dst: NdSbp) -> bool:
    """No step creates P: every P of dst must already be there, the same, in src."""
    return all(not isinstance(d, Partial) or s == d for s, d in zip(src, dst))


# ----------------------------------------------------------------------------------------------- paths by hand
@pytest.mark.parametrize("src,dst,kind", [
    ((P,), (B,), "all_reduce"),
    ((PMAX,), (B,), "all_reduce"),
    ((P,), (S(0),), "reduce_scatter"),
    ((S(0),), (B,), "all_gather"),
    ((S(0),), (S(1),), "all_to_all"),
    ((B,), (S(1),), "slice"),
])
def test_one_step_on_1d_mesh(src: NdSbp, dst: NdSbp, kind: str) -> None:
    assert kinds(boxing_path(src, dst, (8, 6), "f32", (4,))) == [kind]


def test_impossible_and_trivial() -> None:
    assert boxing_path((B,), (P,), (8,), "f32", (4,)) is None
    assert boxing_path((S(0),), (P,), (8,), "f32", (4,)) is None
    assert boxing_path((P,), (PMAX,), (8,), "f32", (4,)) is None
    assert boxing_cost((B,), (P,), (8,), "f32", (4,)) == math.inf
    assert boxing_path((S(0), P), (S(0), P), (8,), "f32", (2, 2)) == []
    assert boxing_cost((P,), (P,), (8,), "f32", (4,)) == 0
    # Invalid layouts: 3 rows cannot be split 4 ways; a wrong number of mesh axes.
    assert boxing_path((B,), (S(0),), (3,), "f32", (4,)) is None
    assert boxing_path((B,), (S(0),), (8,), "f32", (2, 2)) is None


def test_step_kind() -> None:
    assert step_kind(P, B) == step_kind(PMAX, B) == "all_reduce"
    assert step_kind(PMAX, S(1)) == "reduce_scatter"
    assert step_kind(S(0), S(0)) is None
    for src1, dst1 in [(B, P), (S(0), P), (P, PMAX), (B, B), (P, P)]:
        assert step_kind(src1, dst1) is None


def test_exact_bytes_1d() -> None:
    t = 64 * 1024 * 4  # f32 64x1024: 262144 bytes
    shape, ms = (64, 1024), (4,)

    def one(src: NdSbp, dst: NdSbp) -> int:
        (step,) = boxing_path(src, dst, shape, "f32", ms)
        return step.bytes_per_device

    assert one((P,), (B,)) == 2 * 3 * t // 4 == 393216
    assert one((P,), (S(1),)) == 3 * t // 4 == 196608
    assert one((S(0),), (B,)) == 3 * t // 4
    assert one((S(0),), (S(1),)) == 3 * t // 16 == 49152
    assert one((B,), (S(1),)) == 0
    # Rounded up: f32 (5,) on 3 devices, T = 20 bytes, 2 * 2/3 * 20 = 26.67.
    assert boxing_path((P,), (B,), (5,), "f32", (3,))[0].bytes_per_device == 27
    # Half the bytes for f16; bf16 is 2 bytes too.
    assert boxing_cost((P,), (B,), shape, "f16", ms) == boxing_cost((P,), (B,), shape, "bf16", ms) == 393216 // 2


def test_2d_gather_goes_inner_first() -> None:
    # Gathering mesh axis 0 first is illegal (axis 1 splits the same tensor axis inside it).
    path = boxing_path((S(0), S(0)), (B, B), (5, 3), "f32", (2, 2))
    assert [(s.kind, s.axis) for s in path] == [("all_gather", 1), ("all_gather", 0)]
    # Axis 1 gathers a 3x3 piece (T = 36 bytes), then axis 0 the whole 5x3 (T = 60).
    assert [s.bytes_per_device for s in path] == [18, 30]


def test_2d_partial_partial() -> None:
    # Nothing can be split (one element): two all_reduces.
    path = boxing_path((P, P), (B, B), (1,), "f32", (2, 2))
    assert [(s.kind, s.axis) for s in path] == [("all_reduce", 0), ("all_reduce", 1)]
    assert boxing_cost((P, P), (B, B), (1,), "f32", (2, 2)) == 8
    # With room to split, reduce_scatter + all_reduce + all_gather (1.5 T) beats two all_reduces (2 T).
    path = boxing_path((P, P), (B, B), (8, 4), "f32", (2, 2))
    assert kinds(path) == ["reduce_scatter", "all_reduce", "all_gather"]
    assert boxing_cost((P, P), (B, B), (8, 4), "f32", (2, 2)) == 3 * 128 // 2


def test_nesting_rule_forces_a_detour() -> None:
    src, dst, shape, ms = (B, S(0)), (S(0), S(0)), (4, 4), (2, 2)
    path = boxing_path(src, dst, shape, "f32", ms)
    assert path is not None and len(path) > 1
    assert all(s.axis != 0 or s.kind != "slice" or s.src[1] != S(0) for s in path)
    m = mesh(ms)
    x = np.random.default_rng(0).standard_normal(shape)
    run_path(path, src, scatter(x, src, m), m, x, shape)


def test_paths_are_cached_but_not_shared() -> None:
    a = boxing_path((P,), (B,), (8,), "f32", (4,))
    a.clear()
    assert kinds(boxing_path((P,), (B,), (8,), "f32", [4])) == ["all_reduce"]


def test_transfer_by_hand() -> None:
    shape, t = (64, 1024), 262144
    # Same shape: reduce_scatter, send the quarter, all_gather (cheaper than sending P or B whole).
    before, x_src, x_dst, nbytes, after = transfer_path((4,), (P,), (4,), (B,), shape, "f32", 4)
    assert kinds(before) == ["reduce_scatter"] and kinds(after) == ["all_gather"]
    assert x_src == x_dst == (S(0),) and nbytes == t // 4
    assert transfer_cost((4,), (P,), (4,), (B,), shape, "f32", 4) == 3 * t // 4 + t // 4 + 3 * t // 4
    # Same layout on both sides: just the send_recv.
    assert transfer_path((4,), (S(1),), (4,), (S(1),), shape, "f32", 4) == ([], (S(1),), (S(1),), t // 4, [])
    # Different shapes: all B across, the whole tensor sent.
    before, x_src, x_dst, nbytes, after = transfer_path((4,), (S(0),), (2, 2), (B, S(1)), shape, "f32", 4)
    assert kinds(before) == ["all_gather"] and kinds(after) == ["slice"]
    assert (x_src, x_dst, nbytes) == ((B,), (B, B), t)
    assert transfer_path((4,), (B,), (2, 2), (P, B), shape, "f32", 4) is None
    assert transfer_cost((4,), (B,), (4,), (P,), shape, "f32", 4) == math.inf


# ----------------------------------------------------------------------------------------------- properties
def valid_nds(shape: tuple[int, ...], ms: tuple[int, ...]) -> list[NdSbp]:
    options = [B, P, PMAX, *(S(i) for i in range(len(shape)))]
    return [nd for nd in itertools.product(options, repeat=len(ms)) if check_nd(shape, nd, ms) is None]


@st.composite
def layout_pair(draw: st.DrawFn, same_mesh: bool = True):
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
    ms = draw(st.sampled_from(MESH_SHAPES))
    ms2 = ms if same_mesh else draw(st.sampled_from(MESH_SHAPES))
    src = draw(st.sampled_from(valid_nds(shape, ms)))
    dst = draw(st.sampled_from(valid_nds(shape, ms2)))
    return shape, ms, src, ms2, dst, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=130, deadline=None)
@given(layout_pair())
def test_boxing_path_moves_data_correctly(case) -> None:
    shape, ms, src, _, dst, seed = case
    path = boxing_path(src, dst, shape, "f32", ms)
    assert (path is not None) == reachable(src, dst)
    if path is None:
        return
    assert sum(s.bytes_per_device for s in path) == boxing_cost(src, dst, shape, "f32", ms)
    m = mesh(ms)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    locs = partial_locals(x, src, m, rng)
    check_holds(locs, src, m, x)
    run_path(path, src, locs, m, x, shape)
    assert (path[-1].dst if path else src) == dst


@settings(max_examples=70, deadline=None)
@given(layout_pair(same_mesh=False))
def test_transfer_path_moves_data_correctly(case) -> None:
    shape, ms, src, ms2, dst, seed = case
    n = math.prod(ms)
    plan = transfer_path(ms, src, ms2, dst, shape, "f32", n)
    possible = reachable(src, dst) if ms == ms2 else not any(isinstance(d, Partial) for d in dst)
    assert (plan is not None) == possible
    if plan is None:
        return
    before, x_src, x_dst, nbytes, after = plan
    assert transfer_cost(ms, src, ms2, dst, shape, "f32", n) == (
        sum(s.bytes_per_device for s in before) + nbytes + sum(s.bytes_per_device for s in after))
    m_src, m_dst = mesh(ms, "a"), mesh(ms2, "b", first=100)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    locs = run_path(before, src, partial_locals(x, src, m_src, rng), m_src, x, shape)
    if ms == ms2:
        assert x_src == x_dst
        got = {m_dst.devices[k]: locs[d].copy() for k, d in enumerate(m_src.devices)}
    else:
        assert all(isinstance(s, Broadcast) for s in (*x_src, *x_dst))
        got = {d: locs[m_src.devices[j % n]].copy() for j, d in enumerate(m_dst.devices)}
    assert nbytes * 2 == max(a.nbytes for a in got.values())  # float64 data, f32 plan
    check_holds(got, x_dst, m_dst, x)
    run_path(after, x_dst, got, m_dst, x, shape)
    assert (after[-1].dst if after else x_dst) == dst


# ----------------------------------------------------------------------------------------------- collectives
def test_all_reduce_sum_and_max() -> None:
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal((5, 7)) for _ in range(3)]
    out = all_reduce(arrays, "sum")
    assert len(out) == 3
    for o in out:
        np.testing.assert_allclose(o, arrays[0] + arrays[1] + arrays[2])
    for o in all_reduce(arrays, "max"):
        np.testing.assert_array_equal(o, np.maximum.reduce(arrays))
    ints = [np.array([2**31 - 1], np.int32), np.array([1], np.int32)]
    assert all_reduce(ints, "sum")[0].dtype == np.int32 and all_reduce(ints, "sum")[0][0] == -2**31  # wraps
    with pytest.raises(ValueError):
        all_reduce(arrays, "prod")


def test_low_precision_sums_accumulate_in_f32() -> None:
    # In bf16, 1 + 2^-8 rounds back to 1 twice; accumulated in f32, 1 + 2^-7 is exact in bf16.
    bf16 = np.dtype(ml_dtypes.bfloat16)
    arrays = [np.array([1.0], bf16), np.array([2.0**-8], bf16), np.array([2.0**-8], bf16)]
    (out, *_) = all_reduce(arrays, "sum")
    assert out.dtype == bf16 and float(out[0]) == 1 + 2.0**-7
    (piece0, *_) = reduce_scatter([a.astype(np.float16) for a in arrays], "sum", 0)
    assert piece0.dtype == np.float16 and float(piece0[0]) == 1 + 2.0**-7


def test_reduce_scatter_uneven() -> None:
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal((4, 7)) for _ in range(3)]
    out = reduce_scatter(arrays, "sum", 1)
    want = np.array_split(arrays[0] + arrays[1] + arrays[2], 3, axis=1)
    assert [o.shape for o in out] == [(4, 3), (4, 2), (4, 2)]
    for o, w in zip(out, want):
        np.testing.assert_allclose(o, w)


def test_all_gather_uneven() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 2))
    out = all_gather(np.array_split(x, 3, axis=0), 0)
    assert len(out) == 3
    for o in out:
        np.testing.assert_array_equal(o, x)
    assert not np.shares_memory(out[0], out[1])


def test_all_to_all_uneven() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((7, 5))
    out = all_to_all(np.array_split(x, 3, axis=0), split_axis=1, concat_axis=0)
    for o, w in zip(out, np.array_split(x, 3, axis=1)):
        np.testing.assert_array_equal(o, w)


def test_local_slice_and_copies() -> None:
    x = np.arange(10.0).reshape(2, 5)
    for k, w in enumerate(np.array_split(x, 3, axis=1)):
        s = local_slice(x, 1, 3, k)
        np.testing.assert_array_equal(s, w)
        assert not np.shares_memory(s, x)
    arrays = [x.copy(), x.copy()]
    for f in (lambda: all_reduce(arrays, "sum"), lambda: reduce_scatter(arrays, "max", 0),
              lambda: all_gather(arrays, 1), lambda: all_to_all(arrays, 1, 0)):
        for o in f():
            assert not any(np.shares_memory(o, a) for a in arrays)
    # A one-member group: every collective copies.
    (only,) = all_reduce([x], "sum")
    assert not np.shares_memory(only, x) and np.array_equal(only, x)


def test_apply_step_rejects_a_mislabelled_step() -> None:
    m = mesh((2,))
    locs = scatter(np.ones(4), (P,), m)
    with pytest.raises(ValueError):
        apply_step(Step("all_gather", 0, (P,), (B,), 0), locs, m)

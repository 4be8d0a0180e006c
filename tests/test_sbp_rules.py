"""Tests of fir.distribution.rules: coverage, OneFlow's matmul signatures, a numeric check of every nd-signature of every
op (scatter, compute per device, assemble, compare with the logical result), the local rewrites, the exact
reshape check against a brute-force oracle, and the explanations."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fir.dialects import dtypes
from fir.distribution import layout
from fir.dialects import flow
from fir.runtime.reference import evaluate
from fir.distribution.sbp import B, P, PMAX, Broadcast, Mesh, NdSbp, Partial, S, Split
from fir.distribution.rules import (
    NEEDS_LOCAL_REWRITE,
    NOTES,
    RULES,
    NdSignature,
    Signature,
    needs_local_rewrite,
    nd_signatures,
    reshape_exact,
    signatures_1d,
    why_invalid,
)

MESHES = [(2,), (4,), (2, 2)]


def mesh_of(shape: tuple[int, ...]) -> Mesh:
    return Mesh("m", shape, tuple(range(math.prod(shape))))


@dataclass
class Case:
    """One op application: operand (shape, dtype)s, full attributes and the inferred result type."""

    op: str
    ins: list[tuple[tuple[int, ...], str]]
    attrs: dict[str, Any]
    out: tuple[tuple[int, ...], str]

    @property
    def in_shapes(self) -> list[tuple[int, ...]]:
        return [s for s, _ in self.ins]

    def __str__(self) -> str:
        return f"{self.op}{self.in_shapes}->{self.out[0]}{self.attrs if self.op != 'flow.constant' else ''}"


def case(op: type[flow.FlowOp], *ins: tuple[tuple[int, ...], str], declared=None, **attrs: Any) -> Case:
    """A case whose attributes get the op's defaults and whose result type is the op's own infer rule's."""
    tts = list(ins)
    values = {n: attrs.pop(n) if n in attrs else op.default_attr(n, tts) for n in op.FIR_ATTRS}
    assert not attrs, attrs
    return Case(op.name, tts, values, op.infer(tts, values, declared))


F = "f32"
UNARY = [case(op, ((5, 6), F)) for op in flow.ELEMENTWISE_UNARY if op is not flow.CastOp]
CASES = UNARY + [
    case(flow.GeluOp, ((7,), F), approximate="tanh"),
    case(flow.CastOp, ((5, 6), F), declared=((5, 6), "i32")),
    *[case(op, a, b) for op in flow.ELEMENTWISE_BINARY
      for a, b in ((((5, 6), F), ((5, 6), F)), (((5, 6), F), ((6,), F)), (((5, 1), F), ((1, 6), F)),
                   (((), F), ((7,), F)))],
    case(flow.MatmulOp, ((5, 6), F), ((6, 7), F)),
    case(flow.MatmulOp, ((6, 5), F), ((7, 6), F), transpose_a=True, transpose_b=True),
    case(flow.MatmulOp, ((3, 5, 6), F), ((6, 7), F)),
    case(flow.MatmulOp, ((2, 5, 6), F), ((1, 2, 6, 7), F), transpose_b=False),
    case(flow.MatmulOp, ((2, 6, 5), F), ((2, 6, 7), F), transpose_a=True),
    *[case(op, ((5, 6, 7), F), axes=axes, keepdims=keep)
      for op in (flow.ReduceSumOp, flow.ReduceMeanOp, flow.ReduceMaxOp)
      for axes, keep in (([1], False), ([0, -1], True), ([0, 1, 2], False))],
    case(flow.SoftmaxOp, ((5, 6), F), axis=1),
    case(flow.SoftmaxOp, ((5, 6, 7), F), axis=0),
    case(flow.LayerNormOp, ((5, 6, 7), F), ((7,), F), ((7,), F), axes=[-1]),
    case(flow.LayerNormOp, ((5, 6, 7), F), ((6, 7), F), ((6, 7), F), axes=[1, 2]),
    case(flow.TransposeOp, ((5, 6, 7), F), perm=[2, 0, 1]),
    *[case(flow.ReshapeOp, (a, F), declared=(b, F))
      for a, b in (((6, 10), (60,)), ((6, 10), (3, 20)), ((4, 6), (2, 2, 6)), ((5, 6), (30,)), ((2, 4), (8,)),
                   ((30,), (5, 6)), ((4, 3, 5), (12, 5)))],
    case(flow.BroadcastToOp, ((6,), F), declared=((5, 6), F)),
    case(flow.BroadcastToOp, ((5, 1), F), declared=((3, 5, 6), F)),
    case(flow.BroadcastToOp, ((), F), declared=((4, 5), F)),
    case(flow.ConcatOp, ((5, 6), F), ((5, 7), F), axis=1),
    case(flow.ConcatOp, ((5, 6), F), ((2, 6), F), ((3, 6), F), axis=-2),
    case(flow.SliceOp, ((5, 6), F), start=[0, 1], limit=[5, 6], stride=[1, 2]),
    case(flow.SliceOp, ((5, 6, 7), F), start=[0, 0, 1], limit=[5, 6, 6]),
    case(flow.GatherOp, ((7, 6), F), ((5,), "i32"), axis=0),
    case(flow.GatherOp, ((5, 7, 6), F), ((2, 3), "i64"), axis=1),
    case(flow.ScatterAddOp, ((6, 5), F), ((6,), "i32"), declared=((4, 5), F)),
    case(flow.ScatterAddOp, ((3, 2, 4, 5), F), ((2, 4), "i64"), declared=((3, 6, 5), F), axis=1),
    case(flow.ConstantOp, declared=((5, 6), F), value=np.arange(30, dtype=np.float64).reshape(5, 6)),
    case(flow.FillOp, declared=((5, 6), F), value=2.5),
    case(flow.IotaOp, declared=((5, 6), "i32"), axis=1),
    case(flow.IotaOp, declared=((7,), F), axis=0),
    *[case(flow.CrossEntropyOp, (lg, F), (lg[:-1], "i32"), reduction=r)
      for lg in ((5, 7), (6, 5, 7)) for r in ("none", "sum", "mean")],
]


def inputs_for(c: Case, rng: np.random.Generator) -> list[np.ndarray]:
    """Random logical operands inside each op's domain (valid indices and labels, positive logs, ...)."""
    out = []
    for k, (shape, dt) in enumerate(c.ins):
        if dtypes.is_int(dt):
            if c.op == "flow.gather":
                bound = c.ins[0][0][c.attrs.get("axis", 0) % len(c.ins[0][0])]
            elif c.op == "flow.scatter_add":
                bound = c.out[0][c.attrs.get("axis", 0) % len(c.out[0])]
            else:
                bound = c.ins[0][0][-1]
            out.append(rng.integers(0, bound, size=shape).astype(dtypes.numpy_dtype(dt)))
            continue
        x = rng.standard_normal(shape)
        if c.op in ("flow.log", "flow.sqrt", "flow.rsqrt") or (c.op == "flow.pow" and k == 0):
            x = np.abs(x) + 0.5
        if c.op == "flow.div" and k == 1:
            x = np.sign(x) * (np.abs(x) + 0.5) + (x == 0)
        out.append(np.asarray(x, dtype=dtypes.numpy_dtype(dt)))
    return out


def distribute(value: np.ndarray, nd: NdSbp, mesh: Mesh, rng: np.random.Generator | None) -> dict[int, np.ndarray]:
    """Each device's local tensor. With rng None partial axes hold the value on index 0 and the identity
    elsewhere (layout.scatter); with an rng they hold random summands (sum) or random lower bounds (max)."""
    locals_ = layout.scatter(value, nd, mesh)
    parts = [m for m, s in enumerate(nd) if isinstance(s, Partial)]
    if rng is None or not parts:
        return locals_
    op = nd[parts[0]].op
    # Copies along B axes must stay identical: draw one random piece per coordinate with B axes at 0.
    keys = list(dict.fromkeys(tuple(0 if isinstance(s, Broadcast) else c for s, c in zip(nd, coord))
                              for coord in mesh.coords()))
    groups: dict[tuple[int, ...], list[tuple[int, ...]]] = {}  # the keys holding one block, by the first
    for key in keys:
        groups.setdefault(tuple(0 if m in parts else c for m, c in enumerate(key)), []).append(key)
    pieces: dict[tuple[int, ...], np.ndarray] = {}
    for home, members in groups.items():
        index = tuple(slice(o, o + n) for o, n in layout.local_block(value.shape, nd, mesh.shape, home))
        block = np.asarray(value[index], dtype=np.float64)
        if op == "sum":  # random summands; the first takes the value minus the others
            for key in members[1:]:
                pieces[key] = 0.5 * rng.standard_normal(block.shape)
            pieces[home] = block - sum((pieces[k] for k in members[1:]), np.zeros_like(block))
        else:  # values below the block (same sign), each element's maximum held by a random member
            holder = rng.integers(0, len(members), size=block.shape)
            for i, key in enumerate(members):
                u = rng.uniform(0.2, 1.0, size=block.shape)
                pieces[key] = np.where(holder == i, block, np.where(block > 0, block * u, block - u))
    out = {}
    for coord in mesh.coords():
        key = tuple(0 if isinstance(s, Broadcast) else c for s, c in zip(nd, coord))
        out[mesh.device_at(coord)] = np.asarray(pieces[key], dtype=value.dtype)
    return out


def local_attrs(c: Case, sig: NdSignature, mesh: Mesh, coord: tuple[int, ...]) -> tuple[str, dict[str, Any], float]:
    """The op, attributes and result scale a device runs under `sig` (the rewrites of needs_local_rewrite)."""
    op, attrs, scale = c.op, dict(c.attrs), 1.0
    if not needs_local_rewrite(c.op, c.in_shapes, c.out[0], c.attrs, sig):
        return op, attrs, scale
    if c.op == "flow.reduce_mean":
        x = c.in_shapes[0]
        op, scale = "flow.reduce_sum", 1.0 / math.prod(x[a % len(x)] for a in c.attrs["axes"])
    elif c.op == "flow.cross_entropy":
        attrs["reduction"], scale = "sum", 1.0 / math.prod(c.in_shapes[1])
    elif c.op == "flow.slice":
        local = layout.local_shape(c.in_shapes[0], sig.ins[0], mesh.shape, coord)
        for s in sig.out:
            if isinstance(s, Split):
                attrs["limit"] = list(attrs["limit"])
                attrs["limit"][s.axis] = local[s.axis]
    elif c.op == "flow.constant":
        block = layout.local_block(c.out[0], sig.out, mesh.shape, coord)
        attrs["value"] = attrs["value"][tuple(slice(o, o + n) for o, n in block)]
    return op, attrs, scale


def run_signature(c: Case, sig: NdSignature, mesh: Mesh, args: list[np.ndarray], rng) -> None:
    """Scatter, compute on every device, assemble and compare with the logical result."""
    out_shape, out_dt = c.out
    npdt = dtypes.numpy_dtype(out_dt)
    expected = evaluate(c.op, args, c.attrs, out_shape, npdt)
    locals_in = [distribute(x, nd, mesh, rng) for x, nd in zip(args, sig.ins)]
    results = {}
    for coord in mesh.coords():
        dev = mesh.device_at(coord)
        op, attrs, scale = local_attrs(c, sig, mesh, coord)
        shape = layout.local_shape(out_shape, sig.out, mesh.shape, coord)
        y = evaluate(op, [li[dev] for li in locals_in], attrs, shape, npdt)
        if c.op == "flow.iota" and sig.out and needs_local_rewrite(c.op, c.in_shapes, out_shape, c.attrs, sig):
            ax = c.attrs["axis"] % len(out_shape)
            y = y + np.asarray(layout.local_block(out_shape, sig.out, mesh.shape, coord)[ax][0], dtype=npdt)
        results[dev] = np.asarray(y * np.asarray(scale, dtype=npdt) if scale != 1.0 else y, dtype=npdt)
    assert layout.broadcast_mismatch(results, sig.out, mesh) is None
    got = layout.assemble(results, sig.out, mesh, out_shape, npdt)
    rtol, atol = dtypes.TOLERANCE[out_dt]
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=f"{c} with {sig} on {mesh.shape}")


# ----------------------------------------------------------------------------------------------- coverage
def test_every_flow_op_has_a_rule_and_a_note():
    names = {op.name for op in flow.FLOW_OPS}
    assert names - RULES.keys() == set()
    assert RULES.keys() - names == set()
    assert NOTES.keys() == RULES.keys()
    assert NEEDS_LOCAL_REWRITE <= names


def test_cases_cover_every_op():
    assert {c.op for c in CASES} == {op.name for op in flow.FLOW_OPS}


@pytest.mark.parametrize("c", CASES, ids=str)
def test_all_b_first_and_no_duplicates(c: Case):
    sigs = signatures_1d(c.op, c.in_shapes, c.out[0], c.attrs)
    assert sigs[0] == Signature((B,) * len(c.ins), B)
    assert len(set(sigs)) == len(sigs)
    for sig in sigs:
        assert len(sig.ins) == len(c.ins)
    for mesh in MESHES:
        nd = nd_signatures(c.op, c.in_shapes, c.out[0], c.attrs, mesh)
        assert nd[0] == NdSignature(((B,) * len(mesh),) * len(c.ins), (B,) * len(mesh))
        assert len(set(nd)) == len(nd)
        # No tensor mixes P and P(max).
        for s in nd:
            for t in (*s.ins, s.out):
                assert len({p.op for p in t if isinstance(p, Partial)}) <= 1


# ----------------------------------------------------------------------------------------------- matmul
def sigs_of(op: str, ins, out, **attrs) -> set[Signature]:
    return set(signatures_1d(op, ins, out, attrs))


def test_matmul_oneflow_signatures():
    plain = sigs_of("flow.matmul", [(4, 6), (6, 8)], (4, 8), transpose_a=False, transpose_b=False)
    assert {Signature((S(0), B), S(0)), Signature((B, S(1)), S(1)), Signature((S(1), S(0)), P),
            Signature((P, B), P), Signature((B, P), P)} <= plain
    ta = sigs_of("flow.matmul", [(6, 4), (6, 8)], (4, 8), transpose_a=True, transpose_b=False)
    assert {Signature((S(1), B), S(0)), Signature((B, S(1)), S(1)), Signature((S(0), S(0)), P)} <= ta
    tb = sigs_of("flow.matmul", [(4, 6), (8, 6)], (4, 8), transpose_a=False, transpose_b=True)
    assert {Signature((S(0), B), S(0)), Signature((B, S(0)), S(1)), Signature((S(1), S(1)), P)} <= tb
    batched = sigs_of("flow.matmul", [(2, 4, 6), (2, 6, 8)], (2, 4, 8), transpose_a=False, transpose_b=False)
    assert {Signature((S(0), S(0)), S(0)), Signature((S(1), B), S(1)), Signature((B, S(2)), S(2)),
            Signature((S(2), S(1)), P), Signature((P, B), P), Signature((B, P), P)} <= batched
    # A batch axis that one operand broadcasts (or lacks) leaves that operand B.
    bcast = sigs_of("flow.matmul", [(3, 2, 4, 6), (2, 6, 8)], (3, 2, 4, 8), transpose_a=False, transpose_b=False)
    assert {Signature((S(0), B), S(0)), Signature((S(1), S(0)), S(1)), Signature((S(3), S(1)), P)} <= bcast
    stretched = sigs_of("flow.matmul", [(1, 4, 6), (3, 6, 8)], (3, 4, 8), transpose_a=False, transpose_b=False)
    assert Signature((B, S(0)), S(0)) in stretched


def test_partials_of_elementwise_ops():
    assert Signature((P,), P) in sigs_of("flow.neg", [(4,)], (4,))
    assert Signature((PMAX,), PMAX) in sigs_of("flow.relu", [(4,)], (4,))
    assert not {Signature((P,), P), Signature((PMAX,), PMAX)} & sigs_of("flow.gelu", [(4,)], (4,), approximate="none")
    assert sigs_of("flow.cast", [(4,)], (4,)) == {Signature((B,), B), Signature((S(0),), S(0))}
    # A scalar operand broadcasts completely: it is B next to a split or a partial of the other.
    mul = sigs_of("flow.mul", [(), (4, 5)], (4, 5))
    assert {Signature((B, S(0)), S(0)), Signature((B, S(1)), S(1)), Signature((P, B), P), Signature((B, P), P)} <= mul
    assert not any(P in s.ins for s in sigs_of("flow.min", [(4,), (4,)], (4,)))


def test_reduce_and_softmax_rules():
    assert sigs_of("flow.reduce_max", [(4, 5, 6)], (4, 6), axes=[-2], keepdims=False) == {
        Signature((B,), B), Signature((S(0),), S(0)), Signature((S(1),), PMAX), Signature((S(2),), S(1)),
        Signature((PMAX,), PMAX)}
    assert Signature((S(2),), S(2)) in sigs_of("flow.reduce_sum", [(4, 5, 6)], (4, 1, 6), axes=[1], keepdims=True)
    assert sigs_of("flow.softmax", [(4, 5)], (4, 5), axis=-1) == {Signature((B,), B), Signature((S(0),), S(0))}


# ----------------------------------------------------------------------------------------------- numeric check
@pytest.mark.parametrize("c", CASES, ids=str)
def test_every_signature_computes_the_logical_result(c: Case):
    rng = np.random.default_rng(abs(hash(str(c))) % 2**32)
    args = inputs_for(c, rng)
    for shape in MESHES:
        mesh = mesh_of(shape)
        sigs = nd_signatures(c.op, c.in_shapes, c.out[0], c.attrs, shape)
        assert sigs, f"{c} has no signature on {shape}"
        for sig in sigs:
            run_signature(c, sig, mesh, args, None)
            if any(isinstance(s, Partial) for nd in sig.ins for s in nd):
                run_signature(c, sig, mesh, args, rng)


def test_local_rewrites_are_named():
    def rewrites(c: Case, shape=(2,)) -> list[str]:
        return [str(s) for s in nd_signatures(c.op, c.in_shapes, c.out[0], c.attrs, shape)
                if needs_local_rewrite(c.op, c.in_shapes, c.out[0], c.attrs, s)]

    mean = case(flow.ReduceMeanOp, ((4, 6), F), axes=[1])
    assert rewrites(mean) == ["([S(1)]) -> [P]"]
    assert rewrites(case(flow.ReduceSumOp, ((4, 6), F), axes=[1])) == []
    ce = [case(flow.CrossEntropyOp, ((4, 6), F), ((4,), "i32"), reduction=r) for r in ("mean", "sum", "none")]
    assert [rewrites(x) for x in ce] == [["([S(0)], [S(0)]) -> [P]"], [], []]
    assert rewrites(case(flow.IotaOp, declared=((4, 6), "i32"), axis=1)) == ["() -> [S(1)]"]
    assert rewrites(case(flow.SliceOp, ((4, 6), F), start=[0, 1], limit=[4, 6])) == ["([S(0)]) -> [S(0)]"]
    for op in flow.FLOW_OPS:
        if op.name not in NEEDS_LOCAL_REWRITE:
            assert not needs_local_rewrite(op.name, [], (), {}, NdSignature((), ()))


# ----------------------------------------------------------------------------------------------- reshape oracle
def oracle_exact(a: tuple[int, ...], a_nd: NdSbp, b: tuple[int, ...], b_nd: NdSbp, mesh: tuple[int, ...]) -> bool:
    """Brute force: every device's blocks of arange reshaped both ways hold the same elements in the same order."""
    if layout.check_nd(a, a_nd, mesh) or layout.check_nd(b, b_nd, mesh):
        return False
    flat = np.arange(math.prod(a))
    for coord in itertools.product(*(range(d) for d in mesh)):
        x = flat.reshape(a)[tuple(slice(o, o + n) for o, n in layout.local_block(a, a_nd, mesh, coord))]
        y = flat.reshape(b)[tuple(slice(o, o + n) for o, n in layout.local_block(b, b_nd, mesh, coord))]
        if not np.array_equal(x.ravel(), y.ravel()):
            return False
    return True


RESHAPES = [((6, 10), (60,)), ((6, 10), (3, 20)), ((6, 10), (2, 3, 10)), ((4, 6), (2, 2, 6)), ((2, 4), (8,)),
            ((12,), (2, 6)), ((12,), (3, 4)), ((3, 4), (4, 3)), ((2, 3, 4), (6, 4)), ((2, 3, 4), (2, 12)),
            ((4, 1, 6), (24,)), ((1, 8), (2, 4)), ((5, 6), (30,)), ((8, 3), (4, 6)), ((2, 2, 2, 3), (4, 6))]


@pytest.mark.parametrize("a,b", RESHAPES, ids=str)
def test_reshape_signatures_match_brute_force(a, b):
    for mesh in [(2,), (3,), (4,), (2, 2), (2, 3), (3, 2)]:
        got = {(s.ins[0], s.out) for s in nd_signatures("flow.reshape", [a], b, {}, mesh)
               if not any(isinstance(x, Partial) for x in s.out)}
        opts_a = [B, *(S(i) for i in range(len(a)))]
        opts_b = [B, *(S(j) for j in range(len(b)))]
        want = {(x, y) for x in itertools.product(opts_a, repeat=len(mesh))
                for y in itertools.product(opts_b, repeat=len(mesh)) if oracle_exact(a, x, b, y, mesh)}
        assert got == want, (a, b, mesh)


def test_reshape_exact_across_nesting():
    # 2x4 split on rows then columns is 8 split twice, though the columns alone do not start at offset 0.
    assert reshape_exact((2, 4), (S(0), S(1)), (8,), (S(0), S(0)), (2, 2))
    assert not reshape_exact((3, 4), (S(0),), (12,), (S(0),), (2,))
    assert reshape_exact((4, 3), (S(0),), (12,), (S(0),), (2,))
    assert not reshape_exact((4, 3), (S(0),), (12,), (S(0),), (3,))  # rows 2, 1, 1 are 6, 3, 3 elements, not 4 each


# ----------------------------------------------------------------------------------------------- explanations
def test_why_invalid():
    sm = ("flow.softmax", [(4, 6)], (4, 6), {"axis": -1})
    msg = why_invalid(*sm, (2,), (S(1),), [None])
    assert "softmax axis 1" in msg and "results it can give: [B], [S(0)]" in msg
    assert why_invalid(*sm, (2,), (S(0),), [None]) is None
    assert "operand 0 can be [B], [S(0)]" in why_invalid(*sm, (2,), None, [(S(1),)])
    assert "3 elements" in why_invalid("flow.softmax", [(3, 6)], (3, 6), {"axis": 1}, (4,), (S(0),), [None])
    # Each mesh axis alone fits, the combination does not: the logits would be cut into too many pieces.
    ce = why_invalid("flow.cross_entropy", [(3, 7), (3,)], (), {"reduction": "sum"}, (2, 2), (P, P), [None, None])
    assert "operand 0 as [S(0), S(0)]" in ce and "fewer than the 4 pieces" in ce
    add = why_invalid("flow.add", [(4, 6), (4, 6)], (4, 6), {}, (2,), None, [(S(0),), (S(1),)])
    assert "operand 0 can be [B], [S(0)], [S(1)], [P]; operand 1 can be" in add
    mixed = why_invalid("flow.reduce_max", [(4, 6)], (4,), {"axes": [1], "keepdims": False}, (2, 2), (PMAX, P), [None])
    assert "mixes P and P(max)" in mixed
    assert "hold different elements" in why_invalid("flow.reshape", [(3, 4)], (12,), {}, (2,), (S(0),), [(S(0),)])
    assert why_invalid("flow.reshape", [(2, 4)], (8,), {}, (2, 2), (S(0), S(0)), [(S(0), S(1))]) is None


def _reshape_exact_on_every_device(in_shape, in_nd, out_shape, out_nd, mesh_shape) -> bool:
    """reshape_exact's question answered by looking at every device's blocks (numpy's own reshape of an index
    array decides what each device must hold)."""
    flat = np.arange(math.prod(in_shape)).reshape(in_shape)
    out = flat.reshape(out_shape)
    for coord in itertools.product(*(range(d) for d in mesh_shape)):
        ib = layout.local_block(in_shape, in_nd, mesh_shape, coord)
        ob = layout.local_block(out_shape, out_nd, mesh_shape, coord)
        mine = flat[tuple(slice(o, o + n) for o, n in ib)].ravel()
        want = out[tuple(slice(o, o + n) for o, n in ob)].ravel()
        if mine.shape != want.shape or not np.array_equal(mine, want):
            return False
    return True


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_reshape_exact_decides_from_a_few_devices_what_every_device_shows(data):
    # reshape_exact looks at two devices per interval between uneven cuts and axis; every device must agree
    mesh_shape = tuple(data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=2)))
    dims = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    n = math.prod(dims)
    in_shape = tuple(data.draw(st.permutations(dims)))
    cut = data.draw(st.integers(1, len(dims)))
    out_shape = (math.prod(dims[:cut]), math.prod(dims[cut:])) if cut < len(dims) else (n,)
    choices = lambda shape: [B] + [S(a) for a in range(len(shape))]  # noqa: E731
    in_nd = tuple(data.draw(st.sampled_from(choices(in_shape))) for _ in mesh_shape)
    out_nd = tuple(data.draw(st.sampled_from(choices(out_shape))) for _ in mesh_shape)
    if layout.check_nd(in_shape, in_nd, mesh_shape) or layout.check_nd(out_shape, out_nd, mesh_shape):
        return
    assert reshape_exact(in_shape, in_nd, out_shape, out_nd, mesh_shape) == \
        _reshape_exact_on_every_device(in_shape, in_nd, out_shape, out_nd, mesh_shape)

"""Distributed execution equals the single-device reference: every flow op under every valid signature on
meshes [2], [4] and [2, 2] with uneven shapes, through sbp-infer, insert-boxing, partition and virtual devices."""

from __future__ import annotations

import numpy as np
import pytest

from distributed_util import assert_matches, one_op_module, run_both
from fir.dialects.flow import FLOW_OPS
from fir.distribution.rules import nd_signatures
from fir.runtime.inputs import random_inputs
from fir.distribution.sbp import format_nd

F32, I32 = "f32", "i32"

# (op, operand types, attributes, declared result type or None): small, mostly uneven shapes.
CASES = [
    ("flow.neg", [((5, 6), F32)], {}, None),
    ("flow.exp", [((5, 6), F32)], {}, None),
    ("flow.log", [((5, 6), F32)], {}, None),
    ("flow.sqrt", [((5, 6), F32)], {}, None),
    ("flow.rsqrt", [((5, 6), F32)], {}, None),
    ("flow.tanh", [((5, 6), F32)], {}, None),
    ("flow.relu", [((5, 6), F32)], {}, None),
    ("flow.sigmoid", [((5, 6), F32)], {}, None),
    ("flow.erf", [((5, 6), F32)], {}, None),
    ("flow.gelu", [((5, 6), F32)], {"approximate": "tanh"}, None),
    ("flow.cast", [((5, 6), F32)], {}, ((5, 6), "f16")),
    ("flow.add", [((5, 6), F32), ((6,), F32)], {}, None),
    ("flow.sub", [((5, 1), F32), ((1, 6), F32)], {}, None),
    ("flow.mul", [((5, 6), F32), ((5, 6), F32)], {}, None),
    ("flow.div", [((5, 6), F32), ((), F32)], {}, None),
    ("flow.max", [((5, 6), F32), ((5, 6), F32)], {}, None),
    ("flow.min", [((7,), I32), ((7,), I32)], {}, None),
    ("flow.pow", [((5, 6), F32), ((6,), F32)], {}, None),
    ("flow.greater", [((5, 6), F32), ((6,), F32)], {}, None),
    ("flow.equal", [((5, 6), I32), ((5, 1), I32)], {}, None),
    ("flow.matmul", [((5, 6), F32), ((6, 7), F32)], {}, None),
    ("flow.matmul", [((6, 5), F32), ((7, 6), F32)], {"transpose_a": True, "transpose_b": True}, None),
    ("flow.matmul", [((3, 5, 6), F32), ((6, 4), F32)], {}, None),
    ("flow.reduce_sum", [((5, 6, 7), F32)], {"axes": [1], "keepdims": False}, None),
    ("flow.reduce_mean", [((5, 6, 7), F32)], {"axes": [0, 2], "keepdims": True}, None),
    ("flow.reduce_max", [((5, 6), F32)], {"axes": [-1], "keepdims": False}, None),
    ("flow.softmax", [((5, 6), F32)], {"axis": 0}, None),
    ("flow.layernorm", [((5, 6), F32), ((6,), F32), ((6,), F32)], {}, None),
    ("flow.transpose", [((5, 6, 4), F32)], {"perm": [2, 0, 1]}, None),
    ("flow.reshape", [((6, 8), F32)], {}, ((6, 2, 4), F32)),
    ("flow.reshape", [((6, 12), F32)], {}, ((6, 3, 4), F32)),
    ("flow.reshape", [((4, 6), F32)], {}, ((24,), F32)),
    ("flow.broadcast_to", [((5, 1), F32)], {}, ((5, 6), F32)),
    ("flow.concat", [((5, 3), F32), ((5, 4), F32)], {"axis": 1}, None),
    ("flow.slice", [((6, 8), F32)], {"start": [0, 1], "limit": [6, 7]}, None),
    ("flow.gather", [((7, 4), F32), ((5,), I32)], {}, None),
    ("flow.gather", [((4, 7), F32), ((3, 2), I32)], {"axis": 1}, None),
    ("flow.scatter_add", [((6, 5), F32), ((6,), I32)], {}, ((4, 5), F32)),
    ("flow.scatter_add", [((3, 4, 2, 5), F32), ((4, 2), I32)], {"axis": 1}, ((3, 6, 5), F32)),
    ("flow.constant", [], {"value": [[float(i * 6 + j) for j in range(6)] for i in range(5)]}, ((5, 6), F32)),
    ("flow.fill", [], {"value": 2.5}, ((5, 6), F32)),
    ("flow.iota", [], {"axis": 0}, ((5, 6), F32)),
    ("flow.iota", [], {"axis": 1}, ((5, 6), I32)),
    ("flow.cross_entropy", [((6, 5), F32), ((6,), I32)], {"reduction": "mean"}, None),
    ("flow.cross_entropy", [((6, 5), F32), ((6,), I32)], {"reduction": "sum"}, None),
    ("flow.cross_entropy", [((6, 5), F32), ((6,), I32)], {"reduction": "none"}, None),
]
POSITIVE_FIRST = {"flow.log", "flow.sqrt", "flow.rsqrt", "flow.pow"}
MESHES = [(2,), (4,), (2, 2)]


def _result_shape(case):
    op, ins, attrs, result = case
    module = one_op_module(op, ins, attrs, result, (1,), None, None)
    func = module.ops.last
    return tuple(func.function_type.outputs.data[0].get_shape())


def test_cases_cover_every_flow_op():
    assert {c[0] for c in CASES} == {op.name for op in FLOW_OPS}


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "x".join(map(str, m)))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0].split(".")[1] + "-" + "-".join(
    "x".join(map(str, s)) for s, _ in c[1]))
def test_every_signature_matches_reference(case, mesh):
    op, ins, attrs, result = case
    sigs = nd_signatures(op, [s for s, _ in ins], _result_shape(case), attrs, mesh)
    assert sigs, "the all-B signature is always valid"
    for sig in sigs:
        what = f"{op} on {list(mesh)}: ({', '.join(format_nd(n) for n in sig.ins)}) -> {format_nd(sig.out)}"
        module = one_op_module(op, ins, attrs, result, mesh, sig.ins, sig.out)
        inputs = random_inputs(module.ops.last, len(what))
        if op in POSITIVE_FIRST:  # keep log, sqrt, rsqrt and pow away from NaN, which would hide errors
            inputs[0] = np.abs(inputs[0]) + 0.5
        got, want, _ = run_both(module, inputs=inputs)
        assert_matches(got, want, module.ops.last, what)

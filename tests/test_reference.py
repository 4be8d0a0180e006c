"""Tests of fir.runtime.reference: hand-computed cases, independent (scipy) implementations, low-precision
rounding, error reporting, kernel coverage and agreement with the ops' shape rules."""

from __future__ import annotations

import math
import warnings
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import scipy.special as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fir.dialects import dtypes
from fir.dialects import flow
from fir.runtime.reference import KERNELS, KernelError, erf, evaluate

BF16 = np.dtype(ml_dtypes.bfloat16)


def run(op: type[flow.FlowOp], ins: list[np.ndarray], declared: tuple[tuple[int, ...], str] | None = None,
        **attrs: Any) -> np.ndarray:
    """Evaluate `op` with the result type its own `infer` rule gives, so each test also checks that
    the reference and the shape rules agree."""
    ins = [np.asarray(x) for x in ins]
    tts = [(x.shape, dtypes.dtype_of_numpy(x.dtype)) for x in ins]
    values = {n: attrs.pop(n) if n in attrs else op.default_attr(n, tts) for n in op.FIR_ATTRS}
    assert not attrs, f"unknown attributes {attrs}"
    shape, dt = op.infer(tts, values, declared)
    out = evaluate(op.name, ins, values, shape, dtypes.numpy_dtype(dt))
    assert out.shape == shape and out.dtype == dtypes.numpy_dtype(dt)
    return out


def f32(*v: Any) -> np.ndarray:
    return np.array(v[0] if len(v) == 1 else v, dtype=np.float32)


def i32(*v: Any) -> np.ndarray:
    return np.array(v[0] if len(v) == 1 else v, dtype=np.int32)


# ----------------------------------------------------------------------------------------------- coverage
def test_every_flow_op_has_a_kernel():
    names = {op.name for op in flow.FLOW_OPS}
    assert names - KERNELS.keys() == set(), "flow ops without a reference kernel"
    assert KERNELS.keys() - names == set(), "reference kernels for ops that flow does not define"


def test_every_kernel_is_documented():
    undocumented = [n for n, k in KERNELS.items() if not (k.__doc__ or "").strip()]
    assert undocumented == []


def test_unknown_op_raises():
    with pytest.raises(KernelError, match="flow.nope"):
        evaluate("flow.nope", [], {}, (), np.dtype(np.float32))


# ----------------------------------------------------------------------------------------------- evaluate contract
def test_shape_mismatch_is_an_assertion_naming_the_op():
    with pytest.raises(AssertionError, match=r"flow\.add.*shape"):
        evaluate("flow.add", [f32(1, 2), f32(3, 4)], {}, (3,), np.dtype(np.float32))


def test_dtype_mismatch_is_an_assertion_naming_the_op():
    with pytest.raises(AssertionError, match=r"flow\.add.*dtype"):
        evaluate("flow.add", [f32(1, 2), f32(3, 4)], {}, (2,), np.dtype(np.float16))


@pytest.mark.parametrize("op,ins,attrs,shape", [
    ("flow.reshape", [np.arange(6, dtype=np.float32)], {}, (2, 3)),
    ("flow.transpose", [np.arange(6, dtype=np.float32).reshape(2, 3)], {"perm": [1, 0]}, (3, 2)),
    ("flow.broadcast_to", [np.arange(3, dtype=np.float32)], {}, (2, 3)),
    ("flow.slice", [np.arange(6, dtype=np.float32)], {"start": [0], "limit": [6], "stride": [2]}, (3,)),
    ("flow.iota", [], {"axis": 0}, (4, 2)),
])
def test_results_are_fresh_writable_c_contiguous(op, ins, attrs, shape):
    before = [x.copy() for x in ins]
    out = evaluate(op, ins, attrs, shape, np.dtype(np.float32))
    assert out.flags.c_contiguous and out.flags.writeable
    out[...] = -7.0
    for x, b in zip(ins, before):
        np.testing.assert_array_equal(x, b)  # writing the result must not change an input


def test_scalar_results_stay_rank_zero():
    out = run(flow.ReduceSumOp, [f32(1, 2, 3)], axes=[0])
    assert out.shape == () and out == 6.0


# ----------------------------------------------------------------------------------------------- unary
def test_unary_exact_values():
    np.testing.assert_array_equal(run(flow.NegOp, [i32(1, -2, 0)]), i32(-1, 2, 0))
    np.testing.assert_array_equal(run(flow.ExpOp, [f32(0.0)]), f32(1.0))
    np.testing.assert_array_equal(run(flow.LogOp, [f32(1.0)]), f32(0.0))
    np.testing.assert_array_equal(run(flow.SqrtOp, [f32(4, 9, 0.25)]), f32(2, 3, 0.5))
    np.testing.assert_array_equal(run(flow.RsqrtOp, [f32(4, 0.25, 1)]), f32(0.5, 2, 1))
    np.testing.assert_array_equal(run(flow.TanhOp, [f32(0.0, 30.0, -30.0)]), f32(0, 1, -1))
    np.testing.assert_allclose(run(flow.ExpOp, [f32(1.0)]), np.float32(math.e), rtol=1e-7)
    np.testing.assert_allclose(run(flow.LogOp, [f32(math.e)]), 1.0, rtol=1e-6)


def test_neg_wraps_int_min():
    x = np.array([np.iinfo(np.int32).min], dtype=np.int32)
    np.testing.assert_array_equal(run(flow.NegOp, [x]), x)


def test_relu_on_ints_keeps_the_dtype():
    out = run(flow.ReluOp, [i32(-3, 0, 5)])
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, i32(0, 0, 5))
    np.testing.assert_array_equal(run(flow.ReluOp, [f32(-1.5, 2.5)]), f32(0, 2.5))


def test_sigmoid_against_expit_and_saturates_without_warnings():
    x = np.linspace(-40, 40, 801, dtype=np.float32)
    np.testing.assert_allclose(run(flow.SigmoidOp, [x]), sp.expit(x.astype(np.float64)), rtol=1e-6, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = run(flow.SigmoidOp, [f32(-1000.0, 1000.0, 0.0)])
    np.testing.assert_array_equal(out, f32(0.0, 1.0, 0.5))


def test_erf_matches_scipy():
    x = np.concatenate([np.linspace(-7, 7, 20001), [0.0, 1e-300, 0.84375, 1.25, 1 / 0.35, 6.0, np.inf, -np.inf]])
    assert np.max(np.abs(erf(x) - sp.erf(x))) < 1e-7
    assert np.isnan(erf(np.array([np.nan]))[0])


def test_gelu_exact_against_scipy_erf():
    x = np.linspace(-10, 10, 2001, dtype=np.float32)
    x64 = x.astype(np.float64)
    want = 0.5 * x64 * (1 + sp.erf(x64 / np.sqrt(2)))
    np.testing.assert_allclose(run(flow.GeluOp, [x]), want, rtol=1e-6, atol=1e-7)
    # Hand values: gelu(0) = 0, gelu(1) = Phi(1) = 0.841344746...
    np.testing.assert_allclose(run(flow.GeluOp, [f32(0.0, 1.0)]), [0.0, 0.8413447460685429], rtol=1e-7)


def test_gelu_tanh_formula():
    x = np.linspace(-8, 8, 1601, dtype=np.float32)
    x64 = x.astype(np.float64)
    want = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)))
    got = run(flow.GeluOp, [x], approximate="tanh")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The approximation really differs from the exact gelu (so the attribute is not ignored).
    assert np.max(np.abs(got - run(flow.GeluOp, [x]))) > 1e-4


def test_cast_truncates_toward_zero_and_to_bool():
    x = f32(1.7, -1.7, 2.5, -0.5, 0.0)
    np.testing.assert_array_equal(run(flow.CastOp, [x], declared=((5,), "i32")), i32(1, -1, 2, 0, 0))
    np.testing.assert_array_equal(run(flow.CastOp, [x], declared=((5,), "i1")), [True, True, True, True, False])
    np.testing.assert_array_equal(run(flow.CastOp, [np.array([True, False])], declared=((2,), "f32")), f32(1, 0))
    # f32 -> bf16 rounds to nearest even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
    out = run(flow.CastOp, [f32(1 + 2**-8, 1 + 3 * 2**-8)], declared=((2,), "bf16"))
    np.testing.assert_array_equal(out.astype(np.float32), f32(1.0, 1 + 2**-6))
    np.testing.assert_array_equal(
        run(flow.CastOp, [np.array([1.7, -2.9], dtype=BF16)], declared=((2,), "i64")), np.array([1, -2]))


# ----------------------------------------------------------------------------------------------- binary
def test_binary_hand_values_and_broadcasting():
    a = f32([[1.0], [2.0]])
    b = f32(10, 20, 30)
    np.testing.assert_array_equal(run(flow.AddOp, [a, b]), f32([[11, 21, 31], [12, 22, 32]]))
    np.testing.assert_array_equal(run(flow.SubOp, [a, b]), f32([[-9, -19, -29], [-8, -18, -28]]))
    np.testing.assert_array_equal(run(flow.MulOp, [i32(2, 3), i32(4, -5)]), i32(8, -15))
    np.testing.assert_array_equal(run(flow.DivOp, [f32(1, 3), f32(4, -2)]), f32(0.25, -1.5))
    np.testing.assert_array_equal(run(flow.MaxOp, [i32(1, 5), i32(3, 2)]), i32(3, 5))
    np.testing.assert_array_equal(run(flow.MinOp, [i32(1, 5), i32(3, 2)]), i32(1, 2))
    np.testing.assert_array_equal(run(flow.PowOp, [f32(2, 3, 4), f32(3, 2, 0.5)]), f32(8, 9, 2))
    assert np.isnan(run(flow.MaxOp, [f32(np.nan, 1), f32(0, np.nan)])).all()


def test_integer_add_wraps():
    big = np.array([np.iinfo(np.int32).max], dtype=np.int32)
    out = run(flow.AddOp, [big, i32(1)])
    assert out.dtype == np.int32 and out[0] == np.iinfo(np.int32).min
    out = run(flow.MulOp, [np.array(2**62, dtype=np.int64), np.array(4, dtype=np.int64)])
    assert out.dtype == np.int64 and out == 0


# ----------------------------------------------------------------------------------------------- matmul
def test_matmul_2x2_ints():
    a = i32([[1, 2], [3, 4]])
    b = i32([[5, 6], [7, 8]])
    np.testing.assert_array_equal(run(flow.MatmulOp, [a, b]), i32([[19, 22], [43, 50]]))
    np.testing.assert_array_equal(run(flow.MatmulOp, [a, b], transpose_b=True), i32([[17, 23], [39, 53]]))
    np.testing.assert_array_equal(run(flow.MatmulOp, [a, b], transpose_a=True), i32([[26, 30], [38, 44]]))
    np.testing.assert_array_equal(run(flow.MatmulOp, [a, b], transpose_a=True, transpose_b=True),
                                  i32([[23, 31], [34, 46]]))


def test_matmul_batch_broadcast():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 1, 3, 4)).astype(np.float32)
    b = rng.standard_normal((5, 4, 6)).astype(np.float32)
    out = run(flow.MatmulOp, [a, b])
    assert out.shape == (2, 5, 3, 6)
    np.testing.assert_allclose(out, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- reductions
def test_reductions_hand_values():
    x = f32([[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(run(flow.ReduceSumOp, [x], axes=[0]), f32(5, 7, 9))
    np.testing.assert_array_equal(run(flow.ReduceSumOp, [x], axes=[-1], keepdims=True), f32([[6], [15]]))
    np.testing.assert_array_equal(run(flow.ReduceSumOp, [x], axes=[0, 1]), np.float32(21))
    np.testing.assert_array_equal(run(flow.ReduceMeanOp, [x], axes=[1]), f32(2, 5))
    np.testing.assert_array_equal(run(flow.ReduceMaxOp, [x], axes=[0]), f32(4, 5, 6))
    np.testing.assert_array_equal(run(flow.ReduceMaxOp, [i32([[1, -9], [-3, 2]])], axes=[1]), i32(1, 2))


def test_integer_reduce_sum_stays_in_its_dtype_and_wraps():
    x = np.full((2,), np.iinfo(np.int32).max, dtype=np.int32)
    out = run(flow.ReduceSumOp, [x], axes=[0])
    assert out.dtype == np.int32 and out == -2


def test_reduce_sum_over_a_strided_axis_is_accurate():
    # 2^20 rows summed down axis 0: pairwise summation keeps f32 within a few ulps of the exact sum.
    x = np.full((1 << 20, 2), 0.1, dtype=np.float32)
    out = run(flow.ReduceSumOp, [x], axes=[0])
    np.testing.assert_allclose(out, np.float64(np.float32(0.1)) * (1 << 20), rtol=1e-6)


# ----------------------------------------------------------------------------------------------- normalisation
def test_softmax_hand_values():
    np.testing.assert_allclose(run(flow.SoftmaxOp, [f32(0.0, math.log(2))]), [1 / 3, 2 / 3], rtol=1e-6)
    x = f32([[0.0, 5.0], [0.0, 5.0]])
    np.testing.assert_allclose(run(flow.SoftmaxOp, [x], axis=0), np.full((2, 2), 0.5), rtol=1e-7)


def test_softmax_against_scipy_with_large_logits():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 7, 9)) * 5 + 1000).astype(np.float32)
    for axis in (-1, 0, 1):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = run(flow.SoftmaxOp, [x], axis=axis)
        np.testing.assert_allclose(got, sp.softmax(x.astype(np.float64), axis=axis), rtol=1e-5, atol=1e-7)


def test_layernorm_of_1_2_3():
    x = f32(1, 2, 3)
    # mean 2, biased variance 2/3: (x - 2) / sqrt(2/3) = [-sqrt(3/2), 0, sqrt(3/2)]
    out = run(flow.LayerNormOp, [x, f32(1, 1, 1), f32(0, 0, 0)], eps=0.0)
    np.testing.assert_allclose(out, [-math.sqrt(1.5), 0.0, math.sqrt(1.5)], rtol=1e-6)
    out = run(flow.LayerNormOp, [x, f32(2, 2, 2), f32(1, 0, -1)], eps=1.0)
    np.testing.assert_allclose(out, np.array([-1, 0, 1]) / math.sqrt(2 / 3 + 1) * 2 + [1, 0, -1], rtol=1e-6)


def test_layernorm_over_two_trailing_axes():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    g = rng.standard_normal((4, 5)).astype(np.float32)
    b = rng.standard_normal((4, 5)).astype(np.float32)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(1, 2), keepdims=True)
    var = x64.var(axis=(1, 2), keepdims=True)
    want = (x64 - mean) / np.sqrt(var + 1e-5) * g + b
    np.testing.assert_allclose(run(flow.LayerNormOp, [x, g, b], axes=[-2, -1]), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- layout
def test_layout_ops():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(run(flow.TransposeOp, [x], perm=[1, 0]), x.T)
    np.testing.assert_array_equal(run(flow.ReshapeOp, [x], declared=((3, 2), "f32")), f32([[0, 1], [2, 3], [4, 5]]))
    np.testing.assert_array_equal(run(flow.BroadcastToOp, [f32(1, 2, 3)], declared=((2, 3), "f32")),
                                  f32([[1, 2, 3], [1, 2, 3]]))
    np.testing.assert_array_equal(run(flow.ConcatOp, [x, x[:1], x], axis=0), np.concatenate([x, x[:1], x]))
    np.testing.assert_array_equal(run(flow.ConcatOp, [x, x], axis=-1), f32([[0, 1, 2, 0, 1, 2], [3, 4, 5, 3, 4, 5]]))


def test_slice_with_stride():
    np.testing.assert_array_equal(run(flow.SliceOp, [np.arange(10, dtype=np.int32)], start=[1], limit=[8], stride=[3]),
                                  i32(1, 4, 7))
    x = np.arange(20, dtype=np.float32).reshape(4, 5)
    out = run(flow.SliceOp, [x], start=[1, 0], limit=[4, 5], stride=[2, 2])
    np.testing.assert_array_equal(out, f32([[5, 7, 9], [15, 17, 19]]))
    assert run(flow.SliceOp, [x], start=[2, 2], limit=[2, 5]).shape == (0, 3)


def test_gather():
    table = f32([[0, 1], [10, 11], [20, 21]])
    out = run(flow.GatherOp, [table, i32([[2, 0]])])
    np.testing.assert_array_equal(out, f32([[[20, 21], [0, 1]]]))
    np.testing.assert_array_equal(run(flow.GatherOp, [table, np.array([1, 1, 0])], axis=1),
                                  f32([[1, 1, 0], [11, 11, 10], [21, 21, 20]]))


def test_gather_out_of_range_raises():
    table = np.zeros((50257, 2), dtype=np.float32)
    with pytest.raises(KernelError, match="flow.gather: index 70000 is out of range for axis 0 of size 50257"):
        run(flow.GatherOp, [table, i32(5, 70000, 3)])
    with pytest.raises(KernelError, match="index -1 is out of range"):
        run(flow.GatherOp, [table, i32(-1)])


# ----------------------------------------------------------------------------------------------- sources
def test_constant_fill_iota():
    value = np.array([[1.5, -2.25], [3.0, 0.1]])
    out = run(flow.ConstantOp, [], declared=((2, 2), "f32"), value=value)
    np.testing.assert_array_equal(out, value.astype(np.float32))
    out = run(flow.ConstantOp, [], declared=((2, 2), "bf16"), value=value)
    np.testing.assert_array_equal(out, value.astype(BF16))
    out = run(flow.ConstantOp, [], declared=((3,), "i1"), value=np.array([0, 1, 1], dtype=np.int64))
    np.testing.assert_array_equal(out, [False, True, True])
    np.testing.assert_array_equal(run(flow.FillOp, [], declared=((2,), "f32"), value=2.5), f32(2.5, 2.5))
    out = run(flow.FillOp, [], declared=((2, 1), "i32"), value=3.0)
    assert out.dtype == np.int32 and (out == 3).all()
    assert np.all(run(flow.FillOp, [], declared=((2,), "bf16"), value=-math.inf) == -np.inf)
    np.testing.assert_array_equal(run(flow.IotaOp, [], declared=((2, 3), "i32"), axis=1), i32([[0, 1, 2], [0, 1, 2]]))
    np.testing.assert_array_equal(run(flow.IotaOp, [], declared=((2, 3), "f32"), axis=-2), f32([[0, 0, 0], [1, 1, 1]]))


# ----------------------------------------------------------------------------------------------- loss
def test_cross_entropy_by_hand():
    logits = f32([[0.0, 0.0], [0.0, math.log(3)]])
    labels = i32(0, 1)
    # Row 0: log(2) - 0. Row 1: log(1 + 3) - log(3) = log(4/3).
    losses = [math.log(2), math.log(4 / 3)]
    np.testing.assert_allclose(run(flow.CrossEntropyOp, [logits, labels], reduction="none"), losses, rtol=1e-6)
    np.testing.assert_allclose(run(flow.CrossEntropyOp, [logits, labels], reduction="sum"), sum(losses), rtol=1e-6)
    out = run(flow.CrossEntropyOp, [logits, labels])
    assert out.shape == ()
    np.testing.assert_allclose(out, sum(losses) / 2, rtol=1e-6)


def test_cross_entropy_against_scipy_logsumexp():
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((3, 5, 11)) * 30).astype(np.float32)
    labels = rng.integers(0, 11, size=(3, 5)).astype(np.int64)
    l64 = logits.astype(np.float64)
    want = sp.logsumexp(l64, axis=-1) - np.take_along_axis(l64, labels[..., None], axis=-1)[..., 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = run(flow.CrossEntropyOp, [logits, labels], reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(flow.CrossEntropyOp, [logits, labels]), want.mean(), rtol=1e-5)


def test_cross_entropy_label_out_of_range_raises():
    logits = np.zeros((2, 4), dtype=np.float32)
    with pytest.raises(KernelError, match="label 4 is out of range for 4 classes"):
        run(flow.CrossEntropyOp, [logits, i32(0, 4)])
    with pytest.raises(KernelError, match="label -2 is out of range"):
        run(flow.CrossEntropyOp, [logits, i32(-2, 0)])


# ----------------------------------------------------------------------------------------------- low precision
def _low_precision_cases(rng: np.random.Generator):
    x = rng.standard_normal((4, 8))
    pos = rng.uniform(0.5, 4.0, (4, 8))
    return [
        (flow.NegOp, [x], {}), (flow.ExpOp, [x], {}), (flow.LogOp, [pos], {}), (flow.SqrtOp, [pos], {}),
        (flow.RsqrtOp, [pos], {}), (flow.TanhOp, [x], {}), (flow.ReluOp, [x], {}), (flow.SigmoidOp, [x], {}),
        (flow.GeluOp, [x], {}), (flow.GeluOp, [x], {"approximate": "tanh"}),
        (flow.AddOp, [x, x[:1]], {}), (flow.SubOp, [x, pos], {}), (flow.MulOp, [x, pos], {}),
        (flow.DivOp, [x, pos], {}), (flow.MaxOp, [x, pos], {}), (flow.MinOp, [x, pos], {}),
        (flow.PowOp, [pos, x], {}),
        (flow.MatmulOp, [x, rng.standard_normal((8, 5))], {}),
        (flow.ReduceSumOp, [x], {"axes": [1]}), (flow.ReduceMeanOp, [x], {"axes": [0]}),
        (flow.ReduceMaxOp, [x], {"axes": [-1]}),
        (flow.SoftmaxOp, [x], {}), (flow.LayerNormOp, [x, pos[0], x[0]], {}),
    ]


@pytest.mark.parametrize("dt", ["f16", "bf16"])
def test_low_precision_is_the_f32_result_rounded_once(dt):
    low = dtypes.numpy_dtype(dt)
    rtol, atol = dtypes.TOLERANCE[dt]
    for op, ins, attrs in _low_precision_cases(np.random.default_rng(4)):
        lows = [np.asarray(v).astype(low) for v in ins]
        got = run(op, lows, **attrs)
        assert got.dtype == low, op.name
        # The f32 computation on the very same (already rounded) values.
        ref = run(op, [v.astype(np.float32) for v in lows], **attrs)
        np.testing.assert_allclose(got.astype(np.float32), ref, rtol=rtol, atol=atol, err_msg=op.name)
        # One rounding at the end: bit-identical to rounding the f32 result.
        np.testing.assert_array_equal(got, ref.astype(low), err_msg=op.name)


@pytest.mark.parametrize("dt", ["f16", "bf16"])
def test_low_precision_cross_entropy(dt):
    low = dtypes.numpy_dtype(dt)
    rtol, atol = dtypes.TOLERANCE[dt]
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((6, 10)).astype(low)
    labels = rng.integers(0, 10, size=6).astype(np.int32)
    for reduction in ("none", "sum", "mean"):
        got = run(flow.CrossEntropyOp, [logits, labels], reduction=reduction)
        ref = run(flow.CrossEntropyOp, [logits.astype(np.float32), labels], reduction=reduction)
        np.testing.assert_allclose(got.astype(np.float32), ref, rtol=rtol, atol=atol)
        np.testing.assert_array_equal(got, ref.astype(low))


# ----------------------------------------------------------------------------------------------- shape rules
FAST = settings(max_examples=40, deadline=None)
BINARY_OPS = [flow.AddOp, flow.SubOp, flow.MulOp, flow.DivOp, flow.MaxOp, flow.MinOp, flow.PowOp]


def _data(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 2.0, shape).astype(np.float32)


@FAST
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=4), op=st.sampled_from(BINARY_OPS))
def test_binary_shape_matches_infer(shapes, op):
    a, b = shapes.input_shapes
    want, _ = op.infer([(a, "f32"), (b, "f32")], {}, None)
    out = evaluate(op.name, [_data(a), _data(b, 1)], {}, want, np.dtype(np.float32))
    assert out.shape == want == shapes.result_shape


@FAST
@given(data=st.data(), op=st.sampled_from([flow.ReduceSumOp, flow.ReduceMeanOp, flow.ReduceMaxOp]))
def test_reduction_shape_matches_infer(data, op):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4))
    rank = len(shape)
    picked = data.draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
    axes = [a - rank if data.draw(st.booleans()) else a for a in picked]
    attrs = {"axes": axes, "keepdims": data.draw(st.booleans())}
    want, _ = op.infer([(shape, "f32")], attrs, None)
    x = _data(shape)
    out = evaluate(op.name, [x], attrs, want, np.dtype(np.float32))
    assert out.shape == want
    np.testing.assert_allclose(out, {"flow.reduce_sum": np.sum, "flow.reduce_mean": np.mean,
                                     "flow.reduce_max": np.max}[op.name](x.astype(np.float64), axis=tuple(axes),
                                                                         keepdims=attrs["keepdims"]), rtol=1e-5)


@FAST
@given(data=st.data())
def test_transpose_shape_matches_infer(data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=5, min_side=1, max_side=4))
    perm = data.draw(st.permutations(list(range(len(shape)))))
    want, _ = flow.TransposeOp.infer([(shape, "f32")], {"perm": perm}, None)
    x = _data(shape)
    out = evaluate("flow.transpose", [x], {"perm": perm}, want, np.dtype(np.float32))
    assert out.shape == want
    np.testing.assert_array_equal(out, np.transpose(x, perm))


@FAST
@given(batch=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3),
       m=st.integers(1, 4), k=st.integers(1, 4), n=st.integers(1, 4), ta=st.booleans(), tb=st.booleans())
def test_matmul_shape_matches_infer(batch, m, k, n, ta, tb):
    ba, bb = batch.input_shapes
    a = ba + ((k, m) if ta else (m, k))
    b = bb + ((n, k) if tb else (k, n))
    attrs = {"transpose_a": ta, "transpose_b": tb}
    want, _ = flow.MatmulOp.infer([(a, "f32"), (b, "f32")], attrs, None)
    out = evaluate("flow.matmul", [_data(a), _data(b, 1)], attrs, want, np.dtype(np.float32))
    assert out.shape == want == batch.result_shape + (m, n)

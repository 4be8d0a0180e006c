"""The CUDA kernels of the reduction and row-wise flow ops (fir.codegen.reduction): launch geometry in pure
Python, every case compiled by nvcc in one translation unit (no spills), and, on a GPU, each case run and
compared with fir.runtime.reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from xdsl.ir import Block, Operation

from fir.dialects import dtypes
from fir.codegen.kernel_ir import Kernel, render_kernel
from fir.codegen.kernels import EMITTERS
from fir.codegen.reduction import (
    SMEM_LIMIT,
    cross_entropy_kernel,
    layernorm_kernel,
    reduce_kernel,
    softmax_kernel,
)
from fir.dialects.base import to_tt
from fir.dialects.flow import (
    CrossEntropyOp,
    LayerNormOp,
    ReduceMaxOp,
    ReduceMeanOp,
    ReduceSumOp,
    SoftmaxOp,
)
from fir.runtime.reference import evaluate
from cuda_util import assert_matches, check_against_reference, check_compiles, needs_nvcc, run_kernel


def _args(*types: tuple[tuple[int, ...], str]):
    return list(Block(arg_types=[dtypes.tensor_type(s, d) for s, d in types]).args)


def red(cls, shape, dt, axes, keepdims=False) -> Operation:
    return cls.make(_args((shape, dt)), axes=axes, keepdims=keepdims)


def softmax(shape, dt, axis) -> Operation:
    return SoftmaxOp.make(_args((shape, dt)), axis=axis)


def layernorm(shape, dt, k) -> Operation:
    return LayerNormOp.make(_args((shape, dt), (shape[-k:], dt), (shape[-k:], dt)), axes=list(range(-k, 0)))


def xent(shape, dt, label_dt, reduction) -> Operation:
    return CrossEntropyOp.make(_args((shape, dt), (shape[:-1], label_dt)), reduction=reduction)


@dataclass(frozen=True)
class Case:
    label: str
    build: Callable[[], Operation]


CASES = [
    # reduce_sum: first / middle / last / several axes, keepdims, every dtype, wrapping integers, empty axes
    Case("sum_f32_axis0", lambda: red(ReduceSumOp, (8, 16, 32), "f32", [0])),
    Case("sum_f32_axis1", lambda: red(ReduceSumOp, (8, 16, 32), "f32", [1])),
    Case("sum_f32_axis2", lambda: red(ReduceSumOp, (8, 16, 32), "f32", [-1])),
    Case("sum_f32_axes02_keep", lambda: red(ReduceSumOp, (8, 16, 32), "f32", [0, 2], True)),
    Case("sum_f32_all", lambda: red(ReduceSumOp, (37, 1000), "f32", [0, 1])),
    Case("sum_f16_long", lambda: red(ReduceSumOp, (64, 1000), "f16", [-1])),
    Case("sum_bf16_axes12", lambda: red(ReduceSumOp, (5, 6, 7), "bf16", [1, 2])),
    Case("sum_i32_wrap", lambda: red(ReduceSumOp, (4, 700), "i32", [-1])),
    Case("sum_i64_axes01", lambda: red(ReduceSumOp, (9, 10, 3), "i64", [0, 1])),
    Case("sum_f32_tiny_rows", lambda: red(ReduceSumOp, (100, 4), "f32", [1])),
    Case("sum_f32_empty", lambda: red(ReduceSumOp, (4, 0), "f32", [1])),
    Case("sum_i32_size1", lambda: red(ReduceSumOp, (3, 1, 5), "i32", [1], True)),
    # reduce_mean (floats only)
    Case("mean_f32_axis1", lambda: red(ReduceMeanOp, (3, 5, 7), "f32", [1])),
    Case("mean_f16_long", lambda: red(ReduceMeanOp, (16, 4096), "f16", [-1])),
    Case("mean_bf16_all_keep", lambda: red(ReduceMeanOp, (6, 7), "bf16", [0, 1], True)),
    # reduce_max
    Case("max_f32_axis2", lambda: red(ReduceMaxOp, (8, 16, 32), "f32", [2])),
    Case("max_i32_axis0", lambda: red(ReduceMaxOp, (33, 5), "i32", [0])),
    Case("max_i64_long", lambda: red(ReduceMaxOp, (5, 3000), "i64", [-1])),
    Case("max_f16_axes02", lambda: red(ReduceMaxOp, (4, 3, 50), "f16", [0, 2])),
    Case("max_bf16_axis1_keep", lambda: red(ReduceMaxOp, (2, 3, 4), "bf16", [1], True)),
    Case("max_i32_empty", lambda: red(ReduceMaxOp, (3, 0), "i32", [1])),
    Case("max_f32_empty", lambda: red(ReduceMaxOp, (0, 3), "f32", [0])),
    # softmax: last / first / middle axis, cached rows (warp and block), rows longer than shared memory
    Case("softmax_f32_last", lambda: softmax((8, 100), "f32", -1)),
    Case("softmax_f32_axis0", lambda: softmax((50, 6), "f32", 0)),
    Case("softmax_f16_middle", lambda: softmax((4, 1000, 3), "f16", 1)),
    Case("softmax_bf16_block", lambda: softmax((2, 3000), "bf16", -1)),
    Case("softmax_f32_50304", lambda: softmax((3, 50304), "f32", -1)),
    Case("softmax_f16_1m", lambda: softmax((1, 1_000_000), "f16", -1)),
    # layernorm over 1 and 2 trailing axes
    Case("layernorm_f32_1", lambda: layernorm((16, 64), "f32", 1)),
    Case("layernorm_f16_2", lambda: layernorm((4, 8, 96), "f16", 2)),
    Case("layernorm_bf16_block", lambda: layernorm((3, 2000), "bf16", 1)),
    Case("layernorm_f32_reread", lambda: layernorm((2, 20000), "f32", 1)),
    # cross-entropy: none / sum / mean, i32 and i64 labels, short (warp) and long (block) rows
    Case("xent_none_i32", lambda: xent((16, 10), "f32", "i32", "none")),
    Case("xent_none_i64_block", lambda: xent((64, 2000), "f32", "i64", "none")),
    Case("xent_none_bf16_3d", lambda: xent((2, 3, 40), "bf16", "i32", "none")),
    Case("xent_sum_i64", lambda: xent((32, 100), "f16", "i64", "sum")),
    Case("xent_sum_i32_3d", lambda: xent((3, 4, 7), "f32", "i32", "sum")),
    Case("xent_mean_i32_block", lambda: xent((8, 1000), "bf16", "i32", "mean")),
    Case("xent_mean_i64_50304", lambda: xent((6, 50304), "f32", "i64", "mean")),
    Case("xent_mean_many_rows", lambda: xent((3000, 12), "f32", "i32", "mean")),
]


def emit(case: Case, index: int = 0) -> tuple[Operation, Kernel]:
    op = case.build()
    return op, EMITTERS[op.name](f"k{index}_{case.label}", op)


def inputs_for(op: Operation, seed: int) -> list[np.ndarray]:
    """Random operands: normal floats, integers large enough that i32 sums wrap, labels in range."""
    rng = np.random.default_rng(seed)
    out = []
    for i, v in enumerate(op.operands):
        shape, dt = to_tt(v.type)
        npdt = dtypes.numpy_dtype(dt)
        if isinstance(op, CrossEntropyOp) and i == 1:
            classes = to_tt(op.operands[0].type)[0][-1]
            out.append(rng.integers(0, classes, shape).astype(npdt))
        elif dt in ("i32", "i64"):
            hi = 2**30 if dt == "i32" else 2**62
            out.append(rng.integers(-hi, hi, shape, dtype=np.int64).astype(npdt))
        else:
            scale = 3.0 if isinstance(op, CrossEntropyOp) else 1.0
            out.append((scale * rng.standard_normal(shape)).astype(npdt))
    return out


# ----------------------------------------------------------------------------------------------- geometry
def test_parameters_out_then_operands():
    k = layernorm_kernel("ln", layernorm((4, 8), "f16", 1))
    assert [(p.name, p.ctype, p.const) for p in k.params] == [
        ("out", "__half", False), ("in0", "__half", True), ("in1", "__half", True), ("in2", "__half", True)]
    k = cross_entropy_kernel("ce", xent((4, 8), "f32", "i64", "mean"))
    assert [(p.name, p.ctype, p.const) for p in k.params] == [
        ("out", "float", False), ("in0", "float", True), ("in1", "long long", True)]


def test_reduce_geometry():
    # Innermost axis reduced, long rows: a block per output element.
    k = reduce_kernel("a", red(ReduceSumOp, (20, 600), "f32", [-1]))
    assert k.grid == (20, 1, 1) and k.block == (128, 1, 1) and k.max_threads == 128
    assert "fir_block_sum<float>" in render_kernel(k)
    k = reduce_kernel("a", red(ReduceSumOp, (3, 100000), "i64", [-1]))
    assert k.grid == (3, 1, 1) and k.block == (1024, 1, 1)
    assert "fir_block_sum<long long>" in render_kernel(k)
    # Short rows: a warp per output element, 8 per block.
    k = reduce_kernel("b", red(ReduceMaxOp, (100, 64), "f32", [1]))
    assert k.grid == (13, 1, 1) and k.block == (256, 1, 1)
    assert "fir_warp_max" in render_kernel(k) and "__syncthreads" not in render_kernel(k)
    # Innermost axis kept: a thread per output element.
    k = reduce_kernel("c", red(ReduceSumOp, (1000, 600), "f32", [0]))
    assert k.grid == (3, 1, 1) and k.block == (256, 1, 1) and "fir_warp" not in render_kernel(k)
    # Empty reductions need no loads.
    k = reduce_kernel("d", red(ReduceMaxOp, (7, 0), "i64", [1]))
    assert "in0[" not in render_kernel(k)


def test_softmax_geometry():
    k = softmax_kernel("a", softmax((64, 100), "f32", -1))  # warp per row, 8 rows cached per block
    assert k.grid == (8, 1, 1) and k.block == (256, 1, 1) and k.smem == 8 * 100 * 4
    k = softmax_kernel("b", softmax((4, 1000), "f16", -1))  # block per row, cached
    assert k.grid == (4, 1, 1) and k.block == (128, 1, 1) and k.smem == 4000
    k = softmax_kernel("c", softmax((3, 50304), "f32", -1))  # longer than 48 KiB: reread, no dynamic smem
    assert k.grid == (3, 1, 1) and k.block == (1024, 1, 1) and k.smem == 0
    k = softmax_kernel("d", softmax((10, 20, 30), "f32", 0))  # 600 rows of 10 at stride 600
    assert k.grid == (75, 1, 1)
    assert "* 600)" in render_kernel(k)


def test_cross_entropy_geometry():
    assert cross_entropy_kernel("a", xent((1000, 10), "f32", "i32", "none")).grid == (125, 1, 1)
    for shape in ((1000, 10), (3, 50304), (1, 5)):
        k = cross_entropy_kernel("b", xent(shape, "f32", "i32", "mean"))
        assert k.grid == (1, 1, 1)  # one launch, one block: a fixed summation order
    k = cross_entropy_kernel("c", xent((3, 7), "f32", "i32", "sum"))
    assert k.block == (96, 1, 1)
    assert "fir_fail(2)" in render_kernel(k)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_launch_limits(case: Case):
    _, k = emit(case)
    threads = k.block[0]
    assert k.block[1:] == (1, 1) and threads % 32 == 0 and 32 <= threads <= 1024
    assert k.max_threads == threads
    assert 1 <= k.grid[0] <= 65535 and k.grid[1:] == (1, 1)
    assert 0 <= k.smem <= SMEM_LIMIT


# ----------------------------------------------------------------------------------------------- nvcc
@needs_nvcc
def test_all_cases_compile_without_spills():
    kernels = [emit(c, i)[1] for i, c in enumerate(CASES)]
    reports = check_compiles(kernels)
    for k in kernels:
        assert reports[k.name].registers <= 65536 // k.threads()


# ----------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.label for c in CASES])
def test_matches_reference(index: int):
    op, k = emit(CASES[index], index)
    check_against_reference(op, k, inputs_for(op, index), run_kernel)


@pytest.mark.gpu
def test_softmax_non_finite_rows():
    op = softmax((4, 300), "f32", -1)
    x = np.random.default_rng(0).standard_normal((4, 300)).astype(np.float32)
    x[0, :] = -np.inf
    x[1, 7] = np.inf
    x[2, 9] = np.nan
    got = run_kernel(softmax_kernel("sm_nonfinite", op), (4, 300), np.float32, [x])
    assert_matches(got, evaluate(op.name, [x], op.attr_values(), (4, 300), np.float32), "f32")


@pytest.mark.gpu
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_cross_entropy_bad_label_is_nan(reduction: str):
    op = xent((4, 10), "f32", "i32", reduction)
    logits = np.random.default_rng(1).standard_normal((4, 10)).astype(np.float32)
    labels = np.array([1, 10, 3, -1], np.int32)
    shape = to_tt(op.results[0].type)[0]
    got = run_kernel(cross_entropy_kernel(f"ce_bad_{reduction}", op), shape, np.float32, [logits, labels])
    if reduction == "none":
        assert np.isnan(got[[1, 3]]).all() and np.isfinite(got[[0, 2]]).all()
    else:
        assert np.isnan(got).all()

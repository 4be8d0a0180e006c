"""The CUDA kernels of the elementwise (and fused), layout, source and transfer emitters: every case compiled by
nvcc in one translation unit without spills, and on a GPU run against fir.runtime.reference."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_util import check_against_reference, check_compiles, needs_nvcc, run_kernel

from fir.dialects import dtypes
from fir.codegen.kernels import kernel_for
from fir.codegen.transfer import box_copy_kernel, group_reduce_kernel
from fir.dialects.base import to_tt
from fir.syntax.frontend import make_context, parse_source
from fir.passes.fuse import FusePass
from fir.runtime.collectives import all_reduce
from fir.runtime.inputs import random_inputs

# Small programs whose every op (after fuse) becomes one kernel.
PROGRAMS = {
    "fused_bias_gelu_bf16": """func.func @f(%x: tensor<37x129xbf16>, %b: tensor<129xbf16>) -> tensor<37x129xbf16> {
  %h = flow.add %x, %b
  %g = flow.gelu %h
  %two = flow.fill {value = 2.0} : tensor<bf16>
  %y = flow.mul %g, %two
  func.return %y
}""",
    "fused_broadcast_middle": """func.func @f(%x: tensor<4x1x6xf32>, %y: tensor<5x1xf32>) -> tensor<4x5x6xf32> {
  %s = flow.sub %x, %y
  %e = flow.exp %s
  %m = flow.max %e, %x
  func.return %m
}""",
    "int_ops": """func.func @f(%x: tensor<64xi32>, %y: tensor<64xi32>) -> (tensor<64xi32>, tensor<64xi1>, tensor<64xf16>) {
  %a = flow.add %x, %y
  %n = flow.neg %a
  %r = flow.relu %n
  %b = flow.cast %r : tensor<64xi1>
  %f = flow.cast %y : tensor<64xf16>
  func.return %r, %b, %f
}""",
    "i64_mul": """func.func @f(%x: tensor<3x5xi64>, %y: tensor<5xi64>) -> tensor<3x5xi64> {
  %m = flow.mul %x, %y
  %mx = flow.min %m, %x
  func.return %mx
}""",
    "transposes": """func.func @f(%x: tensor<3x40x70xf32>) -> (tensor<70x3x40xf32>, tensor<40x3x70xf32>, tensor<3x70x40xf32>) {
  %a = flow.transpose %x {perm = [2, 0, 1]}
  %b = flow.transpose %x {perm = [1, 0, 2]}
  %c = flow.transpose %x {perm = [0, 2, 1]}
  func.return %a, %b, %c
}""",
    "layout": """func.func @f(%x: tensor<4x6x8xf16>, %i: tensor<2x3xi64>) -> (tensor<4x3x3xf16>, tensor<4x13x8xf16>, tensor<2x3x6x8xf16>, tensor<8x6x4xf16>) {
  %s = flow.slice %x {start = [0, 1, 2], limit = [4, 6, 8], stride = [1, 2, 2]}
  %y = flow.slice %x {start = [0, 0, 0], limit = [4, 1, 8]}
  %c = flow.concat %x, %y, %x {axis = 1}
  %g = flow.gather %x, %i {axis = 0}
  %r = flow.reshape %x : tensor<8x6x4xf16>
  func.return %s, %c, %g, %r
}""",
    "backward": """func.func @f(%u: tensor<9x7xf32>, %i: tensor<9xi32>, %v: tensor<2x3x4x5xbf16>, %j: tensor<3x4xi64>, %x: tensor<6x7xf32>) -> (tensor<5x7xf32>, tensor<2x6x5xbf16>, tensor<6x7xi1>, tensor<6x7xi1>, tensor<6x7xf32>) {
  %s = flow.scatter_add %u, %i : tensor<5x7xf32>
  %t = flow.scatter_add %v, %j {axis = 1} : tensor<2x6x5xbf16>
  %z = flow.fill {value = 0.0} : tensor<f32>
  %g = flow.greater %x, %z
  %e = flow.equal %x, %x
  %r = flow.erf %x
  func.return %s, %t, %g, %e, %r
}""",
    "sources": """func.func @f(%x: tensor<3x4xf32>) -> (tensor<3x4xf32>, tensor<3x4xi32>, tensor<2x2xi1>) {
  %c = flow.constant {value = [[1.0, -2.5, 3.0, 0.0], [1e30, -0.0, 7.0, 8.0], [3.5, -4.0, 5.0, 1.0]]} : tensor<3x4xf32>
  %s = flow.add %x, %c
  %io = flow.iota {axis = 1} : tensor<3x4xi32>
  %b = flow.constant {value = [[true, false], [false, true]]} : tensor<2x2xi1>
  func.return %s, %io, %b
}""",
}


def cases():
    """(label, op, kernel) for every op of every program after fuse."""
    out = []
    for name, text in PROGRAMS.items():
        module = parse_source(text, f"{name}.fir")
        FusePass().apply(make_context(), module)
        func = next(iter(module.ops))
        for k, op in enumerate(o for o in func.body.block.ops if o.name != "func.return"):
            out.append((f"{name}.{k}", op, kernel_for(f"{name}_{k}", op)))
    return out


def test_every_op_gets_a_kernel_with_its_operands():
    for label, op, kernel in cases():
        assert [p.name for p in kernel.params] == ["out", *(f"in{i}" for i in range(len(op.operands)))], label
        assert kernel.threads() <= 1024 and all(g >= 1 for g in kernel.grid), label


def test_fused_programs_fuse():
    names = [op.name for label, op, _ in cases() if label.startswith("fused")]
    assert names == ["flow.fused", "flow.fused"]


def transfer_kernels():
    return [box_copy_kernel("copy_box", "bf16", (4, 6, 8), (1, 2, 0), (3, 4, 9), (0, 0, 1), (3, 4, 8)),
            group_reduce_kernel("reduce_bf16", "bf16", 1000, 3, "sum"),
            group_reduce_kernel("reduce_i32", "i32", 10, 4, "max")]


@needs_nvcc
def test_kernels_compile_without_spills():
    check_compiles([k for _, _, k in cases()] + transfer_kernels())


@pytest.mark.gpu
@pytest.mark.parametrize("label", [c[0] for c in cases()])
def test_kernel_on_the_gpu(label: str):
    _, op, kernel = next(c for c in cases() if c[0] == label)
    func = op.parent_op()
    args_of = dict(zip(func.body.block.args, random_inputs(func, 3)))
    rng = np.random.default_rng(5)
    # An operand made by an earlier op of the program gets random data of its type.
    args = [args_of[v] if v in args_of else
            rng.standard_normal(to_tt(v.type)[0]).astype(dtypes.numpy_dtype(to_tt(v.type)[1])) for v in op.operands]
    check_against_reference(op, kernel, args, run_kernel)


@pytest.mark.gpu
def test_transfer_kernels_on_the_gpu():
    copy, red, _ = transfer_kernels()
    rng = np.random.default_rng(0)
    bf16 = dtypes.numpy_dtype("bf16")
    src = rng.standard_normal((4, 6, 8)).astype(bf16)
    got = run_kernel(copy, (3, 4, 9), bf16, [src])  # untouched elements keep the zeros run_kernel starts with
    want = np.zeros((3, 4, 9), bf16)
    want[0:3, 0:4, 1:9] = src[1:4, 2:6, 0:8]
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))
    xs = [rng.standard_normal(1000).astype(bf16) for _ in range(3)]
    got = run_kernel(red, (1000,), bf16, xs)
    np.testing.assert_array_equal(got.astype(np.float32), all_reduce(xs, "sum")[0].astype(np.float32))

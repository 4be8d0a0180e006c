"""The CUDA backend on a GPU: every example, on one device and on several virtual devices sharing the GPU, and
every flow op, against the numpy reference. Skipped without pycuda and a CUDA device (see conftest.py)."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from fir.compile import compile_plan
from fir.dialects.dtypes import TOLERANCE, dtype_name
from fir.syntax.frontend import parse_source
from fir.runtime.inputs import random_inputs
from fir.runtime.interpreter import find_function, run_function

HERE = os.path.dirname(__file__)
# The examples, and a program whose SPMD plans launch kernels with each device's coordinate and piece start.
EXAMPLES = sorted(glob.glob(os.path.join(HERE, "..", "examples", "*.fir"))) + \
    [os.path.join(HERE, "data", "spmd_positions.fir")]

pytestmark = pytest.mark.gpu


def _check(got, want, func) -> None:
    for g, w, t in zip(got, want, func.function_type.outputs.data):
        rtol, atol = TOLERANCE[dtype_name(t.element_type)]
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64), rtol=rtol * 10,
                                   atol=atol * 10)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: os.path.basename(p))
def test_example_on_the_gpu(path: str):
    from fir.runtime.cuda_backend import execute_plan_cuda

    with open(path, encoding="utf-8") as f:
        text = f.read()
    module = parse_source(text, os.path.basename(path))
    func = find_function(module, None)
    inputs = random_inputs(func, 0)
    want = run_function(module, func, inputs)
    for micro in ((1, 2) if "microbatch" in text else (1,)):
        for expand in (False, True):  # SPMD plans (what fir-run runs), and every device's expanded plan
            planned = compile_plan(module, microbatches=micro, expand=expand)
            _check(execute_plan_cuda(planned, func.sym_name.data, inputs).outputs, want, func)


SINGLE_OPS = {
    "elementwise": """func.func @f(%x: tensor<37x129xbf16>, %b: tensor<129xbf16>) -> tensor<37x129xbf16> {
  %h = flow.add %x, %b
  %g = flow.gelu %h
  %e = flow.exp %g
  func.return %e
}""",
    "matmul_f32": """func.func @f(%a: tensor<3x65x33xf32>, %b: tensor<33x17xf32>) -> tensor<3x65x17xf32> {
  %c = flow.matmul %a, %b
  func.return %c
}""",
    "matmul_bf16_t": """func.func @f(%a: tensor<96x130xbf16>, %b: tensor<70x130xbf16>) -> tensor<96x70xbf16> {
  %c = flow.matmul %a, %b {transpose_b = true}
  func.return %c
}""",
    "norms": """func.func @f(%x: tensor<8x300xf32>, %g: tensor<300xf32>, %b: tensor<300xf32>) -> (tensor<8x300xf32>, tensor<8x300xf32>, tensor<300xf32>) {
  %s = flow.softmax %x
  %l = flow.layernorm %x, %g, %b
  %r = flow.reduce_sum %x {axes = [0]}
  func.return %s, %l, %r
}""",
    "layout": """func.func @f(%x: tensor<4x6x8xf32>, %i: tensor<5xi32>) -> (tensor<8x4x6xf32>, tensor<4x3x8xf32>, tensor<5x6x8xf32>, tensor<4x12x8xf32>) {
  %t = flow.transpose %x {perm = [2, 0, 1]}
  %s = flow.slice %x {start = [0, 0, 0], limit = [4, 6, 8], stride = [1, 2, 1]}
  %g = flow.gather %x, %i {axis = 0}
  %c = flow.concat %x, %x {axis = 1}
  func.return %t, %s, %g, %c
}""",
}


@pytest.mark.parametrize("name", sorted(SINGLE_OPS))
def test_ops_on_the_gpu(name: str):
    from fir.runtime.cuda_backend import execute_plan_cuda

    module = parse_source(SINGLE_OPS[name], f"{name}.fir")
    func = find_function(module, None)
    inputs = random_inputs(func, 1)
    want = run_function(module, func, inputs)
    _check(execute_plan_cuda(compile_plan(module), func.sym_name.data, inputs).outputs, want, func)

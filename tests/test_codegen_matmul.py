"""The CUDA kernel of flow.matmul (fir.codegen.matmul): launch geometry in pure Python, every case compiled by
nvcc in one translation unit (no spills), and, on a GPU, each case run and compared with fir.runtime.reference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from xdsl.ir import Block

from fir.dialects import dtypes
from fir.codegen.kernel_ir import Kernel, render_kernel
from fir.codegen.matmul import matmul_kernel, problem_of
from fir.dialects.base import to_tt
from fir.dialects.flow import MatmulOp
from cuda_util import check_against_reference, check_compiles, needs_nvcc, run_kernel


def mm(a: tuple[int, ...], b: tuple[int, ...], dt: str, ta: bool = False, tb: bool = False) -> MatmulOp:
    args = list(Block(arg_types=[dtypes.tensor_type(a, dt), dtypes.tensor_type(b, dt)]).args)
    return MatmulOp.make(args, transpose_a=ta, transpose_b=tb)


def mnk(m: int, n: int, k: int, dt: str, ta: bool = False, tb: bool = False) -> MatmulOp:
    """An M x K @ K x N matmul, the operands stored transposed where asked."""
    return mm((k, m) if ta else (m, k), (n, k) if tb else (k, n), dt, ta, tb)


@dataclass(frozen=True)
class Case:
    label: str
    a: tuple[int, ...]
    b: tuple[int, ...]
    dt: str
    ta: bool = False
    tb: bool = False

    def op(self) -> MatmulOp:
        return mm(self.a, self.b, self.dt, self.ta, self.tb)


def _mnk_case(label: str, m: int, n: int, k: int, dt: str, ta: bool = False, tb: bool = False) -> Case:
    return Case(label, (k, m) if ta else (m, k), (n, k) if tb else (k, n), dt, ta, tb)


CASES: list[Case] = []
for _dt in ("f32", "f16", "bf16", "i32", "i64"):
    CASES += [
        _mnk_case(f"{_dt}_1x1x1", 1, 1, 1, _dt),
        _mnk_case(f"{_dt}_3x5x7", 3, 5, 7, _dt),
        _mnk_case(f"{_dt}_17x33x65_ta", 17, 33, 65, _dt, ta=True),
        _mnk_case(f"{_dt}_17x33x65_tb", 17, 33, 65, _dt, tb=True),
        _mnk_case(f"{_dt}_130x257x31", 130, 257, 31, _dt),
        _mnk_case(f"{_dt}_130x257x31_ta_tb", 130, 257, 31, _dt, ta=True, tb=True),
        _mnk_case(f"{_dt}_k0", 4, 5, 0, _dt),
        Case(f"{_dt}_batch_bcast_rhs", (3, 20, 9), (9, 18), _dt),
        Case(f"{_dt}_batch_bcast_both", (2, 1, 20, 9), (1, 3, 18, 9), _dt, tb=True),
    ]
CASES += [
    # Enough output tiles for the large tile shapes (128x128), with ragged edges and transposes.
    _mnk_case("f32_large_ragged", 1500, 1700, 70, "f32", ta=True),
    _mnk_case("bf16_large_ragged", 1700, 1500, 70, "bf16", tb=True),
    _mnk_case("f16_large_batched", 256, 256, 64, "f16", ta=True, tb=True),
    Case("f32_batch_lhs_only", (6, 64), (4, 64, 32), "f32"),
    Case("i64_empty_batch", (0, 3, 4), (4, 5), "i64"),
    _mnk_case("f32_4096", 4096, 4096, 4096, "f32"),
    _mnk_case("bf16_4096", 4096, 4096, 4096, "bf16"),
]


def emit(case: Case, index: int = 0) -> tuple[MatmulOp, Kernel]:
    op = case.op()
    return op, matmul_kernel(f"mm{index}_{case.label}", op)


def inputs_for(op: MatmulOp, seed: int) -> list[np.ndarray]:
    """Random operands: integers large enough that products and sums wrap; floats normal, or in [0, 1) for
    long contractions (no cancellation, so the f32 tolerance holds whatever the summation order)."""
    rng = np.random.default_rng(seed)
    long_k = problem_of(op).k >= 512
    out = []
    for v in op.operands:
        shape, dt = to_tt(v.type)
        npdt = dtypes.numpy_dtype(dt)
        if dt in ("i32", "i64"):
            hi = 2**30 if dt == "i32" else 2**62
            out.append(rng.integers(-hi, hi, shape, dtype=np.int64).astype(npdt))
        elif long_k:
            out.append(rng.random(shape, dtype=np.float32).astype(npdt))
        else:
            out.append(rng.standard_normal(shape, dtype=np.float32).astype(npdt))
    return out


# ----------------------------------------------------------------------------------------------- geometry
def test_parameters_out_then_operands():
    for dt, ctype in (("f32", "float"), ("bf16", "__nv_bfloat16"), ("i64", "long long")):
        k = matmul_kernel("k", mnk(3, 5, 7, dt))
        assert [(p.name, p.ctype, p.const) for p in k.params] == [
            ("out", ctype, False), ("in0", ctype, True), ("in1", ctype, True)]


def test_f32_geometry():
    k = matmul_kernel("a", mnk(4096, 4096, 4096, "f32"))  # 128x128 tiles, 8x8 outputs per thread
    assert k.grid == (32, 32, 1) and k.block == (256, 1, 1) and k.max_threads == 256 and k.smem == 0
    src = render_kernel(k)
    assert "float4" in src and " ? " not in src and "if (" not in src  # tiles divide every axis: no bounds checks
    k = matmul_kernel("b", mnk(130, 257, 31, "f32"))  # few tiles: 64x64 tiles, 4x4 per thread
    assert k.grid == (3, 5, 1) and k.block == (256, 1, 1)
    assert " ? " in render_kernel(k)


def test_wmma_geometry():
    k = matmul_kernel("a", mnk(4096, 4096, 4096, "bf16"))  # 128x128 tiles, 8 warps
    assert k.grid == (32, 32, 1) and k.block == (256, 1, 1) and k.max_threads == 256
    src = render_kernel(k)
    assert "wmma::mma_sync" in src and "fir_st<__nv_bfloat16>" in src and "col_major" not in src
    k = matmul_kernel("b", mnk(130, 257, 31, "f16", ta=True, tb=True))  # 64x64 tiles, 4 warps
    assert k.grid == (3, 5, 1) and k.block == (128, 1, 1) and k.max_threads == 128
    src = render_kernel(k)
    assert "__half, wmma::col_major> fa" in src and "__half, wmma::col_major> fb" in src


def test_integer_geometry():
    k = matmul_kernel("a", mnk(100, 200, 300, "i32"))
    assert k.grid == (2, 4, 1) and k.block == (256, 1, 1)
    assert "fir_add" in render_kernel(k) and "fir_mul" in render_kernel(k)


def test_batch_geometry():
    k = matmul_kernel("a", mm((2, 1, 20, 9), (1, 3, 9, 18), "f32"))
    assert k.grid == (1, 1, 6)
    src = render_kernel(k)
    assert "blockIdx.z" in src and "gridDim.z" in src
    k = matmul_kernel("b", mm((70000, 2, 3), (3, 4), "f32"))  # more matrices than grid.z: blocks stride
    assert k.grid == (1, 1, 65535)
    k = matmul_kernel("c", mnk(8, 8, 8, "f32"))  # no batch, no loop over it
    assert "blockIdx.z" not in render_kernel(k)


def test_empty_and_unlaunchable():
    k = matmul_kernel("a", mm((0, 3, 4), (4, 5), "f32"))
    assert k.grid == (1, 1, 1) and "out" not in render_kernel(k).split("{", 1)[1]
    k = matmul_kernel("b", mnk(4, 5, 0, "f16"))  # K = 0: zeros, through the same kernel
    assert k.grid == (1, 1, 1) and "out_w[" in render_kernel(k)
    with pytest.raises(ValueError, match="65535"):
        matmul_kernel("c", mnk(1, 65536 * 128, 1, "f32"))


# ----------------------------------------------------------------------------------------------- nvcc
@needs_nvcc
def test_all_cases_compile_without_spills():
    kernels = [emit(c, i)[1] for i, c in enumerate(CASES)]
    reports = check_compiles(kernels)
    for k in kernels:
        assert reports[k.name].registers <= min(255, 65536 // k.threads())


# ----------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.label for c in CASES])
def test_matches_reference(index: int):
    op, k = emit(CASES[index], index)
    check_against_reference(op, k, inputs_for(op, index), run_kernel)

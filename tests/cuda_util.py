"""Run one generated kernel on a GPU through pycuda (GPU tests only) and compile kernels with nvcc."""

from __future__ import annotations

import numpy as np
import pytest

from fir.codegen.kernel_ir import Kernel
from fir.dialects.base import to_tt
from fir.dialects.dtypes import TOLERANCE, numpy_dtype
from fir.runtime.interpreter import evaluate_op
from fir.codegen.nvcc import ARCH, KernelReport, compile_cuda, find_nvcc
from fir.codegen.source import translation_unit

needs_nvcc = pytest.mark.skipif(find_nvcc() is None, reason="nvcc not found (no CUDA toolkit on this machine)")


def check_compiles(kernels: list[Kernel]) -> dict[str, KernelReport]:
    """Compile the kernels in one translation unit for sm_90; fail on a spill or a missing kernel."""
    reports = compile_cuda(translation_unit(kernels), ARCH)
    for k in kernels:
        assert k.name in reports, f"ptxas said nothing of {k.name}"
        r = reports[k.name]
        assert r.spill_stores == 0 and r.spill_loads == 0, f"{k.name} spills: {r}"
        assert r.shared_bytes + k.smem <= 227 * 1024, f"{k.name} needs too much shared memory: {r}, dynamic {k.smem}"
    return reports


def run_kernel(kernel: Kernel, out_shape: tuple[int, ...], out_dtype: np.dtype, inputs: list[np.ndarray]) -> np.ndarray:
    """Launch one kernel (parameters: out, then the inputs) on the GPU and return its output."""
    pytest.importorskip("pycuda")
    import pycuda.autoprimaryctx  # noqa: F401  (the primary context)
    import pycuda.driver as drv
    from pycuda.compiler import SourceModule

    mod = SourceModule(translation_unit([kernel]), no_extern_c=True, arch=ARCH, options=["-std=c++17"])
    fn = mod.get_function(kernel.name)
    out = np.zeros(out_shape, out_dtype)
    bufs = [drv.mem_alloc(max(1, out.nbytes))]
    if out.nbytes:
        drv.memcpy_htod(bufs[0], out)  # zeros: what a kernel leaves untouched reads back as 0
    for x in inputs:
        x = np.ascontiguousarray(x)
        b = drv.mem_alloc(max(1, x.nbytes))
        if x.nbytes:
            drv.memcpy_htod(b, x)
        bufs.append(b)
    if kernel.smem > 48 * 1024:
        fn.set_attribute(drv.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, kernel.smem)
    fn(*bufs, grid=kernel.grid, block=kernel.block, shared=kernel.smem)
    drv.Context.synchronize()
    if out.nbytes:
        drv.memcpy_dtoh(out, bufs[0])
    return out


def assert_matches(got: np.ndarray, want: np.ndarray, dt: str) -> None:
    """A kernel's output against the reference: integers exactly, floats within the dtype's tolerance (NaN where
    the reference has NaN)."""
    rtol, atol = TOLERANCE[dt]
    if dt in ("i32", "i64", "i1"):
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol,
                                   equal_nan=True)


def check_against_reference(op, kernel: Kernel, inputs: list[np.ndarray], run=None) -> None:
    """Run `kernel` (by `run`: run_kernel by default; the CPU emulator tests substitute their own) on the inputs
    and compare with fir.runtime.interpreter.evaluate_op of its op."""
    shape, dt = to_tt(op.results[0].type)
    got = (run or run_kernel)(kernel, shape, numpy_dtype(dt), inputs)
    assert_matches(got, evaluate_op(op, inputs), dt)

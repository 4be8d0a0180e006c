"""fir-run's CUDA backend: execute a program's plans on one GPU through pycuda.

The plans are SPMD plans (one per class of devices) or per-device plans; an SPMD plan's translation unit is
compiled once for its class, and each device's launches carry its own scalar arguments (coordinates, piece
starts). Every virtual device gets one arena (a single allocation of its plan's `arena_size`) on the GPU, and its
streams become pycuda streams; the actions fir.runtime.gpu_actions lowers the plans to are issued in order:
kernels launched with the geometry and shared memory the plan gives, host copies asynchronous from page-locked
buffers, collectives and send/recv between virtual devices as device-to-device box copies and reduction
kernels, and events between streams. The host never waits in between: one synchronisation at the end, then
`fir_status` of every module is read (a gather index or label out of range is an error, as on numpy).

pycuda is imported only here, when the backend is used: `import fir` and the numpy path never need it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from fir.codegen.kernel_ir import Kernel
from fir.codegen.prelude import STATUS_EMPTY_MEAN, STATUS_INDEX_OUT_OF_RANGE, STATUS_LABEL_OUT_OF_RANGE
from fir.codegen.source import translation_unit
from fir.syntax.diagnostics import FirError
from fir.dialects.dtypes import numpy_dtype
from fir.dialects.sbp import meshes_of
from fir.runtime.gpu_actions import (BoxCopy, DeviceToHost, GroupReduce, HostToDevice, LaunchOp, Lowered, Record,
                                     Wait, lower, returned_values)
from fir.runtime.plan_executor import device_inputs, logical_outputs

_STATUS = {STATUS_INDEX_OUT_OF_RANGE: "flow.gather: an index is out of range",
           STATUS_LABEL_OUT_OF_RANGE: "flow.cross_entropy: a label is out of range",
           STATUS_EMPTY_MEAN: "a mean over no elements (flow.reduce_mean or flow.cross_entropy)"}


def _pycuda():
    try:
        import pycuda.autoprimaryctx  # noqa: F401  (the primary context, shared with NCCL and other libraries)
        import pycuda.driver as drv
        from pycuda.compiler import SourceModule
    except ImportError as e:
        raise FirError(f"--backend cuda needs pycuda ({e}); install it with pip install '.[cuda]' on a GPU host") \
            from None
    except Exception as e:  # pycuda is there but no driver or device
        raise FirError(f"--backend cuda: no usable CUDA device ({e})") from None
    return drv, SourceModule


@dataclass
class CudaRun:
    """What one execution on the GPU produced."""

    outputs: list[np.ndarray]
    seconds: float  # wall time of issuing and running the step (host copies included), after compilation
    arena_size: dict[int, int] = field(default_factory=dict)
    kernels: int = 0


class _Compiled:
    """The pycuda modules of a lowered program: one per distinct translation unit, plus the transfer kernels."""

    def __init__(self, lowered: Lowered, drv: Any, source_module: Any, arch: str):
        self.modules: list[Any] = []
        self.functions: dict[tuple[int, str], Any] = {}  # (device or -1, kernel name) -> prepared function
        by_source: dict[str, Any] = {}
        for d, code in lowered.codes.items():
            src = code.source()
            if src not in by_source:
                by_source[src] = source_module(src, no_extern_c=True, arch=arch, options=["-std=c++17"])
                self.modules.append(by_source[src])
            for k in code.kernels:
                self.functions[(d, k.name)] = self._prepare(by_source[src], k, drv)
        # Box copies and reductions, one kernel per distinct one.
        self.transfer: dict[Any, tuple[str, Kernel]] = {}
        for a in lowered.actions:
            if isinstance(a, (BoxCopy, GroupReduce)):
                key = _transfer_key(a)
                if key not in self.transfer:
                    name = f"fir_transfer_{len(self.transfer)}"
                    self.transfer[key] = (name, a.kernel(name))
        if self.transfer:
            kernels = [k for _, k in self.transfer.values()]
            mod = source_module(translation_unit(kernels), no_extern_c=True, arch=arch, options=["-std=c++17"])
            self.modules.append(mod)
            for name, k in self.transfer.values():
                self.functions[(-1, name)] = self._prepare(mod, k, drv)

    @staticmethod
    def _prepare(mod: Any, k: Kernel, drv: Any) -> Any:
        fn = mod.get_function(k.name)
        fn.prepare("".join("q" if p.scalar else "P" for p in k.params))  # scalars: 64-bit, by value
        if k.smem > 48 * 1024:  # dynamic shared memory beyond 48 KiB is opt-in
            fn.set_attribute(drv.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, k.smem)
        return fn


def _transfer_key(a: BoxCopy | GroupReduce) -> tuple:
    if isinstance(a, BoxCopy):
        return ("copy", a.src.shape, a.src.dtype, a.src_start, a.dst.shape, a.dst_start, a.box)
    return ("reduce", a.out.shape, a.out.dtype, len(a.ins), a.op)


class CudaExecutable:
    """A program's plans compiled and allocated on GPU 0, ready to run steps."""

    def __init__(self, module: ModuleOp, entry: str, inputs: list[np.ndarray], n_devices: int | None = None):
        drv, source_module = _pycuda()
        self.drv = drv
        self.module, self.entry = module, entry
        self.plans, self.partitioned, self.device_args = device_inputs(module, entry, inputs, n_devices)
        self.lowered = lower(self.plans, meshes_of(module))
        major, minor = drv.Context.get_device().compute_capability()
        self.compiled = _Compiled(self.lowered, drv, source_module, f"sm_{major}{minor}")
        sizes = {d: max(1, code.arena_size) for d, code in self.lowered.codes.items()}
        sizes.update({-1 - k: max(1, n) for k, n in enumerate(self.lowered.scratch)})
        self.spaces: dict[int, Any] = {space: drv.mem_alloc(n) for space, n in sizes.items()}
        for space, n in sizes.items():  # poison, as the numpy backend does: a wrong plan shows as NaN
            drv.memset_d8(self.spaces[space], 0xFF, n)
        self.streams: dict[tuple[int, str], Any] = {}
        self.events = [drv.Event() for _ in range(self.lowered.events)]
        # Page-locked host buffers for every copy, filled before any step.
        self.staged: dict[int, Any] = {}
        for i, a in enumerate(self.lowered.actions):
            if isinstance(a, HostToDevice):
                x = self.device_args[a.stream[0]][a.arg]
                if a.box is not None:
                    x = x[tuple(slice(s, e) for s, e in a.box)]
                # Staged as bytes: page-locked arrays of ml_dtypes' bfloat16 are not needed that way.
                buf = drv.pagelocked_empty(max(1, x.nbytes), np.uint8)
                buf[:x.nbytes] = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
                self.staged[i] = buf
            elif isinstance(a, DeviceToHost):
                self.staged[i] = drv.pagelocked_empty(max(1, a.src.nbytes()), np.uint8)

    def _ptr(self, b) -> int:
        return int(self.spaces[b.space]) + b.offset

    def _stream(self, key: tuple[int, str]) -> Any:
        if key not in self.streams:
            self.streams[key] = self.drv.Stream()
        return self.streams[key]

    def issue(self, copies: bool = True) -> None:
        """Issue one step's actions without waiting; copies=False leaves out the host copies (the arenas keep
        the inputs of an earlier step), to time the device work alone."""
        drv = self.drv
        for i, a in enumerate(self.lowered.actions):
            s = self._stream(a.stream)
            if isinstance(a, LaunchOp):
                ln = a.launch
                fn = self.compiled.functions[(a.stream[0], ln.kernel)]
                fn.prepared_async_call(ln.grid, ln.block, s, *(self._ptr(b) for b in a.bufs), *a.values,
                                       shared_size=ln.smem)
            elif isinstance(a, HostToDevice):
                if copies and a.dst.nbytes():
                    drv.memcpy_htod_async(self._ptr(a.dst), self.staged[i], s)
            elif isinstance(a, DeviceToHost):
                if copies and a.src.nbytes():
                    drv.memcpy_dtoh_async(self.staged[i], self._ptr(a.src), s)
            elif isinstance(a, (BoxCopy, GroupReduce)):
                name, k = self.compiled.transfer[_transfer_key(a)]
                bufs = (a.dst, a.src) if isinstance(a, BoxCopy) else (a.out, *a.ins)
                fn = self.compiled.functions[(-1, name)]
                fn.prepared_async_call(k.grid, k.block, s, *(self._ptr(b) for b in bufs), shared_size=k.smem)
            elif isinstance(a, Record):
                self.events[a.event].record(s)
            elif isinstance(a, Wait):
                s.wait_for_event(self.events[a.event])

    def step(self, copies: bool = True) -> float:
        """Run one step to completion; its wall time in seconds."""
        t0 = time.perf_counter()
        self.issue(copies)
        self.drv.Context.synchronize()
        return time.perf_counter() - t0

    def check_status(self) -> None:
        """Raise FirError when a kernel met bad input (fir_status of any module)."""
        for mod in self.compiled.modules:
            status_ptr, _ = mod.get_global("fir_status")
            status = np.zeros(1, np.int32)
            self.drv.memcpy_dtoh(status, status_ptr)
            if status[0]:
                raise FirError(_STATUS.get(int(status[0]), f"a kernel failed with status {int(status[0])}"))

    def outputs(self) -> list[np.ndarray]:
        """The logical results of the last step."""
        acts = self.lowered.actions
        host = {(a.stream[0], a.value): self.staged[i][:a.src.nbytes()].view(numpy_dtype(a.src.dtype)).reshape(a.src.shape).copy()
                for i, a in enumerate(acts) if isinstance(a, DeviceToHost)}
        outs = returned_values(self.lowered, host, self.device_args)
        return logical_outputs(self.module, self.entry, self.plans, self.partitioned, outs)


def execute_plan_cuda(module: ModuleOp, entry: str, inputs: list[np.ndarray], n_devices: int | None = None,
                      repeat: int = 1) -> CudaRun:
    """Run the plans of logical function @entry on the GPU (every virtual device on GPU 0); the logical results.
    With repeat > 1 the step runs that many times and `seconds` is the fastest."""
    exe = CudaExecutable(module, entry, inputs, n_devices)
    best = min(exe.step() for _ in range(max(1, repeat)))
    exe.check_status()
    codes = exe.lowered.codes
    return CudaRun(exe.outputs(), best, {d: c.arena_size for d, c in codes.items()},
                   sum(len(c.kernels) for c in codes.values()))

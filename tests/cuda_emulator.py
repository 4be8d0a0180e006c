"""Run generated CUDA kernels on the CPU: the real translation unit (fir.codegen.source.translation_unit) compiled
with g++ against tests/cuda_emu.h, which emulates the CUDA subset the emitters use (threads as fibers with
checked __syncthreads / warp barriers, shuffles, WMMA, f16 / bf16, dynamic shared memory poisoned with 0xFF).

`run_on_cpu` has the contract of tests/cuda_util.run_kernel (output zero-initialised); `run_many` compiles one
program for many launches and runs it once. A g++ failure, an emulator abort (deadlock, divergent barrier,
misaligned WMMA pointer), a stray write past a buffer or a sanitizer report raises EmulatorError with the
compiler's / program's output.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from fir.codegen.kernel_ir import Kernel, render_kernel
from fir.codegen.source import translation_unit

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "cuda_emu.h")
GXX = shutil.which("g++")

needs_gxx = pytest.mark.skipif(GXX is None, reason="g++ not found: the CUDA emulator compiles kernels with it")

# Flags of every emulator build. AddressSanitizer is on wherever g++ can link it (FIR_EMU_ASAN=0 turns it off,
# =1 insists on it): it costs about a third more time and catches any access past a buffer, a static shared array
# or the dynamic shared memory. Without it, canaries around each buffer still catch stray writes.
CXXFLAGS = ["-O1", "-std=c++17", "-fno-strict-aliasing", "-w"]
ASAN_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer"]
ASAN_OPTIONS = "detect_stack_use_after_return=0:detect_leaks=0:abort_on_error=0"

_INCLUDE = re.compile(r"^\s*#include\s*<(cuda[^>]*|mma\.h)>\s*$", re.M)
_DYNAMIC_SMEM = re.compile(r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([A-Za-z_][\w:]*(?:\s+[A-Za-z_][\w:]*)*?)"
                           r"\s+(\w+)\s*\[\s*\]\s*;")


class EmulatorError(RuntimeError):
    """g++ rejected the program, or a launch aborted (the message carries the compiler / emulator output)."""


Job = tuple[Kernel, Sequence[int], "np.dtype | type", Sequence[np.ndarray]]


@dataclass
class Outcome:
    """One job's result: the output and fir_status, or the error that stopped it."""

    output: np.ndarray | None
    status: int
    error: EmulatorError | None = None


def emulator_source(kernels: Sequence[Kernel]) -> str:
    """The translation unit of `kernels` for the emulator: CUDA headers replaced by cuda_emu.h, dynamic shared
    memory pointed at the launch's buffer, and a table of launch thunks plus main()."""
    tu = _INCLUDE.sub("", translation_unit(kernels))
    tu = _DYNAMIC_SMEM.sub(lambda m: f"{m.group(1)}* const {m.group(2)} = reinterpret_cast<{m.group(1)}*>"
                                     f"(emu_dynamic_smem);", tu)
    thunks, table = [], []
    for i, k in enumerate(kernels):
        # a scalar parameter's job buffer holds its value
        args = ", ".join(f"*(const {p.ctype}*)a[{j}]" if p.scalar else f"({'const ' if p.const else ''}{p.ctype}*)a[{j}]"
                         for j, p in enumerate(k.params))
        thunks.append(f"static void emu_thunk_{i}(void** a) {{ {k.name}({args}); }}")
        table.append(f'  {{"{k.name}", emu_thunk_{i}, {len(k.params)}}},')
    return "\n".join([
        '#include "cuda_emu.h"', tu, "// ----- emulator launch table", *thunks,
        "static const emu::KernelEntry emu_table[] = {", *table, '  {"", nullptr, 0}};',
        f"int main(int argc, char** argv) {{ return emu::run_jobs(argc, argv, emu_table, {len(kernels)}, "
        "&fir_status); }", ""])


@functools.cache
def asan_available() -> bool:
    """Whether g++ links -fsanitize=address programs here."""
    if GXX is None:
        return False
    with tempfile.TemporaryDirectory(prefix="asan_probe_") as d:
        src = os.path.join(d, "probe.cpp")
        with open(src, "w", encoding="utf-8") as f:
            f.write("int main() { return 0; }\n")
        r = subprocess.run([GXX, *ASAN_FLAGS, src, "-o", os.path.join(d, "probe")], capture_output=True)
        return r.returncode == 0 and subprocess.run([os.path.join(d, "probe")], capture_output=True).returncode == 0


def use_asan(sanitize: bool | None) -> bool:
    """sanitize as asked, else FIR_EMU_ASAN (0 / 1), else whether ASan is available."""
    if sanitize is not None:
        return sanitize
    env = os.environ.get("FIR_EMU_ASAN", "")
    if env:
        return env != "0"
    return asan_available()


# Compiled programs kept (by source hash) in the cache directory: the newest ones, the rest removed.
KEEP_PROGRAMS = 64


def _cache_dir() -> str:
    d = os.path.join(tempfile.gettempdir(), f"fir_cuda_emu_{os.getuid()}")
    os.makedirs(d, exist_ok=True)
    return d


def build(kernels: Sequence[Kernel], sanitize: bool = False) -> str:
    """Compile the emulator program of `kernels` (cached by source, header and flags); its path."""
    if GXX is None:
        raise EmulatorError("g++ not found")
    flags = CXXFLAGS + (ASAN_FLAGS if sanitize else [])
    src = emulator_source(kernels)
    with open(HEADER, encoding="utf-8") as f:
        header = f.read()
    key = hashlib.sha256("\0".join([src, header, *flags]).encode()).hexdigest()[:24]
    exe = os.path.join(_cache_dir(), f"emu_{key}")
    if os.path.exists(exe):
        return exe
    work = tempfile.mkdtemp(prefix="build_", dir=_cache_dir())
    try:
        cpp = os.path.join(work, "kernels.cpp")
        with open(cpp, "w", encoding="utf-8") as f:
            f.write(src)
        out = os.path.join(work, "prog")
        r = subprocess.run([GXX, *flags, "-I", HERE, cpp, "-o", out], capture_output=True, text=True)
        if r.returncode:
            raise EmulatorError(f"g++ failed on the emulator program ({cpp}):\n{r.stderr[-20000:]}")
        os.replace(out, exe)  # atomic: concurrent builds of one program agree
        _prune(os.path.dirname(exe))
    finally:
        if os.path.exists(os.path.join(work, "prog")):
            os.remove(os.path.join(work, "prog"))
        if not os.environ.get("FIR_EMU_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    return exe


def _prune(cache: str) -> None:
    progs = sorted((e for e in os.scandir(cache) if e.name.startswith("emu_")), key=lambda e: e.stat().st_mtime)
    for e in progs[:-KEEP_PROGRAMS]:
        try:
            os.remove(e.path)
        except OSError:
            pass


def _distinct_kernels(jobs: Sequence[Job]) -> list[Kernel]:
    kernels: dict[str, Kernel] = {}
    for k, *_ in jobs:
        seen = kernels.get(k.name)
        if seen is None:
            kernels[k.name] = k
        elif seen is not k and (render_kernel(seen) != render_kernel(k) or seen.helpers != k.helpers):
            raise ValueError(f"two different kernels are named {k.name}")
    return list(kernels.values())


def run_outcomes(jobs: Sequence[Job], sanitize: bool | None = None, timeout: float = 600.0) -> list[Outcome]:
    """Run every job (kernel, out_shape, out_dtype, inputs) in one emulator program; a job that aborts gets an
    Outcome with its error and the program goes on with the next job. g++ failures raise."""
    sanitize = use_asan(sanitize)
    exe = build(_distinct_kernels(jobs), sanitize)
    outcomes: list[Outcome | None] = [None] * len(jobs)
    with tempfile.TemporaryDirectory(prefix="run_", dir=_cache_dir()) as work:
        lines, out_paths = [], []
        for j, (k, out_shape, out_dtype, inputs) in enumerate(jobs):
            if len(inputs) + 1 != len(k.params):
                raise ValueError(f"{k.name} takes {len(k.params) - 1} inputs, given {len(inputs)}")
            nbytes = math.prod(out_shape) * np.dtype(out_dtype).itemsize
            out_paths.append(os.path.join(work, f"out{j}.bin"))
            bufs = [f"{nbytes} out{j}.bin"]  # paths relative to the run directory
            for i, x in enumerate(inputs):
                x = np.ascontiguousarray(x)
                x.tofile(os.path.join(work, f"in{j}_{i}.bin"))
                bufs.append(f"{x.nbytes} in{j}_{i}.bin")
            g, b = k.grid, k.block
            bound = k.max_threads or k.threads()  # what render_kernel writes in __launch_bounds__
            lines.append(f"{k.name} {g[0]} {g[1]} {g[2]} {b[0]} {b[1]} {b[2]} {k.smem} {bound} {len(bufs)} "
                         f"{' '.join(bufs)}")
        job_file = os.path.join(work, "jobs.txt")
        with open(job_file, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        env = {**os.environ, "ASAN_OPTIONS": ASAN_OPTIONS}
        first = 0
        while first < len(jobs):
            try:
                r = subprocess.run([exe, "jobs.txt", str(first)], capture_output=True, text=True, timeout=timeout,
                                   env=env, cwd=work)
            except subprocess.TimeoutExpired as e:
                raise EmulatorError(f"the emulator ran past {timeout} s (jobs from {first}; a kernel that never "
                                    f"ends?):\n{(e.stderr or b'')[-5000:]!r}") from None
            started = None
            for line in r.stdout.splitlines():
                parts = line.split()
                if parts[:1] == ["@@start"]:
                    started = int(parts[1])
                elif parts[:1] == ["@@done"]:
                    j, status = int(parts[1]), int(parts[2])
                    k, out_shape, out_dtype, _ = jobs[j]
                    out = np.fromfile(out_paths[j], dtype=np.dtype(out_dtype)).reshape(tuple(out_shape))
                    outcomes[j] = Outcome(out, status)
                    started = None
            if r.returncode == 0:
                break
            if started is None:
                raise EmulatorError(f"the emulator program failed outside any job (exit {r.returncode}):\n"
                                    f"{r.stderr[-20000:]}")
            k = jobs[started][0]
            outcomes[started] = Outcome(None, -1, EmulatorError(
                f"kernel {k.name} (grid {k.grid}, block {k.block}, smem {k.smem}) failed on the emulator "
                f"(exit {r.returncode}):\n{r.stderr[-20000:]}"))
            first = started + 1
    assert all(o is not None for o in outcomes)
    return outcomes  # type: ignore[return-value]


def run_many(jobs: Sequence[Job], sanitize: bool | None = None, timeout: float = 600.0) -> list[tuple[np.ndarray, int]]:
    """Run every job (kernel, out_shape, out_dtype, inputs) in one compiled program: [(output, fir_status)].
    Kernel names must be unique across jobs (one kernel object may serve several). Raises EmulatorError when
    g++ fails or any job aborts."""
    outcomes = run_outcomes(jobs, sanitize, timeout)
    for o in outcomes:
        if o.error is not None:
            raise o.error
    return [(o.output, o.status) for o in outcomes]  # type: ignore[misc]


def run_on_cpu(kernel: Kernel, out_shape: tuple[int, ...], out_dtype: np.dtype, inputs: list[np.ndarray],
               sanitize: bool | None = None) -> np.ndarray:
    """tests/cuda_util.run_kernel on the emulator: launch one kernel (out, then inputs); its output."""
    return run_many([(kernel, out_shape, out_dtype, inputs)], sanitize)[0][0]

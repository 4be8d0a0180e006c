"""Compile CUDA C with nvcc (no GPU needed) and read ptxas' per-kernel report: registers, spills, shared memory.

The tests compile every generated kernel this way on machines without a GPU; a kernel that spills registers
(`-Xptxas -v` reports spill stores or loads) fails them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from fir.syntax.diagnostics import FirError

ARCH = "sm_90"


@dataclass(frozen=True)
class KernelReport:
    """What ptxas says of one kernel."""

    name: str
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int


def find_nvcc() -> str | None:
    """The nvcc on PATH or under CUDA_HOME / /usr/local/cuda, or None."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    return None


_FUNC = re.compile(r"Compiling entry function '([^']+)'")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def compile_cuda(source: str, arch: str = ARCH, nvcc: str | None = None) -> dict[str, KernelReport]:
    """Compile a translation unit to a cubin with `-Xptxas -v`; the report of each kernel, by name."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise FirError("nvcc not found (put the CUDA toolkit's bin/ on PATH or set CUDA_HOME)")
    with tempfile.TemporaryDirectory(prefix="fir-nvcc-") as tmp:
        src = os.path.join(tmp, "kernels.cu")
        with open(src, "w", encoding="utf-8") as f:
            f.write(source)
        cmd = [nvcc, f"-arch={arch}", "-cubin", "-Xptxas", "-v", "-std=c++17", "-o", os.path.join(tmp, "k.cubin"),
               src]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise FirError(f"nvcc failed:\n{proc.stderr.strip()}")
    return parse_ptxas(proc.stderr)


def parse_ptxas(text: str) -> dict[str, KernelReport]:
    """Kernel reports from `ptxas -v` output (entry functions only)."""
    out: dict[str, KernelReport] = {}
    name: str | None = None
    spills = (0, 0)
    for line in text.splitlines():
        m = _FUNC.search(line)
        if m:
            name, spills = m.group(1), (0, 0)
            continue
        if name is None:
            continue
        m = _SPILL.search(line)
        if m:
            spills = (int(m.group(1)), int(m.group(2)))
            continue
        m = _USED.search(line)
        if m:
            out[name] = KernelReport(name, int(m.group(1)), spills[0], spills[1], int(m.group(2) or 0))
            name = None
    return out

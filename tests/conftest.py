"""pytest configuration: tests marked `gpu` run only where pycuda can open a CUDA device; compiles verify after
every pass."""

from __future__ import annotations

import functools
import os

import pytest

# Tests verify the IR after every compiler pass (users' compiles verify once, at the end): a pass that breaks
# the IR is caught at that pass, in the tools' subprocesses too.
os.environ.setdefault("FIR_VERIFY_EACH", "1")


@functools.cache
def gpu_unavailable() -> str | None:
    """Why GPU tests cannot run here, or None when they can."""
    try:
        import pycuda.driver as drv
    except ImportError:
        return "pycuda is not installed (pip install '.[cuda]' on a GPU host)"
    try:
        drv.init()
        if drv.Device.count() == 0:
            return "no CUDA device"
    except Exception as e:  # no driver (libcuda) or no device
        return f"no usable CUDA device: {e}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every `gpu` test, with the reason, when there is no GPU."""
    if not any("gpu" in item.keywords for item in items):
        return
    reason = gpu_unavailable()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

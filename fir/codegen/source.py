"""Translation units: the prelude, each helper once, then kernels (identical kernels are written once)."""

from __future__ import annotations

from collections.abc import Iterable

from fir.codegen.kernel_ir import Kernel, render_kernel
from fir.codegen.prelude import PRELUDE


def translation_unit(kernels: Iterable[Kernel]) -> str:
    """CUDA C source with every kernel; each kernel name must be unique."""
    helpers: list[str] = []
    bodies: list[str] = []
    seen: set[str] = set()
    for k in kernels:
        if k.name in seen:
            raise ValueError(f"kernel {k.name} is defined twice")
        seen.add(k.name)
        for h in k.helpers:
            if h not in helpers:
                helpers.append(h)
        bodies.append(render_kernel(k))
    return "\n".join([PRELUDE, *helpers, *bodies])

"""Every kernel of every example, as fir-run would plan it (SPMD plans, one per class of devices), compiles with
nvcc for sm_90 without register spills; the launch plans give every flow instruction (and an SPMD plan's
positions and local slices) a launch whose geometry is the kernel's."""

from __future__ import annotations

import glob
import os

from cuda_util import check_compiles, needs_nvcc

from fir.codegen.cuda_program import cuda_text, is_launched, module_code
from fir.codegen.kernel_ir import Kernel, render_kernel
from fir.compile import compile_plan
from fir.dialects.flow import FlowOp
from fir.syntax.frontend import parse_source
from fir.planning.plan_ir import instructions

HERE = os.path.dirname(__file__)
# The examples, and a program whose SPMD plans launch kernels with the device's coordinates.
EXAMPLES = sorted(glob.glob(os.path.join(HERE, "..", "examples", "*.fir"))) + \
    [os.path.join(HERE, "data", "spmd_positions.fir")]


def planned(path: str):
    """The example compiled as fir-run compiles it (SPMD plans; pipelines with 2 micro-batches)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    module = parse_source(text, os.path.basename(path))
    return compile_plan(module, microbatches=2 if "microbatch" in text else 1, expand=False)


def all_kernels() -> list[Kernel]:
    """The kernels of every device program of every example, each distinct one once, under unique names."""
    out: dict[str, Kernel] = {}
    for path in EXAMPLES:
        stem = os.path.splitext(os.path.basename(path))[0]
        for _, code in module_code(planned(path)):
            for k in code.kernels:
                key = render_kernel(k).replace(k.name, "@")
                if key not in out:
                    k.name = f"{stem}_{len(out)}_{k.name}"
                    out[key] = k
    return list(out.values())


def test_every_flow_instruction_has_a_launch():
    for path in EXAMPLES:
        module = planned(path)
        for func, code in module_code(module):
            flows = [op for op in instructions(func) if isinstance(op, FlowOp)]
            assert set(code.launches) == set(flows) | {op for op in instructions(func) if is_launched(op)}, path
            names = {k.name: k for k in code.kernels}
            for launch in code.launches.values():
                k = names[launch.kernel]
                assert (launch.grid, launch.block, launch.smem) == (k.grid, k.block, k.smem)
                assert all(0 <= a < max(1, code.arena_size) for a in launch.args)
        text = cuda_text(module)
        assert text.count("// ===== @") == len(module_code(module))


@needs_nvcc
def test_every_kernel_of_every_example_compiles_without_spills():
    # One translation unit for all examples: nvcc's start-up dominates, so one run keeps the test short.
    kernels = all_kernels()
    assert len(kernels) > len(EXAMPLES)
    check_compiles(kernels)

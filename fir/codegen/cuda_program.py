"""From an execution plan to CUDA: one translation unit per device program, and its launch plan.

Every flow instruction of a plan becomes a launch of a kernel specialised for its local shapes, with its
operands and result as byte offsets into the device's arena (the `offset`s plan-memory wrote). Instructions
that compute the same thing on the same shapes share one kernel. The launch plan lists every instruction in
issue order: kernel launches with their geometry and arguments, and the copies, collectives and events the
runtime performs on the other streams. `fir-opt -t cuda` prints both; fir.runtime.cuda_backend runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from xdsl.dialects.builtin import IntegerAttr, ModuleOp
from xdsl.dialects.func import FuncOp
from xdsl.ir import Operation, SSAValue

from fir.codegen.kernel_ir import Kernel, render_kernel
from fir.codegen.kernels import kernel_for
from fir.codegen.source import translation_unit
from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.base import fmt_tt, to_tt
from fir.dialects.flow import FlowOp, ReshapeOp
from fir.dialects.plan import ARENA_SIZE, OFFSET, RecordOp, WaitOp
from fir.dialects.dtypes import nbytes
from fir.distribution.placement import DEVICE, DEVICES, format_devices, int_value, program_devices
from fir.planning.plan_ir import event_of, instructions, is_plan, stream_of


@dataclass(frozen=True)
class Launch:
    """One kernel launch: the kernel, its geometry, and the arena offsets of its output then its inputs."""

    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    smem: int
    args: tuple[int, ...]
    # An in-place reshape (result and operand at one offset) moves nothing: it is not launched.
    skip: bool = False


@dataclass
class DeviceCode:
    """The CUDA side of one device's plan."""

    function: str
    device: int
    arena_size: int
    kernels: list[Kernel] = field(default_factory=list)
    launches: dict[Operation, Launch] = field(default_factory=dict)

    def source(self) -> str:
        """The translation unit of every kernel of the plan."""
        return translation_unit(self.kernels)


def offset_of(v: SSAValue) -> int:
    """The arena offset of a device buffer (its definer's `offset`)."""
    owner = v.owner
    attr = owner.attributes.get(OFFSET) if isinstance(owner, Operation) else None
    if not isinstance(attr, IntegerAttr):
        raise FirError("a device buffer has no arena offset: run plan-memory first",
                       loc_of(owner.location) if isinstance(owner, Operation) else None)
    return attr.value.data


def device_code(func: FuncOp) -> DeviceCode:
    """Kernels and launches of one plan function (after schedule and plan-memory)."""
    if not is_plan(func):
        raise FirError(f"@{func.sym_name.data} is not a plan (run schedule and plan-memory)", loc_of(func.location))
    if DEVICES in func.attributes:
        raise FirError(f"@{func.sym_name.data} is an SPMD plan (one for devices {format_devices(program_devices(func))}): CUDA code is written "
                       "per device for now; run expand-devices first", loc_of(func.location))
    arena = func.attributes.get(ARENA_SIZE)
    if not isinstance(arena, IntegerAttr):
        raise FirError(f"@{func.sym_name.data} has no arena: run plan-memory first", loc_of(func.location))
    code = DeviceCode(func.sym_name.data, int_value(func, DEVICE) or 0, arena.value.data)
    by_text: dict[str, Kernel] = {}
    for op in instructions(func):
        if not isinstance(op, FlowOp):
            continue
        # Emitted under a placeholder name: two instructions on equal shapes and attributes render alike, and
        # one kernel serves both.
        candidate = kernel_for("fir_kernel", op)
        key = "\n".join((render_kernel(candidate), *candidate.helpers))
        kernel = by_text.get(key)
        if kernel is None:
            kernel = by_text[key] = replace(candidate, name=f"fir_{op.name.split('.', 1)[1]}_{len(code.kernels)}")
            code.kernels.append(kernel)
        args = (offset_of(op.results[0]), *(offset_of(v) for v in op.operands))
        skip = isinstance(op, ReshapeOp) and args[0] == args[1]
        code.launches[op] = Launch(kernel.name, kernel.grid, kernel.block, kernel.smem, args, skip)
    return code


def module_code(module: ModuleOp) -> list[tuple[FuncOp, DeviceCode]]:
    """Every plan function of a module with its CUDA code; FirError when there is none."""
    out = [(f, device_code(f)) for f in module.ops if isinstance(f, FuncOp) and is_plan(f)]
    if not out:
        raise FirError("-t cuda translates execution plans, and the module has none: run the pipeline through "
                       "plan-memory first (e.g. -p sbp-infer,insert-boxing,partition,fuse,schedule,plan-memory)")
    return out


def _buffer(v: SSAValue) -> str:
    hint = f"%{v.name_hint}" if v.name_hint else "%?"
    owner = v.owner
    where = f"@{offset_of(v)}" if isinstance(owner, Operation) and OFFSET in owner.attributes else "host"
    return f"{hint}:{where}"


def launch_plan(func: FuncOp, code: DeviceCode) -> list[str]:
    """The plan's instructions in issue order, as the CUDA runtime performs them, one line each."""
    lines = []
    for i, op in enumerate(instructions(func)):
        stream = stream_of(op)
        if op in code.launches:
            ln = code.launches[op]
            if ln.skip:
                lines.append(f"[{i}] {stream}: {op.name} in place, no launch")
                continue
            g, b = ln.grid, ln.block
            args = ", ".join(f"@{a}" for a in ln.args)
            lines.append(f"[{i}] {stream}: launch {ln.kernel}<<<({g[0]}, {g[1]}, {g[2]}), ({b[0]}, {b[1]}, {b[2]}), "
                         f"{ln.smem}>>>({args})")
        elif isinstance(op, (RecordOp, WaitOp)):
            lines.append(f"[{i}] {stream}: {op.name[5:]} event {event_of(op)}")
        else:
            ins = ", ".join(_buffer(v) for v in op.operands)
            outs = ", ".join(f"{_buffer(r)} {fmt_tt(to_tt(r.type))} ({nbytes(r.type)} bytes)" for r in op.results)
            lines.append(f"[{i}] {stream}: {op.name} {ins}" + (f" -> {outs}" if outs else ""))
    return lines


def cuda_text(module: ModuleOp) -> str:
    """What `fir-opt -t cuda` prints: per plan function, its translation unit and its launch plan."""
    parts = []
    for func, code in module_code(module):
        header = (f"// ===== @{code.function}: device {code.device}, arena {code.arena_size} bytes, "
                  f"{len(code.kernels)} kernel(s), {len(code.launches)} launch(es)")
        plan = "\n".join("// " + line for line in launch_plan(func, code))
        parts.append(f"{header}\n{code.source()}\n// ----- launch plan of @{code.function}\n{plan}\n")
    return "\n".join(parts)

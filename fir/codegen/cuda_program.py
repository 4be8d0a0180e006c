"""From an execution plan to CUDA: one translation unit per plan, and its launch plan.

A plan is one device's, or the SPMD plan of a class of devices (spmd-partition's), which every device of the
class runs: one translation unit serves them all. Every flow instruction becomes a launch of a kernel
specialised for its local shapes, with its operands and result as byte offsets into the device's arena (the
`offset`s plan-memory wrote). What depends on the device in an SPMD plan (an `sbp.position`, the start of the
device's piece in a local `comm.slice`) is a scalar launch argument the runtime computes from the device's
rank and the mesh (a `RankArg`); piece loads, collective groups and send/recv peers follow from the mesh the
same way. Instructions that compute the same thing on the same shapes share one kernel. The launch plan lists
every instruction in issue order: kernel launches with their geometry and arguments, and the copies,
collectives and events the runtime performs on the other streams. `fir-opt -t cuda` prints both;
fir.runtime.cuda_backend runs them.
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
from fir.dialects.comm import CollectiveOp, RecvOp, SendOp
from fir.dialects.plan import ARENA_SIZE, OFFSET, LoadOp, RecordOp, WaitOp
from fir.dialects.dtypes import nbytes
from fir.dialects.sbp import PositionOp
from fir.distribution.expansion import is_local_slice
from fir.distribution.layout import piece
from fir.distribution.placement import DEVICES, format_devices, program_devices
from fir.distribution.sbp import Mesh, format_nd
from fir.planning.plan_ir import event_of, instructions, is_plan, stream_of


@dataclass(frozen=True)
class RankArg:
    """A scalar launch argument of an SPMD plan, computed from the device's rank: its coordinate along `axis` of
    mesh `mesh` ("coord"), or the start of its piece when `extent` elements are split along that mesh axis
    ("piece_start", array_split's pieces)."""

    kind: str
    mesh: str
    axis: int
    extent: int = 0

    def value(self, meshes: dict[str, Mesh], device: int) -> int:
        """The argument on one device."""
        mesh = meshes[self.mesh]
        coord = mesh.coord(device)[self.axis]
        return coord if self.kind == "coord" else piece(self.extent, mesh.shape[self.axis], coord)[0]

    def __str__(self) -> str:
        extra = f", {self.extent}" if self.kind == "piece_start" else ""
        return f"{self.kind}(@{self.mesh}, {self.axis}{extra})"


@dataclass(frozen=True)
class Launch:
    """One kernel launch: the kernel, its geometry, the arena offsets of its output then its inputs, then the
    scalar arguments each device computes from its rank (SPMD plans)."""

    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    smem: int
    args: tuple[int, ...]
    # An in-place reshape (result and operand at one offset) moves nothing: it is not launched.
    skip: bool = False
    rank_args: tuple[RankArg, ...] = ()


@dataclass
class DeviceCode:
    """The CUDA side of one plan: one device's, or an SPMD plan that every device of its class runs."""

    function: str
    devices: list[int]
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
    arena = func.attributes.get(ARENA_SIZE)
    if not isinstance(arena, IntegerAttr):
        raise FirError(f"@{func.sym_name.data} has no arena: run plan-memory first", loc_of(func.location))
    code = DeviceCode(func.sym_name.data, program_devices(func), arena.value.data)
    by_text: dict[str, Kernel] = {}
    for op in instructions(func):
        if not is_launched(op):
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
        code.launches[op] = Launch(kernel.name, kernel.grid, kernel.block, kernel.smem, args, skip, rank_args(op))
    return code


def is_launched(op: Operation) -> bool:
    """Whether a plan instruction is a kernel launch: a flow op, or an SPMD plan's sbp.position or local slice."""
    return isinstance(op, (FlowOp, PositionOp)) or is_local_slice(op)


def rank_args(op: Operation) -> tuple[RankArg, ...]:
    """The scalar arguments of a launch that each device computes from its rank."""
    if isinstance(op, PositionOp):
        vals = op.attr_values()
        return (RankArg("coord", vals["mesh"].name, vals["axis"]),)
    if is_local_slice(op):
        axis, _, dst = op.transition()  # type: ignore[attr-defined]
        extent = to_tt(op.operands[0].type)[0][dst.axis]
        return (RankArg("piece_start", op.attr_values()["mesh"].name, axis, extent),)
    return ()


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
            args = ", ".join([*(f"@{a}" for a in ln.args), *map(str, ln.rank_args)])
            lines.append(f"[{i}] {stream}: launch {ln.kernel}<<<({g[0]}, {g[1]}, {g[2]}), ({b[0]}, {b[1]}, {b[2]}), "
                         f"{ln.smem}>>>({args})")
        elif isinstance(op, (RecordOp, WaitOp)):
            lines.append(f"[{i}] {stream}: {op.name[5:]} event {event_of(op)}")
        else:
            ins = ", ".join(_buffer(v) for v in op.operands)
            outs = ", ".join(f"{_buffer(r)} {fmt_tt(to_tt(r.type))} ({nbytes(r.type)} bytes)" for r in op.results)
            lines.append(f"[{i}] {stream}: {op.name} {ins}" + (f" -> {outs}" if outs else "") + _mesh_note(op))
    return lines


def _mesh_note(op: Operation) -> str:
    """What an SPMD plan's load, collective, send or receive takes from the device's rank and the mesh."""
    vals = op.attr_values() if isinstance(op, (LoadOp, CollectiveOp, SendOp, RecvOp)) else {}
    if "mesh" not in vals:
        return ""
    mesh = vals["mesh"].name
    if isinstance(op, LoadOp):
        return f" (the device's piece: {format_nd(vals['from'])} -> {format_nd(vals['to'])} on @{mesh})"
    if isinstance(op, CollectiveOp) and "group" not in vals:
        return f" (group: along axis {op.transition()[0]} of @{mesh})"
    if isinstance(op, SendOp) and "to_mesh" in vals:
        return f" (to: the devices of @{vals['to_mesh'].name} it feeds from @{mesh})"
    if isinstance(op, RecvOp) and "to_mesh" in vals:
        return f" (from: its source on @{mesh})"
    return ""


def cuda_text(module: ModuleOp) -> str:
    """What `fir-opt -t cuda` prints: per plan function, its translation unit and its launch plan."""
    parts = []
    for func, code in module_code(module):
        who = (f"device {code.devices[0]}" if DEVICES not in func.attributes else
               f"SPMD plan of devices [{format_devices(code.devices)}]")
        header = (f"// ===== @{code.function}: {who}, arena {code.arena_size} bytes, "
                  f"{len(code.kernels)} kernel(s), {len(code.launches)} launch(es)")
        plan = "\n".join("// " + line for line in launch_plan(func, code))
        parts.append(f"{header}\n{code.source()}\n// ----- launch plan of @{code.function}\n{plan}\n")
    return "\n".join(parts)

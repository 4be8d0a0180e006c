"""expand-devices: the program of each device, instantiated from the SPMD program of its class.

The device's coordinates replace `sbp.position`, and the integer arithmetic computed from positions folds to
constants (a `flow.fill` where a value is still used, nothing where an offset of zero is added); a comm.slice
becomes a flow.slice at the device's offsets; each collective names its `group` (the devices that differ from
this one only along the axis it changes); a comm.send names each device it sends to (`to_device`: none, one or
several) and a comm.recv the device it receives from (`from_device`). The result is `partition`'s per-device
form: `@<name>.dev<k>` with `device = k`.

A planned SPMD program (after schedule and plan-memory) expands the same way, but nothing folds: every
instruction keeps its stream, micro-batch and arena offset, `sbp.position` becomes a `flow.fill` of the
coordinate in its place, and a split constant stays whole (a flow.slice keeps each piece), so the per-device
plans are exactly the SPMD plan's instructions with the device's constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xdsl.dialects.builtin import FunctionType, IntegerAttr, ModuleOp, i64
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Block, BlockArgument, Operation, Region, SSAValue

from fir.dialects import dtypes
from fir.dialects.base import to_tt
from fir.dialects.comm import CollectiveOp, RecvOp, SendOp, changed_axis
from fir.dialects.flow import OPS_BY_NAME, FlowOp
from fir.dialects.plan import INSTR_ATTRS, MICRO, SCHEDULE, LoadOp
from fir.dialects.sbp import PositionOp
from fir.distribution import layout
from fir.distribution.partitioner import ProgramBuilder, spmd_partition
from fir.distribution.placement import DEVICE, DEVICES, OF, program_devices, symbol_name
from fir.distribution.sbp import Mesh, Split
from fir.syntax.diagnostics import FirError, loc_of

# Flow ops on rank-0 integers that fold when their operands are known (the arithmetic of positions).
_FOLD = {"flow.add": lambda a, b: a + b, "flow.sub": lambda a, b: a - b, "flow.mul": lambda a, b: a * b,
         "flow.cast": lambda a: a}


def expand_module(module: ModuleOp, meshes: dict[str, Mesh]) -> None:
    """Replace the SPMD programs of each function by its per-device programs, in device order."""
    progs = [f for f in module.ops if isinstance(f, FuncOp) and DEVICES in f.attributes]
    by_of: dict[str | None, list[FuncOp]] = {}
    for f in progs:
        by_of.setdefault(symbol_name(f.attributes.get(OF)), []).append(f)
    for group in by_of.values():
        devs = sorted(((d, f) for f in group for d in program_devices(f)), key=lambda t: t[0])
        if len({d for d, _ in devs}) != len(devs):
            raise FirError(f"a device runs two programs of @{symbol_name(group[0].attributes.get(OF))}",
                           loc_of(group[0].location))
        analyses = {f: _symbolic(f) for f in group}
        for d, f in devs:
            module.body.block.insert_op_before(Expander(f, meshes, d, analyses[f]).build(), group[0])
        for f in group:
            module.body.block.erase_op(f)


def _symbolic(prog: FuncOp) -> tuple[set[Operation], set[Operation]]:
    """The ops that fold on every device (positions and the rank-0 arithmetic computed from them), and the
    rank-0 fills used by nothing else (they fold away with them)."""
    folds: set[Operation] = set()
    known: set[SSAValue] = set()
    for op in prog.body.ops:
        if isinstance(op, PositionOp):
            folds.add(op)
            known.add(op.results[0])
        elif (op.name in _FOLD and to_tt(op.results[0].type)[0] == () and any(v in known for v in op.operands)
              and all(v in known or _rank0_fill(v) for v in op.operands)):
            folds.add(op)
            known.add(op.results[0])
    absorbed = {op for op in prog.body.ops if _rank0_fill(op.results[0] if op.results else None)
                and op.results[0].uses and all(u.operation in folds for u in op.results[0].uses)}
    return folds, absorbed


def _only_sliced(v: SSAValue) -> bool:
    """Is v used once, by a comm.slice (a constant whose pieces the devices write themselves)?"""
    uses = list(v.uses)
    return len(uses) == 1 and isinstance(uses[0].operation, CollectiveOp) and uses[0].operation.KIND == "slice"


def _rank0_fill(v: SSAValue | None) -> bool:
    return v is not None and isinstance(v.owner, FlowOp) and v.owner.name == "flow.fill" and to_tt(v.type)[0] == ()


class Expander:
    """Builds one device's program from the SPMD program of its class."""

    def __init__(self, prog: FuncOp, meshes: dict[str, Mesh], device: int, analysis=None):
        self.prog = prog
        self.meshes = meshes
        self.device = device
        self.planned = SCHEDULE in prog.attributes
        self.folds, self.absorbed = (set(), set()) if self.planned else analysis or _symbolic(prog)
        self.values: dict[SSAValue, SSAValue] = {}
        self.known: dict[SSAValue, int | float] = {}
        # The values of split constants whose pieces are not written yet, with their flow.constant.
        self.pieces: dict[SSAValue, tuple[np.ndarray, Operation]] = {}
        self.block = Block()
        # The op of the SPMD program each op of the device's program was made for.
        self.origin: dict[Operation, Operation] = {}

    def build(self) -> FuncOp:
        prog = self.prog
        src = prog.body.blocks.first
        assert src is not None
        for a in src.args:
            local = self.block.insert_arg(a.type, len(self.block.args))
            local.name_hint = a.name_hint
            self.values[a] = local
        for op in src.ops:
            if op in self.absorbed:
                self.known[op.results[0]] = op.attr_values()["value"]
            elif op in self.folds:
                self.fold(op)
            elif isinstance(op, PositionOp):  # in a plan: the coordinate, written where the position was
                value = float(coordinate(op, self.meshes, self.device))
                fill = OPS_BY_NAME["flow.fill"].make([], op.results[0].type, value=value)
                fill.results[0].name_hint = op.results[0].name_hint
                self.values[op.results[0]] = self.add(fill, op).results[0]
            elif op.name == "flow.constant" and not self.planned and _only_sliced(op.results[0]):
                # a split constant: each device writes only its piece (see collective)
                value, (shape, _) = op.attr_values()["value"], to_tt(op.results[0].type)
                self.pieces[op.results[0]] = (np.broadcast_to(np.asarray(value), shape), op)
            elif isinstance(op, CollectiveOp):
                self.collective(op)
            elif isinstance(op, LoadOp) and "mesh" in op.properties:
                self.piece_load(op)
            elif isinstance(op, SendOp) and "to_mesh" in op.properties:
                self.send(op)
            elif isinstance(op, RecvOp) and "to_mesh" in op.properties:
                self.recv(op)
            else:
                self.clone(op)
        name = symbol_name(prog.attributes.get(OF))
        dev = FuncOp(f"{name}.dev{self.device}", FunctionType.from_lists(
                         [a.type for a in self.block.args], list(prog.function_type.outputs.data)),
                     Region(self.block), arg_attrs=prog.arg_attrs, res_attrs=prog.res_attrs)
        dev.location = prog.location
        dev.attributes[DEVICE] = IntegerAttr(self.device, i64)
        for key, attr in prog.attributes.items():  # of, args, results, and a plan's schedule and arena size
            if key != DEVICES:
                dev.attributes[key] = attr
        return dev

    def add(self, op: Operation, like: Operation) -> Operation:
        op.location = like.location
        if not isinstance(op, ReturnOp):  # the micro-batch, and in a plan the stream and arena offset
            for name, attr in like.attributes.items():
                if name == MICRO or (self.planned and name in INSTR_ATTRS):
                    op.attributes[name] = attr
        self.origin[op] = like
        self.block.add_op(op)
        return op

    def operand(self, v: SSAValue) -> SSAValue:
        """The device's value of v: a folded value is written as a fill where something still uses it."""
        if v not in self.values and v in self.known:
            fill = OPS_BY_NAME["flow.fill"].make([], v.type, value=float(self.known[v]))
            fill.results[0].name_hint = v.name_hint
            owner = v.owner
            self.add(fill, owner if isinstance(owner, Operation) else self.prog)
            self.values[v] = fill.results[0]
        return self.values[v]

    def fold(self, op: Operation) -> None:
        if isinstance(op, PositionOp):
            self.known[op.results[0]] = coordinate(op, self.meshes, self.device)
            return
        # a rank-0 fill that something else reads too was written as it is; its value folds here as well
        args = [self.known[v] if v in self.known else v.owner.attr_values()["value"] for v in op.operands]
        value = _FOLD[op.name](*args)
        dt = to_tt(op.results[0].type)[1]
        self.known[op.results[0]] = float(value) if dtypes.is_float(dt) else int(value)

    def clone(self, op: Operation) -> None:
        if not self.planned and op.name == "flow.add" and any(self.known.get(v) == 0 for v in op.operands):
            # adding an offset of zero (the first piece): the other operand is the value
            other = op.operands[0] if self.known.get(op.operands[1]) == 0 else op.operands[1]
            if other.type == op.results[0].type and other not in self.known:
                kept = self.values[other]
                if not isinstance(kept, BlockArgument):  # arguments keep their names (inputs bind by them)
                    kept.name_hint = op.results[0].name_hint or kept.name_hint
                self.values[op.results[0]] = kept
                return
        operands = [self.operand(v) for v in op.operands]
        new = op.clone(value_mapper=dict(zip(op.operands, operands)))
        if isinstance(op, ReturnOp):
            self.origin[new] = op
            self.block.add_op(new)
            return
        self.add(new, op)
        for old, res in zip(op.results, new.results):
            self.values[old] = res

    def collective(self, op: CollectiveOp) -> None:
        vals = op.attr_values()
        mesh = self.meshes[vals["mesh"].name]
        axis, _, dst = op.transition()
        if op.KIND == "slice":
            # B -> S(i) moves nothing: the device keeps its piece, at offsets known here.
            assert isinstance(dst, Split)
            whole, constant = self.pieces.get(op.operands[0], (None, None))
            x = None if whole is not None else self.operand(op.operands[0])
            have = whole.shape if whole is not None else x.type.get_shape()
            start, limit = piece_box(have, mesh, axis, dst.axis, self.device)
            if whole is not None:
                piece = whole[tuple(slice(a, b) for a, b in zip(start, limit))]
                if _only_sliced(op.results[0]):
                    self.pieces[op.results[0]] = (piece, constant)
                    return
                new = OPS_BY_NAME["flow.constant"].make([], op.results[0].type, value=piece.tolist())
                new.results[0].name_hint = op.results[0].name_hint
                self.values[op.results[0]] = self.add(new, constant).results[0]
                return
            else:
                new = OPS_BY_NAME["flow.slice"].make([x], start=start, limit=limit)
        else:
            x = self.operand(op.operands[0])
            group = list(collective_group(op, self.meshes, self.device))
            new = type(op).make([x], op.results[0].type, **vals, group=group)
        new.results[0].name_hint = op.results[0].name_hint
        self.values[op.results[0]] = self.add(new, op).results[0]

    def piece_load(self, op: LoadOp) -> None:
        """A plan's load of the device's piece of an argument: the box of that piece."""
        start, limit = load_box(op, self.meshes, self.device)
        new = LoadOp.make([self.operand(op.operands[0])], start=start, limit=limit)
        new.results[0].name_hint = op.results[0].name_hint
        self.values[op.results[0]] = self.add(new, op).results[0]

    def send(self, op: SendOp) -> None:
        x = self.operand(op.operands[0])
        for target in send_targets(op, self.meshes, self.device):
            self.add(SendOp.make([x], to_device=target, id=op.attr_values()["id"]), op)

    def recv(self, op: RecvOp) -> None:
        new = RecvOp.make([], op.results[0].type, from_device=recv_source(op, self.meshes, self.device),
                          id=op.attr_values()["id"])
        new.results[0].name_hint = op.results[0].name_hint
        self.values[op.results[0]] = self.add(new, op).results[0]


# ----------------------------------------------------------------------------------------------- a device's values
# What an SPMD program's op means on one device (expand-devices writes it; the executors compute it as they run).
def coordinate(op: PositionOp, meshes: dict[str, Mesh], device: int) -> int:
    """The device's coordinate that an sbp.position names."""
    vals = op.attr_values()
    return meshes[vals["mesh"].name].coord(device)[vals["axis"]]


def piece_box(have, mesh: Mesh, mesh_axis: int, axis: int, device: int) -> tuple[list[int], list[int]]:
    """(start, limit) of the device's piece of a tensor of shape `have` split along `axis` by `mesh_axis`."""
    start, limit = [0] * len(have), list(have)
    off, n = layout.piece(have[axis], mesh.shape[mesh_axis], mesh.coord(device)[mesh_axis])
    start[axis], limit[axis] = off, off + n
    return start, limit


def is_local_slice(op: Operation) -> bool:
    """An SPMD program's comm.slice (no group: each device keeps its own piece, nothing moves)."""
    return isinstance(op, CollectiveOp) and op.KIND == "slice" and "group" not in op.properties


def slice_box(op: CollectiveOp, meshes: dict[str, Mesh], device: int) -> tuple[list[int], list[int]]:
    """The device's piece of the operand of an SPMD program's comm.slice (B -> S: no data moves)."""
    axis, _, dst = op.transition()
    assert isinstance(dst, Split)
    return piece_box(op.operands[0].type.get_shape(), meshes[op.attr_values()["mesh"].name], axis, dst.axis, device)


def load_box(op: LoadOp, meshes: dict[str, Mesh], device: int) -> tuple[list[int], list[int]]:
    """The device's piece of the argument an SPMD plan's piece load (`plan.load {mesh, from, to}`) reads."""
    vals = op.attr_values()
    axis = changed_axis(vals["from"], vals["to"])
    return piece_box(op.operands[0].type.get_shape(), meshes[vals["mesh"].name], axis, vals["to"][axis].axis, device)


def collective_group(op: CollectiveOp, meshes: dict[str, Mesh], device: int) -> tuple[int, ...]:
    """The group of a collective on a device: the `group` a per-device program names, or in an SPMD program the
    devices of its mesh that differ from this one only along the axis it changes."""
    if "group" in op.properties or "id" not in op.properties:  # per-device form (group_for says what is missing)
        return op.group_for(device)
    return tuple(meshes[op.attr_values()["mesh"].name].group(device, op.transition()[0]))


def send_targets(op: SendOp, meshes: dict[str, Mesh], device: int) -> list[int]:
    """The devices a send reaches: the `to_device` a per-device program names, or in an SPMD program the devices
    of `to_mesh` that `device` feeds (none, one or several)."""
    vals = op.attr_values()
    if "to_mesh" not in vals:
        return [vals["to_device"]]
    return targets(meshes[vals["mesh"].name], meshes[vals["to_mesh"].name], device)


def recv_source(op: RecvOp, meshes: dict[str, Mesh], device: int) -> int:
    """The device a receive takes from: its `from_device`, or in an SPMD program its source on `mesh`."""
    vals = op.attr_values()
    if "to_mesh" not in vals:
        return vals["from_device"]
    return source(meshes[vals["mesh"].name], meshes[vals["to_mesh"].name], device)


def source(src: Mesh, dst: Mesh, device: int) -> int:
    """The device of `src` that sends to `device` of `dst`: the same coordinate, or (between meshes of
    different shapes, where the value is broadcast) index j mod |src|."""
    if src.shape == dst.shape:
        return src.device_at(dst.coord(device))
    return src.devices[dst.devices.index(device) % src.size]


def targets(src: Mesh, dst: Mesh, device: int) -> list[int]:
    """The devices of `dst` that `device` of `src` sends to."""
    if src.shape == dst.shape:
        return [dst.device_at(src.coord(device))]
    i = src.devices.index(device)
    return list(dst.devices[i::src.size])


@dataclass
class DeviceProgram:
    """One device's program, with the logical op each of its ops was made for and each logical value's value."""

    device: int
    func: FuncOp
    origin: dict[Operation, Operation]
    values: dict[SSAValue, SSAValue]


def device_programs(builders: list[ProgramBuilder], meshes: dict[str, Mesh]) -> list[DeviceProgram]:
    """The program of every device of the SPMD programs, in device order."""
    out = []
    for b in builders:
        assert b.program is not None
        analysis = _symbolic(b.program)
        for d in b.devices:
            e = Expander(b.program, meshes, d, analysis)
            prog = e.build()
            origin = {op: b.origin[src] for op, src in e.origin.items() if src in b.origin}
            values = {v: e.values[w] for v, w in b.values.items() if w in e.values}
            out.append(DeviceProgram(d, prog, origin, values))
    out.sort(key=lambda p: p.device)
    return out


def partition_function(func: FuncOp, meshes: dict[str, Mesh]) -> list[FuncOp]:
    """The per-device programs of a boxed logical function, in device order (`partition`)."""
    return [p.func for p in device_programs(spmd_partition(func, meshes), meshes)]

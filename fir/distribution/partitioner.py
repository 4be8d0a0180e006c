"""spmd-partition: SPMD lowering of a boxed logical function to one program per class of devices, on local shapes.

Devices that lie on the same meshes and hold pieces of the same sizes (see device_classes) run one program
`@<name>.p<i>` (attributes `devices = [...]`, `of = @<name>`) holding the ops placed on their meshes, with local
types (fir.distribution.layout). Everything that depends on a device's position is computed from it: an iota
split along its own axis adds `sbp.position * piece size + base`; a comm.slice (B -> S) stays, keeping the
device's piece; a split constant is held whole and sliced the same way; a collective keeps its mesh and gets an
`id`, its group following from the mesh and the axis it changes; comm.send_recv becomes a comm.send in the
sender's program and a comm.recv in the receiver's, naming both meshes. A mean over a split axis is the local
mean times the class's share of the elements. Arguments and results keep their logical index (`args` /
`results`, when not all of them are on the devices) and their `sbp` and `mesh`, so a runtime can scatter
inputs and gather outputs. Every op made for an op tagged `micro = k` (the microbatch pass) is tagged too; a
comm op without a tag takes the tag of the value it moves.

fir.distribution.expansion instantiates the per-device programs (`partition`'s output) from these.
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np
from xdsl.dialects.builtin import ArrayAttr, DenseArrayBase, DictionaryAttr, FunctionType, SymbolRefAttr, i64
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue

from fir.distribution import layout
from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects import dtypes
from fir.dialects.attr_schema import SymbolRef
from fir.dialects.base import from_tt, to_tt
from fir.dialects.comm import COLLECTIVE_BY_KIND, CollectiveOp, CommOp, RecvOp, SendOp, SendRecvOp
from fir.dialects.flow import OPS_BY_NAME, FlowOp
from fir.dialects.plan import MICRO
from fir.dialects.sbp import OP_ATTRS, SBP, SBP_IN, PositionOp
from fir.distribution.placement import (ARGS, DEVICES, OF, RESULTS, comm_result_layout, arg_attrs, layout_attrs,
                                        lookup_mesh, op_mesh, res_attrs, value_mesh, value_sbp)
from fir.distribution.sbp import Broadcast, Mesh, NdSbp, Split, format_nd
from fir.distribution.rules import nd_signatures, require_rule, why_invalid


def _layout(nd_attr: Attribute) -> NdSbp:
    return OP_ATTRS[SBP].to_python(nd_attr)


def _mesh_names(func: FuncOp, meshes: dict[str, Mesh]) -> list[str]:
    """The meshes the function places something on, sorted."""
    names: set[str] = set()
    for d in (*arg_attrs(func), *res_attrs(func)):
        m = value_mesh(d, func)
        if m is not None:
            names.add(m)
    for op in func.body.ops:
        if isinstance(op, FlowOp):
            m = op_mesh(op, func)
            if m is not None:
                names.add(m)
        elif isinstance(op, CommOp):
            vals = op.attr_values()
            names.update(v.name for k, v in vals.items() if k in ("mesh", "to_mesh"))
    return sorted(n for n in names if n in meshes)


def device_classes(func: FuncOp, meshes: dict[str, Mesh]) -> list[list[int]]:
    """The devices of a boxed function grouped by the program they run, each group ascending, groups by their first
    device. Two devices run one program when they lie on the same meshes and, along every mesh axis, on the same
    side of every uneven split's boundary (numpy.array_split: the first n % p pieces are one longer), so that all
    their local shapes agree and their offsets are one affine function of the coordinate."""
    names = _mesh_names(func, meshes)
    cuts = {k: sorted(v) for k, v in _split_boundaries(func, meshes).items()}
    groups: dict[tuple, list[int]] = {}
    for dev in sorted({d for n in names for d in meshes[n].devices}):
        key = tuple((n, tuple(bisect_right(cuts.get((n, k), ()), c) for k, c in enumerate(meshes[n].coord(dev))))
                    for n in names if dev in meshes[n])
        groups.setdefault(key, []).append(dev)
    return sorted(groups.values(), key=lambda g: g[0])


def _check_classes(func: FuncOp, meshes: dict[str, Mesh], classes: list[list[int]]) -> None:
    """The last device of each class holds every value in the shape its first does (device_classes' promise;
    cheap: two devices a class)."""
    for devs in classes:
        first, last = devs[0], devs[-1]
        for shape, nd, mesh in _layouts(func, meshes):
            if first in mesh and layout.local_shape(shape, nd, mesh.shape, mesh.coord(first)) != \
                    layout.local_shape(shape, nd, mesh.shape, mesh.coord(last)):
                raise FirError(f"internal error: devices {first} and {last} run one program of "
                               f"@{func.sym_name.data} but hold a value in different shapes", loc_of(func.location))


def _layouts(func: FuncOp, meshes: dict[str, Mesh]):
    """(logical shape, nd-SBP, mesh) of every argument and op result of a boxed function."""
    block = func.body.blocks.first
    assert block is not None
    for i, (a, d) in enumerate(zip(block.args, arg_attrs(func))):
        yield to_tt(a.type)[0], value_sbp(d), lookup_mesh(meshes, value_mesh(d, func), f"argument {i}", func)
    for op in block.ops:
        if isinstance(op, FlowOp):
            yield to_tt(op.results[0].type)[0], _layout(op.attributes[SBP]), meshes[op_mesh(op, func)]
        elif isinstance(op, CommOp):
            vals = op.attr_values()
            yield to_tt(op.results[0].type)[0], vals["to"], meshes[vals.get("to_mesh", vals["mesh"]).name]


def _split_boundaries(func: FuncOp, meshes: dict[str, Mesh]) -> dict[tuple[str, int], set[int]]:
    """(mesh, axis) -> the coordinates where a piece of some value along that axis gets one element shorter."""
    out: dict[tuple[str, int], set[int]] = {}

    def walk(shape, nd: NdSbp, mesh: Mesh, extra: tuple[int, int] | None = None) -> None:
        for k, cuts in enumerate(layout.split_cuts(shape, nd, mesh.shape, extra)):
            out.setdefault((mesh.name, k), set()).update(cuts)

    for shape, nd, mesh in _layouts(func, meshes):
        walk(shape, nd, mesh)
    for op in func.body.ops:
        if _is_slice(op):
            axis, _, dst = op.transition()
            vals = op.attr_values()
            walk(to_tt(op.operands[0].type)[0], vals["from"], meshes[vals["mesh"].name], (axis, dst.axis))
    return out


def spmd_partition(func: FuncOp, meshes: dict[str, Mesh]) -> list[ProgramBuilder]:
    """The SPMD programs of a boxed logical function (one per class of devices, see device_classes), built."""
    _check_boxed(func, meshes)
    classes = device_classes(func, meshes)
    _check_classes(func, meshes, classes)
    builders = [ProgramBuilder(func, meshes, devs, i) for i, devs in enumerate(classes)]
    for b in builders:
        b.build()
    return builders


def _check_boxed(func: FuncOp, meshes: dict[str, Mesh]) -> None:
    """Every operand must already be in the layout its consumer needs (insert-boxing's job)."""
    layouts: dict[SSAValue, tuple[str, NdSbp]] = {}
    block = func.body.blocks.first
    assert block is not None
    for i, (a, d) in enumerate(zip(block.args, arg_attrs(func))):
        nd = value_sbp(d)
        if nd is None:
            raise FirError(f"argument {i} of @{func.sym_name.data} has no SBP: run sbp-infer and insert-boxing "
                           "before partition", loc_of(func.location))
        layouts[a] = (value_mesh(d, func) or "", nd)
    for op in block.ops:
        if isinstance(op, FlowOp):
            if SBP not in op.attributes:
                raise FirError(f"'{op.name}' has no SBP: run sbp-infer and insert-boxing before partition",
                               loc_of(op.location))
            mesh_obj = lookup_mesh(meshes, op_mesh(op, func), f"'{op.name}'", op)
            mesh = mesh_obj.name
            needs = OP_ATTRS[SBP_IN].to_python(op.attributes[SBP_IN]) if SBP_IN in op.attributes else []
            _check_signature(op, mesh_obj, needs)
            for i, (v, nd) in enumerate(zip(op.operands, needs)):
                if layouts[v] != (mesh, nd):
                    have = f"@{layouts[v][0]} {format_nd(layouts[v][1])}"
                    raise FirError(f"'{op.name}' operand {i} is {have} but the op needs @{mesh} "
                                   f"{format_nd(nd)}: run insert-boxing before partition",
                                   loc_of(op.location))
            layouts[op.results[0]] = (mesh, _layout(op.attributes[SBP]))
        elif isinstance(op, CommOp):
            result_layout = comm_result_layout(op, func)
            vals = op.attr_values()
            have, takes = layouts[op.operands[0]], (vals["mesh"].name, vals["from"])
            if have != takes:
                raise FirError(f"'{op.name}' takes @{takes[0]} {format_nd(takes[1])}, but its operand is "
                               f"@{have[0]} {format_nd(have[1])}: run insert-boxing before partition",
                               loc_of(op.location))
            layouts[op.results[0]] = result_layout


def _check_signature(op: FlowOp, mesh: Mesh, needs: list[NdSbp]) -> None:
    """The op's `sbp_in` and `sbp` must be one of its SBP signatures on the mesh (sbp-infer writes one; a hand-written
    or edited pair may not be, and its local types would not fit)."""
    require_rule(op)
    ins = [to_tt(v.type)[0] for v in op.operands]
    out_shape = to_tt(op.results[0].type)[0]
    out, attrs = _layout(op.attributes[SBP]), op.attr_values()
    if len(needs) == len(ins) and any(list(sig.ins) == needs and sig.out == out
                                      for sig in nd_signatures(op.name, ins, out_shape, attrs, mesh.shape)):
        return
    why = why_invalid(op.name, ins, out_shape, attrs, mesh.shape, out, needs) if len(needs) == len(ins) else None
    have = f"({', '.join(format_nd(nd) for nd in needs)}) -> {format_nd(out)}"
    raise FirError(f"'{op.name}' has SBP signature {have}, which is not one of its signatures on mesh @{mesh.name}"
                   + (f": {why}" if why else "") + "; run sbp-infer before partition", loc_of(op.location))


class ProgramBuilder:
    """Builds the SPMD program of one class of devices (`devices`, which share every local shape): local types
    are those of its first device, and whatever depends on a device's position is computed from `sbp.position`."""

    def __init__(self, func: FuncOp, meshes: dict[str, Mesh], devices: list[int], index: int):
        self.func = func
        self.meshes = meshes
        self.devices = devices
        self.index = index
        self.device = devices[0]  # the class's local shapes are this device's
        self.values: dict[SSAValue, SSAValue] = {}
        self.block = Block()
        self.comm_ids: dict[Operation, int] = {}
        self.next_id = 0
        # The logical op each op of the program was made for (the microbatch pass stitches by it).
        self.origin: dict[Operation, Operation] = {}
        self.source: Operation | None = None
        self.program: FuncOp | None = None

    def mesh_of(self, name: str | None, what: str, where: Operation) -> Mesh:
        return lookup_mesh(self.meshes, name, what, where)

    def local_type(self, logical: Attribute, nd: NdSbp, mesh: Mesh) -> Attribute:
        shape, dt = to_tt(logical)
        return from_tt((layout.local_shape(shape, nd, mesh.shape, mesh.coord(self.device)), dt))

    def add(self, op: Operation, loc: Attribute, hint: str | None = None) -> Operation:
        op.location = loc
        if hint is not None and op.results:
            op.results[0].name_hint = hint
        if self.source is not None:
            self.origin[op] = self.source
            micro = _micro_tag(self.source)
            if micro is not None and not isinstance(op, ReturnOp):
                op.attributes[MICRO] = micro
        self.block.add_op(op)
        return op

    def build(self) -> FuncOp:
        func = self.func
        src_block = func.body.blocks.first
        assert src_block is not None
        arg_dicts, arg_index = [], []
        for i, (a, d) in enumerate(zip(src_block.args, arg_attrs(func))):
            mesh = self.mesh_of(value_mesh(d, func), f"argument {i}", func)
            if self.device not in mesh:
                continue
            nd = value_sbp(d)
            local = self.block.insert_arg(self.local_type(a.type, nd, mesh), len(self.block.args))
            local.name_hint = a.name_hint
            self.values[a] = local
            arg_dicts.append(layout_attrs(nd, mesh.name))
            arg_index.append(i)
        # Ops that communicate are numbered first, the same in every program (their members meet by id); the
        # local slices take the numbers after them.
        for op in src_block.ops:
            if isinstance(op, CommOp) and not _is_slice(op):
                self.comm_ids[op] = self.next_id
                self.next_id += 1
        res_types, res_dicts, res_index = [], [], []
        for op in src_block.ops:
            self.source = op
            if isinstance(op, ReturnOp):
                outs = []
                for i, (v, d) in enumerate(zip(op.operands, res_attrs(func))):
                    if v in self.values:
                        outs.append(self.values[v])
                        res_types.append(outs[-1].type)
                        mesh_name, nd = result_layout(func, v, d)
                        res_dicts.append(layout_attrs(nd, mesh_name))
                        res_index.append(i)
                self.add(ReturnOp(*outs), op.location)
            elif isinstance(op, FlowOp):
                self.flow(op)
            elif isinstance(op, SendRecvOp):
                self.send_recv(op)
            elif isinstance(op, CollectiveOp):
                self.collective(op)
        self.source = None
        prog = FuncOp(f"{func.sym_name.data}.p{self.index}",
                      FunctionType.from_lists([a.type for a in self.block.args], res_types), Region(self.block),
                      arg_attrs=ArrayAttr([_dict(d) for d in arg_dicts]) if arg_dicts else None,
                      res_attrs=ArrayAttr([_dict(d) for d in res_dicts]) if res_dicts else None)
        prog.location = func.location
        prog.attributes[DEVICES] = _int_list(self.devices)
        prog.attributes[OF] = SymbolRefAttr(func.sym_name.data)
        n_args, n_res = len(func.function_type.inputs.data), len(func.function_type.outputs.data)
        if arg_index != list(range(n_args)):
            prog.attributes[ARGS] = _int_list(arg_index)
        if res_index != list(range(n_res)):
            prog.attributes[RESULTS] = _int_list(res_index)
        self.program = prog
        return prog

    # -- flow ops ---------------------------------------------------------------------------------------------
    def flow(self, op: FlowOp) -> None:
        mesh = self.mesh_of(op_mesh(op, self.func), f"'{op.name}'", op)
        if self.device not in mesh:
            return
        out_nd = _layout(op.attributes[SBP])
        in_nds = OP_ATTRS[SBP_IN].to_python(op.attributes[SBP_IN]) if SBP_IN in op.attributes else []
        coord = mesh.coord(self.device)
        operands = [self.values[v] for v in op.operands]
        out_shape, dt = to_tt(op.results[0].type)
        local_out = layout.local_shape(out_shape, out_nd, mesh.shape, coord)
        attrs = op.attr_values()
        hint = op.results[0].name_hint
        loc = op.location
        cls = type(op)
        split_in = {s.axis for nd in in_nds[:1] for s in nd if isinstance(s, Split)}

        if op.name == "flow.reduce_mean" and split_in & set(_norm(attrs["axes"], len(op.operands[0].type.get_shape()))):
            # mean over a split axis: the local mean weighted by this device's share of the reduced elements (the
            # same for every device of the class: they hold pieces of one size).
            result = self.scaled(cls, operands, attrs, local_out, dt, loc, hint,
                                 _count(operands[0].type.get_shape(), attrs["axes"]),
                                 _count(op.operands[0].type.get_shape(), attrs["axes"]))
        elif op.name == "flow.cross_entropy" and attrs["reduction"] == "mean" and split_in:
            rows_local = int(np.prod(operands[1].type.get_shape(), dtype=np.int64))
            rows = int(np.prod(op.operands[1].type.get_shape(), dtype=np.int64))
            result = self.scaled(cls, operands, attrs, local_out, dt, loc, hint, rows_local, rows)
        elif op.name == "flow.iota":
            ax = attrs["axis"] % len(out_shape)
            levels = [k for k, s in enumerate(out_nd) if isinstance(s, Split) and s.axis == ax]
            if levels:
                local = self.add(cls.make([], from_tt((local_out, dt)), **attrs), loc, _suffix(hint, "local"))
                off = self.offset(mesh, out_shape[ax], out_nd, levels, dt, loc, hint)
                result = self.add(OPS_BY_NAME["flow.add"].make([local.results[0], off]), loc, hint).results[0]
            else:
                result = self.add(cls.make([], from_tt((local_out, dt)), **attrs), loc, hint).results[0]
        elif op.name == "flow.constant":
            value = np.asarray(attrs["value"]) if np.ndim(attrs["value"]) else attrs["value"]
            if np.ndim(value) and any(isinstance(s, Split) for s in out_nd):
                # every device holds the whole constant and keeps its piece, as a B -> S boxing would
                whole = self.add(cls.make([], from_tt((out_shape, dt)),
                                          value=np.broadcast_to(value, out_shape).tolist()), loc, _suffix(hint, "whole"))
                result = self.keep_piece(whole.results[0], out_nd, mesh, loc, hint)
            else:
                result = self.add(cls.make([], from_tt((local_out, dt)), value=attrs["value"]), loc,
                                  hint).results[0]
        elif op.name == "flow.slice":
            start, limit, stride = list(attrs["start"]), list(attrs["limit"]), list(attrs["stride"])
            in_local = operands[0].type.get_shape()
            for ax in split_in:  # split axes are sliced whole (the rule allows no other)
                start[ax], limit[ax], stride[ax] = 0, in_local[ax], 1
            result = self.add(cls.make(operands, start=start, limit=limit, stride=stride), loc, hint).results[0]
        else:
            result = self.add(cls.make(operands, from_tt((local_out, dt)) if cls.NEEDS_RESULT_TYPE else None,
                                       **attrs), loc, hint).results[0]
        if to_tt(result.type) != (local_out, dt):
            raise FirError(f"internal error: partition gave '{op.name}' the local type {result.type} on device "
                           f"{self.device}, expected {local_out}", loc_of(loc))
        self.values[op.results[0]] = result

    def scaled(self, cls, operands, attrs, local_out, dt, loc, hint, local_n: int, n: int) -> SSAValue:
        """The op on local data, times local_n / n: the device's share of a mean over split rows."""
        part = self.add(cls.make(operands, **attrs), loc, _suffix(hint, "local")).results[0]
        w = self.add(OPS_BY_NAME["flow.fill"].make([], from_tt(((), dt)), value=local_n / n), loc, _suffix(hint, "share"))
        return self.add(OPS_BY_NAME["flow.mul"].make([part, w.results[0]]), loc, hint).results[0]

    def offset(self, mesh: Mesh, n: int, nd: NdSbp, levels: list[int], dt: str, loc, hint) -> SSAValue:
        """The first index of this device's piece of a dimension of n elements split along mesh axes `levels`
        (nested in that order), as a rank-0 tensor of dtype dt: sum over the levels of position * piece size +
        base, where size and base are the class's (array_split: the first n % p pieces are one longer)."""
        it = dt if not dtypes.is_float(dt) else "i64"
        coord = mesh.coord(self.device)
        terms: list[SSAValue] = []
        base = 0
        for k in levels:
            q, r = divmod(n, mesh.shape[k])
            size = q + 1 if coord[k] < r else q
            base += 0 if coord[k] < r else r
            pos = self.add(PositionOp.make([], from_tt(((), it)), mesh=SymbolRef(mesh.name), axis=k), loc,
                           _suffix(hint, f"pos{k}"))
            step = self.fill(size, it, loc, _suffix(hint, f"size{k}"))
            terms.append(self.add(OPS_BY_NAME["flow.mul"].make([pos.results[0], step]), loc,
                                  _suffix(hint, f"start{k}")).results[0])
            n = size
        if base:
            terms.append(self.fill(base, it, loc, _suffix(hint, "base")))
        total = terms[0]
        for t in terms[1:]:
            total = self.add(OPS_BY_NAME["flow.add"].make([total, t]), loc, _suffix(hint, "start")).results[0]
        if it != dt:
            total = self.add(OPS_BY_NAME["flow.cast"].make([total], from_tt(((), dt))), loc, None).results[0]
        total.name_hint = _suffix(hint, "offset")
        return total

    def fill(self, value: int, dt: str, loc, hint) -> SSAValue:
        return self.add(OPS_BY_NAME["flow.fill"].make([], from_tt(((), dt)), value=float(value)), loc, hint).results[0]

    def keep_piece(self, x: SSAValue, nd: NdSbp, mesh: Mesh, loc, hint) -> SSAValue:
        """This device's piece of a value every device holds whole: one B -> S comm.slice per split mesh axis,
        in mesh-axis order (how splits nest)."""
        have: list = [Broadcast()] * len(nd)
        shape, dt = to_tt(x.type)
        for k, s in enumerate(nd):
            if not isinstance(s, Split):
                continue
            want = list(have)
            want[k] = s
            local = layout.local_shape(shape, tuple(want), mesh.shape, mesh.coord(self.device))
            x = self.add(COLLECTIVE_BY_KIND["slice"].make([x], from_tt((local, dt)), mesh=SymbolRef(mesh.name),
                                                          **{"from": tuple(have)}, to=tuple(want),
                                                          bytes_per_device=0, id=self.take_id()),
                         loc, hint).results[0]
            have = want
        return x

    def take_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    # -- comm ops ---------------------------------------------------------------------------------------------
    def collective(self, op: CollectiveOp) -> None:
        vals = op.attr_values()
        mesh = self.meshes[vals["mesh"].name]
        if self.device not in mesh:
            return
        x = self.values[op.operands[0]]
        shape, dt = to_tt(op.results[0].type)
        local_out = layout.local_shape(shape, vals["to"], mesh.shape, mesh.coord(self.device))
        # the group follows from the mesh and the axis the collective changes
        ident = self.take_id() if _is_slice(op) else self.comm_ids[op]
        new = type(op).make([x], from_tt((local_out, dt)), **vals, id=ident)
        self.values[op.results[0]] = self.add(new, op.location, op.results[0].name_hint).results[0]

    def send_recv(self, op: SendRecvOp) -> None:
        vals = op.attr_values()
        src, dst = self.meshes[vals["mesh"].name], self.meshes[vals["to_mesh"].name]
        peers = {"mesh": vals["mesh"], "to_mesh": vals["to_mesh"], "id": self.comm_ids[op]}
        if self.device in src:
            self.add(SendOp.make([self.values[op.operands[0]]], **peers), op.location)
        if self.device in dst:
            shape, dt = to_tt(op.results[0].type)
            local = layout.local_shape(shape, vals["to"], dst.shape, dst.coord(self.device))
            new = RecvOp.make([], from_tt((local, dt)), **peers)
            self.values[op.results[0]] = self.add(new, op.location, op.results[0].name_hint).results[0]


def result_layout(func: FuncOp, v: SSAValue, d: dict[str, Attribute]) -> tuple[str, NdSbp]:
    """The layout a returned value of a boxed function has (insert-boxing made it the result's own when one was
    asked)."""
    owner = v.owner
    if isinstance(owner, FlowOp):
        return op_mesh(owner, func), _layout(owner.attributes[SBP])
    if isinstance(owner, CommOp):
        return comm_result_layout(owner, func)
    return value_mesh(d, func), value_sbp(arg_attrs(func)[v.index])


def _is_slice(op: Operation) -> bool:
    return isinstance(op, CollectiveOp) and op.KIND == "slice"


def _micro_tag(op: Operation) -> Attribute | None:
    """The op's `micro` tag; a comm op without one (insert-boxing writes none) moves a value of its producer's."""
    while MICRO not in op.attributes:
        if not isinstance(op, CommOp) or not op.operands or not isinstance(op.operands[0].owner, Operation):
            return None
        op = op.operands[0].owner
    return op.attributes[MICRO]


def _suffix(hint: str | None, what: str) -> str | None:
    return f"{hint}.{what}" if hint else None


def _norm(axes, rank: int) -> list[int]:
    return [a % rank for a in axes]


def _count(shape, axes) -> int:
    rank = len(shape)
    n = 1
    for a in _norm(axes, rank):
        n *= shape[a]
    return n


def _dict(d: dict[str, Attribute]) -> DictionaryAttr:
    return DictionaryAttr(d)


def _int_list(v: list[int]) -> DenseArrayBase:
    return DenseArrayBase.from_list(i64, v)


"""partition: SPMD lowering of a boxed logical function to one program per device, on local shapes.

Each device gets a function `@<name>.dev<k>` (attributes `device = k`, `of = @<name>`) holding the ops placed
on a mesh that contains it, with the local shape of every value (fir.distribution.layout). Everything that depends on the
device's position is written out as constants: the offsets of comm.slice (lowered to flow.slice), the scale
of a mean over a split axis, the offset of an iota along a split axis, the piece of a split constant, the
`group` of each collective and the peer of each comm.send / comm.recv. Arguments and results keep their
logical index (`args` / `results` on the function, when not all of them are on the device) and carry their
`sbp` and `mesh`, so a runtime can scatter inputs and gather outputs. Every op made for an op tagged `micro = k`
(the microbatch pass) is tagged too; a comm op without a tag takes the tag of the value it moves.
"""

from __future__ import annotations

import numpy as np
from xdsl.dialects.builtin import ArrayAttr, DenseArrayBase, DictionaryAttr, FunctionType, SymbolRefAttr, i64
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue

from fir.distribution import layout
from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.base import from_tt, to_tt
from fir.dialects.comm import CollectiveOp, CommOp, RecvOp, SendOp, SendRecvOp
from fir.dialects.flow import OPS_BY_NAME, FlowOp
from fir.dialects.plan import MICRO
from fir.dialects.sbp import OP_ATTRS, SBP, SBP_IN
from fir.distribution.placement import (ARGS, DEVICE, OF, RESULTS, comm_result_layout, arg_attrs, int_attr,
                                        layout_attrs, lookup_mesh, op_mesh, res_attrs, value_mesh, value_sbp)
from fir.distribution.sbp import Mesh, NdSbp, Split, format_nd
from fir.distribution.rules import nd_signatures, require_rule, why_invalid


def _layout(nd_attr: Attribute) -> NdSbp:
    return OP_ATTRS[SBP].to_python(nd_attr)


def _devices(func: FuncOp, meshes: dict[str, Mesh]) -> list[int]:
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
    return sorted({dev for n in names if n in meshes for dev in meshes[n].devices})


def partition_function(func: FuncOp, meshes: dict[str, Mesh]) -> list[FuncOp]:
    _check_boxed(func, meshes)
    return [DeviceBuilder(func, meshes, d).build() for d in _devices(func, meshes)]


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


class DeviceBuilder:
    """Builds the program of one device."""

    def __init__(self, func: FuncOp, meshes: dict[str, Mesh], device: int):
        self.func = func
        self.meshes = meshes
        self.device = device
        self.values: dict[SSAValue, SSAValue] = {}
        self.block = Block()
        self.comm_ids: dict[Operation, int] = {}
        # The logical op each op of the device program was made for (the microbatch pass stitches by it).
        self.origin: dict[Operation, Operation] = {}
        self.source: Operation | None = None

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
            if self.device not in mesh.devices:
                continue
            nd = value_sbp(d)
            local = self.block.insert_arg(self.local_type(a.type, nd, mesh), len(self.block.args))
            local.name_hint = a.name_hint
            self.values[a] = local
            arg_dicts.append(layout_attrs(nd, mesh.name))
            arg_index.append(i)
        next_id = 0
        for op in src_block.ops:
            # comm.slice becomes a local flow.slice: only ops that still communicate need an id.
            if isinstance(op, CommOp) and not (isinstance(op, CollectiveOp) and op.KIND == "slice"):
                self.comm_ids[op] = next_id
                next_id += 1
        res_types, res_dicts, res_index = [], [], []
        for op in src_block.ops:
            self.source = op
            if isinstance(op, ReturnOp):
                outs = []
                for i, (v, d) in enumerate(zip(op.operands, res_attrs(func))):
                    if v in self.values:
                        outs.append(self.values[v])
                        res_types.append(outs[-1].type)
                        mesh_name, nd = self.result_layout(v, d)
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
        name = f"{func.sym_name.data}.dev{self.device}"
        dev = FuncOp(name, FunctionType.from_lists([a.type for a in self.block.args], res_types),
                     Region(self.block),
                     arg_attrs=ArrayAttr([_dict(d) for d in arg_dicts]) if arg_dicts else None,
                     res_attrs=ArrayAttr([_dict(d) for d in res_dicts]) if res_dicts else None)
        dev.location = func.location
        dev.attributes[DEVICE] = int_attr(self.device)
        dev.attributes[OF] = SymbolRefAttr(func.sym_name.data)
        n_args, n_res = len(func.function_type.inputs.data), len(func.function_type.outputs.data)
        if arg_index != list(range(n_args)):
            dev.attributes[ARGS] = _int_list(arg_index)
        if res_index != list(range(n_res)):
            dev.attributes[RESULTS] = _int_list(res_index)
        return dev

    def result_layout(self, v: SSAValue, d: dict[str, Attribute]) -> tuple[str, NdSbp]:
        """The layout a returned value has (insert-boxing made it the result's own when one was asked)."""
        owner = v.owner
        if isinstance(owner, FlowOp):
            return op_mesh(owner, self.func), _layout(owner.attributes[SBP])
        if isinstance(owner, CommOp):
            return comm_result_layout(owner, self.func)
        return value_mesh(d, self.func), value_sbp(arg_attrs(self.func)[v.index])

    # -- flow ops ---------------------------------------------------------------------------------------------
    def flow(self, op: FlowOp) -> None:
        mesh = self.mesh_of(op_mesh(op, self.func), f"'{op.name}'", op)
        if self.device not in mesh.devices:
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
            # mean over a split axis: the local mean weighted by this device's share of the reduced elements.
            result = self.scaled(cls, operands, attrs, local_out, dt, loc, hint,
                                 _count(operands[0].type.get_shape(), attrs["axes"]),
                                 _count(op.operands[0].type.get_shape(), attrs["axes"]))
        elif op.name == "flow.cross_entropy" and attrs["reduction"] == "mean" and split_in:
            rows_local = int(np.prod(operands[1].type.get_shape(), dtype=np.int64))
            rows = int(np.prod(op.operands[1].type.get_shape(), dtype=np.int64))
            result = self.scaled(cls, operands, attrs, local_out, dt, loc, hint, rows_local, rows)
        elif op.name == "flow.iota":
            ax = attrs["axis"] % len(out_shape)
            block = layout.local_block(out_shape, out_nd, mesh.shape, coord)
            if block[ax][0]:
                local = self.add(cls.make([], from_tt((local_out, dt)), **attrs), loc, _suffix(hint, "local"))
                off = self.add(OPS_BY_NAME["flow.fill"].make([], from_tt(((), dt)), value=float(block[ax][0])), loc,
                               _suffix(hint, "offset"))
                result = self.add(OPS_BY_NAME["flow.add"].make([local.results[0], off.results[0]]), loc, hint).results[0]
            else:
                result = self.add(cls.make([], from_tt((local_out, dt)), **attrs), loc, hint).results[0]
        elif op.name == "flow.constant":
            block = layout.local_block(out_shape, out_nd, mesh.shape, coord)
            value = np.asarray(attrs["value"]) if np.ndim(attrs["value"]) else attrs["value"]
            if np.ndim(value):
                value = np.broadcast_to(value, out_shape)[tuple(slice(o, o + n) for o, n in block)].tolist()
            result = self.add(cls.make([], from_tt((local_out, dt)), value=value), loc, hint).results[0]
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

    # -- comm ops ---------------------------------------------------------------------------------------------
    def collective(self, op: CollectiveOp) -> None:
        vals = op.attr_values()
        mesh = self.meshes[vals["mesh"].name]
        if self.device not in mesh.devices:
            return
        axis, _, dst = op.transition()
        x = self.values[op.operands[0]]
        shape, dt = to_tt(op.results[0].type)
        local_out = layout.local_shape(shape, vals["to"], mesh.shape, mesh.coord(self.device))
        hint = op.results[0].name_hint
        if op.KIND == "slice":
            # B -> S(i) moves nothing: the device keeps its piece, at offsets known here.
            assert isinstance(dst, Split)
            have = x.type.get_shape()
            start = [0] * len(have)
            limit = list(have)
            off, n = layout.piece(have[dst.axis], mesh.shape[axis], mesh.coord(self.device)[axis])
            start[dst.axis], limit[dst.axis] = off, off + n
            new = OPS_BY_NAME["flow.slice"].make([x], start=start, limit=limit)
        else:
            new = type(op).make([x], from_tt((local_out, dt)), **vals, group=mesh.group(self.device, axis),
                                id=self.comm_ids[op])
        self.values[op.results[0]] = self.add(new, op.location, hint).results[0]

    def send_recv(self, op: SendRecvOp) -> None:
        vals = op.attr_values()
        src, dst = self.meshes[vals["mesh"].name], self.meshes[vals["to_mesh"].name]
        ident = self.comm_ids[op]
        if self.device in src.devices:
            for target in _targets(src, dst, self.device):
                self.add(SendOp.make([self.values[op.operands[0]]], to_device=target, id=ident), op.location)
        if self.device in dst.devices:
            shape, dt = to_tt(op.results[0].type)
            local = layout.local_shape(shape, vals["to"], dst.shape, dst.coord(self.device))
            new = RecvOp.make([], from_tt((local, dt)), from_device=_source(src, dst, self.device), id=ident)
            self.values[op.results[0]] = self.add(new, op.location, op.results[0].name_hint).results[0]


def _micro_tag(op: Operation) -> Attribute | None:
    """The op's `micro` tag; a comm op without one (insert-boxing writes none) moves a value of its producer's."""
    while MICRO not in op.attributes:
        if not isinstance(op, CommOp) or not op.operands or not isinstance(op.operands[0].owner, Operation):
            return None
        op = op.operands[0].owner
    return op.attributes[MICRO]


def _suffix(hint: str | None, what: str) -> str | None:
    return f"{hint}.{what}" if hint else None


def _source(src: Mesh, dst: Mesh, device: int) -> int:
    """The device of `src` that sends to `device` of `dst`: the same coordinate, or (between meshes of
    different shapes, where the value is broadcast) index j mod |src|."""
    if src.shape == dst.shape:
        return src.device_at(dst.coord(device))
    return src.devices[dst.devices.index(device) % src.size]


def _targets(src: Mesh, dst: Mesh, device: int) -> list[int]:
    return [t for t in dst.devices if _source(src, dst, t) == device]


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


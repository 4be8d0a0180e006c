"""insert-boxing: every place where a value's layout differs from what its consumer needs gets comm ops.

After sbp-infer each op states the layout it needs of every operand (`sbp_in`, on its mesh) and each function
result may ask for one (`sbp`, `mesh` in the result's attributes). Where the producer's layout differs, the
cheapest path of one-mesh-axis steps (fir.distribution.boxing) becomes comm ops in front of the first consumer; later
consumers that need the same layout share them. Moves between meshes go through comm.send_recv.
"""

from __future__ import annotations

from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Operation, SSAValue

from fir.dialects.attr_schema import SymbolRef
from fir.distribution.boxing import Step, boxing_path, transfer_path
from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.base import to_tt
from fir.dialects.comm import COLLECTIVE_BY_KIND, CommOp, SendRecvOp
from fir.dialects.flow import FlowOp
from fir.dialects.sbp import OP_ATTRS, SBP, SBP_IN
from fir.distribution.inference import Layout
from fir.distribution.placement import (comm_result_layout, arg_attrs, lookup_mesh, op_mesh, res_attrs, value_mesh,
                                        value_sbp)
from fir.distribution.sbp import Mesh, NdSbp, format_nd


class _Boxer:
    """Converts values of one function, sharing converted values between consumers."""

    def __init__(self, func: FuncOp, meshes: dict[str, Mesh]):
        self.func = func
        self.meshes = meshes
        self.layouts: dict[SSAValue, Layout] = {}
        self.converted: dict[tuple[SSAValue, str, NdSbp], SSAValue] = {}

    def convert(self, v: SSAValue, dst: Layout, before: Operation) -> SSAValue:
        """The value `v` in layout `dst`, inserting comm ops before `before` when needed."""
        src = self.layouts[v]
        if src == dst:
            return v
        key = (v, dst[0].name, dst[1])
        if key in self.converted:
            return self.converted[key]
        (sm, snd), (dm, dnd) = src, dst
        shape, dtype = to_tt(v.type)
        if sm == dm:
            path = boxing_path(snd, dnd, shape, dtype, sm.shape)
            if path is None:
                raise FirError(f"cannot convert a value from {format_nd(snd)} to {format_nd(dnd)} on mesh @{sm.name}",
                               loc_of(before.location))
            out = self._steps(v, path, sm, before)
        else:
            t = transfer_path(sm.shape, snd, dm.shape, dnd, shape, dtype, sm.size)
            if t is None:
                raise FirError(f"cannot move a value from @{sm.name} {format_nd(snd)} to @{dm.name} {format_nd(dnd)}",
                               loc_of(before.location))
            pre, x_src, x_dst, nbytes, post = t
            out = self._steps(v, pre, sm, before)
            op = SendRecvOp.make([out], out.type, mesh=SymbolRef(sm.name), to_mesh=SymbolRef(dm.name),
                                 **{"from": x_src, "to": x_dst}, bytes_per_device=nbytes)
            self._insert(op, v, before)
            out = self._steps(op.results[0], post, dm, before)
        self.converted[key] = out
        self.layouts[out] = dst
        return out

    def _steps(self, v: SSAValue, steps: list[Step], mesh: Mesh, before: Operation) -> SSAValue:
        for step in steps:
            cls = COLLECTIVE_BY_KIND[step.kind]
            op = cls.make([v], v.type, mesh=SymbolRef(mesh.name), **{"from": step.src, "to": step.dst},
                          bytes_per_device=step.bytes_per_device)
            self._insert(op, v, before)
            v = op.results[0]
        return v

    def _insert(self, op: Operation, origin: SSAValue, before: Operation) -> None:
        op.location = before.location
        if origin.name_hint:
            op.results[0].name_hint = origin.name_hint if origin.name_hint.endswith(".b") else origin.name_hint + ".b"
        assert before.parent is not None
        before.parent.insert_op_before(op, before)


def box_function(func: FuncOp, meshes: dict[str, Mesh]) -> None:
    boxer = _Boxer(func, meshes)
    block = func.body.blocks.first
    assert block is not None
    for i, (a, d) in enumerate(zip(block.args, arg_attrs(func))):
        mesh = lookup_mesh(meshes, value_mesh(d, func), f"argument {i} of @{func.sym_name.data}", func)
        nd = value_sbp(d)
        if nd is None:
            raise FirError(f"argument {i} of @{func.sym_name.data} has no SBP: run sbp-infer before insert-boxing",
                           loc_of(func.location))
        boxer.layouts[a] = (mesh, nd)
    for op in list(block.ops):
        if isinstance(op, ReturnOp):
            for i, (v, d) in enumerate(zip(list(op.operands), res_attrs(func))):
                nd = value_sbp(d)
                if nd is None:
                    continue
                mesh = lookup_mesh(meshes, value_mesh(d, func), f"result {i} of @{func.sym_name.data}", op)
                op.operands[i] = boxer.convert(v, (mesh, nd), op)
            continue
        if isinstance(op, CommOp):
            # Already boxed (the pass is idempotent): the comm op's result has its `to` layout.
            target, nd = comm_result_layout(op, func)
            boxer.layouts[op.results[0]] = (meshes[target], nd)
            continue
        assert isinstance(op, FlowOp)
        if SBP not in op.attributes:
            raise FirError(f"'{op.name}' has no SBP: run sbp-infer before insert-boxing", loc_of(op.location))
        mesh = lookup_mesh(meshes, op_mesh(op, func), f"'{op.name}'", op)
        needs = OP_ATTRS[SBP_IN].to_python(op.attributes[SBP_IN]) if SBP_IN in op.attributes else []
        for i, (v, nd) in enumerate(zip(list(op.operands), needs)):
            op.operands[i] = boxer.convert(v, (mesh, nd), op)
        boxer.layouts[op.results[0]] = (mesh, OP_ATTRS[SBP].to_python(op.attributes[SBP]))

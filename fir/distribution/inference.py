"""sbp-infer: give every value of a distributed function an SBP, choosing per op the cheapest signature.

OneFlow's greedy rule: ops are visited in program order; for each, every valid nd-signature of the op on its
mesh (fir.distribution.rules) is priced by the boxing its operands would need to reach the signature's input layouts
(fir.distribution.boxing, bytes per device); the cheapest wins, ties going to the signature that needs no boxing op at all,
then to the one with fewer partial results, then to rule order. User hints (an op's `sbp`, an argument's `sbp`)
are constraints. The chosen signature is written on the op as `sbp`, `sbp_in` and `sbp_cost`.
"""

from __future__ import annotations

import itertools
import sys

from xdsl.dialects.builtin import ArrayAttr
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import SSAValue

from fir.distribution.boxing import boxing_path, transfer_path
from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.base import to_tt
from fir.dialects.flow import FlowOp
from fir.dialects.sbp import MESH, SBP, SBP_COST, SBP_IN, OP_ATTRS, nd_to_attr
from fir.distribution.layout import check_nd
from fir.distribution.placement import (arg_attrs, func_mesh, int_attr, layout_attrs, lookup_mesh, op_mesh,
                                        res_attrs, set_arg_attrs, set_res_attrs, symbol_name, value_mesh, value_sbp)
from fir.distribution.sbp import B, Mesh, NdSbp, Partial, S, format_nd
from fir.distribution.rules import NdSignature, nd_signatures, require_rule, why_invalid

# Where a value lives: its mesh and its nd-SBP there.
Layout = tuple[Mesh, NdSbp]


def conversion(src: Layout, dst: Layout, shape: tuple[int, ...], dtype: str) -> tuple[float, int]:
    """(bytes per device, number of comm ops) to move a value from one layout to another; inf when impossible."""
    (sm, snd), (dm, dnd) = src, dst
    if sm == dm:
        path = boxing_path(snd, dnd, shape, dtype, sm.shape)
        if path is None:
            return float("inf"), 0
        return float(sum(s.bytes_per_device for s in path)), len(path)
    t = transfer_path(sm.shape, snd, dm.shape, dnd, shape, dtype, sm.size)
    if t is None:
        return float("inf"), 0
    pre, _, _, nbytes, post = t
    return float(sum(s.bytes_per_device for s in pre) + nbytes + sum(s.bytes_per_device for s in post)), \
        len(pre) + 1 + len(post)


def _candidate_text(sig: NdSignature) -> str:
    ins = ", ".join(format_nd(nd) for nd in sig.ins)
    return f"({ins}) -> {format_nd(sig.out)}" if sig.ins else f"() -> {format_nd(sig.out)}"


def _moved_layout(src: Layout, dest: Mesh, tt: tuple[tuple[int, ...], str]) -> NdSbp:
    """The layout on `dest` that a value moves to most cheaply (a result placed on another mesh than the one that
    computes it): splits and broadcasts only, so a partial value is reduced before it moves; the producer's own
    layout wins a tie."""
    shape, dtype = tt
    choices = [B, *(S(k) for k in range(len(shape)))]
    best: tuple[float, bool, NdSbp] | None = None
    for nd in itertools.product(choices, repeat=len(dest.shape)):
        if check_nd(shape, nd, dest.shape) is not None:
            continue
        key = (conversion(src, (dest, nd), shape, dtype)[0], nd != src[1], nd)
        if best is None or key[:2] < best[:2]:
            best = key
    return best[2] if best is not None else (B,) * len(dest.shape)


def infer_function(func: FuncOp, meshes: dict[str, Mesh], report: bool) -> None:
    layouts: dict[SSAValue, Layout] = {}
    block = func.body.blocks.first
    assert block is not None
    args = arg_attrs(func)
    for i, (a, d) in enumerate(zip(block.args, args)):
        mesh = lookup_mesh(meshes, value_mesh(d, func), f"argument {i} of @{func.sym_name.data}", func)
        nd = value_sbp(d) or (B,) * len(mesh.shape)
        layouts[a] = (mesh, nd)
        d.update(layout_attrs(nd))
    set_arg_attrs(func, args)

    for op in block.ops:
        if isinstance(op, ReturnOp):
            results = res_attrs(func)
            for i, (v, d) in enumerate(zip(op.operands, results)):
                mesh, nd = layouts[v]
                if value_sbp(d) is not None:
                    continue
                own = symbol_name(d.get(MESH))
                if own is None or own == mesh.name:  # a result stays where it is computed unless placed elsewhere
                    d.update(layout_attrs(nd, None if mesh.name == func_mesh(func) else mesh.name))
                else:
                    dest = lookup_mesh(meshes, own, f"result {i} of @{func.sym_name.data}", func)
                    d.update(layout_attrs(_moved_layout((mesh, nd), dest, to_tt(v.type))))
            set_res_attrs(func, results)
            continue
        if not isinstance(op, FlowOp):
            raise FirError(f"sbp-infer works on the logical program; '{op.name}' is already distributed "
                           "(run sbp-infer before insert-boxing and partition)", loc_of(op.location))
        mesh = lookup_mesh(meshes, op_mesh(op, func), f"'{op.name}'", op)
        _choose(op, mesh, layouts, report)


def _choose(op: FlowOp, mesh: Mesh, layouts: dict[SSAValue, Layout], report: bool) -> None:
    require_rule(op)
    ins = [to_tt(v.type) for v in op.operands]
    out_shape, dtype = to_tt(op.results[0].type)
    attrs = op.attr_values()
    want_out = OP_ATTRS[SBP].to_python(op.attributes[SBP]) if SBP in op.attributes else None
    want_in = OP_ATTRS[SBP_IN].to_python(op.attributes[SBP_IN]) if SBP_IN in op.attributes else None
    cands = nd_signatures(op.name, [s for s, _ in ins], out_shape, attrs, mesh.shape)
    allowed = [c for c in cands if (want_out is None or c.out == want_out) and (want_in is None or list(c.ins) == want_in)]
    if not allowed:
        why = why_invalid(op.name, [s for s, _ in ins], out_shape, attrs, mesh.shape, want_out,
                          want_in if want_in is not None else [None] * len(ins))
        wanted = f"giving {format_nd(want_out)}" if want_out is not None else ""
        if want_in is not None:
            wanted += (" and " if wanted else "") + "taking " + ", ".join(format_nd(n) for n in want_in)
        raise FirError(f"'{op.name}' has no SBP signature on mesh @{mesh.name} {wanted}: {why}", loc_of(op.location))

    scored = []
    for index, sig in enumerate(allowed):
        total, steps = 0.0, 0
        for v, need, (shape, dt) in zip(op.operands, sig.ins, ins):
            cost, n = conversion(layouts[v], (mesh, need), shape, dt)
            total += cost
            steps += n
        partial = sum(isinstance(s, Partial) for s in sig.out)
        scored.append(((total, steps, partial, index), sig))
    scored.sort(key=lambda x: x[0])
    (best_cost, *_), best = scored[0]
    if best_cost == float("inf"):
        raise FirError(f"'{op.name}': no signature on mesh @{mesh.name} can be reached from its operands' layouts "
                       f"({', '.join(format_nd(layouts[v][1]) for v in op.operands)})", loc_of(op.location))
    if report:
        loc = loc_of(op.location)
        where = f"{loc.filename}:{loc.line}" if loc is not None else "?"
        lines = [f"{where}: {op.name} on @{mesh.name}:"]
        for (cost, steps, _, _), sig in scored:
            mark = "*" if sig is best else " "
            c = "unreachable" if cost == float("inf") else f"{int(cost)} bytes, {steps} comm op(s)"
            lines.append(f"  {mark} {_candidate_text(sig)}: {c}")
        print("\n".join(lines), file=sys.stderr)
    layouts[op.results[0]] = (mesh, best.out)
    op.attributes[SBP] = nd_to_attr(best.out)
    if op.operands:
        op.attributes[SBP_IN] = ArrayAttr([nd_to_attr(nd) for nd in best.ins])
    op.attributes[SBP_COST] = int_attr(int(best_cost))

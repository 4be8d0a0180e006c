"""Elementwise kernels: one flow op, or a `flow.fused` group of them, as one grid-stride loop that reads each
input element once and writes the output once.

A group is a DAG of unary, cast, binary, broadcast_to and fill ops. Every value in it broadcasts to the
group's output shape, so each thread computes its output element from the inputs at the broadcast
coordinates; an intermediate lives in a register, rounded to its dtype as the reference rounds it."""

from __future__ import annotations

import math
from collections.abc import Sequence

from xdsl.ir import Operation, SSAValue

from fir.codegen.common import (
    THREADS,
    blocks_for,
    broadcast_offset,
    compute_type,
    float_constant,
    grid_stride,
    load,
    round_to,
    store,
    tensor_param,
)
from fir.codegen.kernel_ir import BinOp, Cast, Decl, Expr, Kernel, Stmt, Var, call, float_lit, lit
from fir.dialects.base import to_tt
from fir.dialects.flow import BroadcastToOp, CastOp, FillOp, FusedOp

_FLOAT_UNARY = {"flow.exp": "expf", "flow.log": "logf", "flow.sqrt": "sqrtf", "flow.tanh": "tanhf",
                "flow.sigmoid": "fir_sigmoid", "flow.erf": "erff"}
_COMPARE = {"flow.greater": ">", "flow.equal": "=="}


def scalar(op: Operation, args: Sequence[Expr]) -> Expr:
    """The value of one elementwise op at one element, in its result's compute type, from its operands'."""
    dt = to_tt(op.results[0].type)[1]
    name = op.name
    if name in _FLOAT_UNARY:
        return call(_FLOAT_UNARY[name], args[0])
    if name == "flow.rsqrt":
        return BinOp("/", float_lit(1.0), call("sqrtf", args[0]))
    if name == "flow.neg":
        return call("fir_neg", args[0])
    if name == "flow.relu":
        return call("fir_relu", args[0])
    if name == "flow.gelu":
        return call("fir_gelu_tanh" if op.attr_values()["approximate"] == "tanh" else "fir_gelu_erf", args[0])
    if name in ("flow.add", "flow.sub", "flow.mul"):
        return call("fir_" + name[5:], *args)
    if name in ("flow.max", "flow.min"):
        return call("fir_" + name[5:], *args)
    if name == "flow.div":
        return BinOp("/", args[0], args[1])
    if name == "flow.pow":
        return call("powf", *args)
    if name in _COMPARE:
        return BinOp(_COMPARE[name], args[0], args[1])
    if isinstance(op, CastOp):
        src = to_tt(op.operands[0].type)[1]
        if dt == "i1":
            return BinOp("!=", args[0], Cast(compute_type(src), lit(0)))
        return Cast(compute_type(dt), args[0]) if compute_type(dt) != compute_type(src) else args[0]
    if isinstance(op, BroadcastToOp):
        return args[0]
    if isinstance(op, FillOp):
        v = op.attr_values()["value"]
        if dt in ("f32", "f16", "bf16"):
            return float_constant(v, dt)
        if dt == "i1":
            return lit(bool(v))
        return Cast(compute_type(dt), lit(int(v)))
    raise ValueError(f"{name} is not elementwise")


def elementwise_kernel(name: str, op: Operation) -> Kernel:
    """The kernel of one fusible flow op or of a flow.fused group."""
    if isinstance(op, FusedOp):
        inputs: list[SSAValue] = list(op.body.block.args)
        body_ops = op.body_ops()
        output = op.body.block.last_op.operands[0]
    else:
        inputs, body_ops, output = list(op.operands), [op], op.results[0]
    out_shape, out_dt = to_tt(output.type)
    n = math.prod(out_shape)
    params = [tensor_param("out", out_dt, const=False)]
    params += [tensor_param(f"in{i}", to_tt(v.type)[1]) for i, v in enumerate(inputs)]
    idx = Var("i")
    values: dict[SSAValue, Expr] = {}
    stmts: list[Stmt] = []
    for k, v in enumerate(inputs):
        if not v.uses:  # a fused group's argument no body op reads
            continue
        shape, dt = to_tt(v.type)
        var = Var(f"a{k}")
        stmts.append(Decl(compute_type(dt), var, load(params[k + 1], broadcast_offset(idx, out_shape, shape)),
                          const=True))
        values[v] = var
    for j, bop in enumerate(body_ops):
        dt = to_tt(bop.results[0].type)[1]
        value = scalar(bop, [values[o] for o in bop.operands])
        value = round_to(dt, value)
        var = Var(f"t{j}")
        stmts.append(Decl(compute_type(dt), var, value, const=True))
        values[bop.results[0]] = var
    stmts.append(store(params[0], out_dt, idx, values[output]))
    ops = "+".join(o.name[5:] for o in body_ops)
    return Kernel(name, params, [grid_stride(idx, n, stmts)], (blocks_for(n), 1, 1), (THREADS, 1, 1),
                  comment=f"elementwise {ops} -> {out_dt}[{'x'.join(map(str, out_shape))}]")


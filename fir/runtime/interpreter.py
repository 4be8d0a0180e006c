"""Reference execution: a function's flow ops run in program order, each through its numpy kernel."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import SSAValue

from fir import progress
from fir.dialects import dtypes
from fir.syntax.diagnostics import FirError, SourceLoc, loc_of
from fir.dialects.base import to_tt
from fir.dialects.flow import FlowOp, FusedOp
from fir.runtime.reference import KernelError, evaluate


def evaluate_op(op: FlowOp, inputs: list[np.ndarray]) -> np.ndarray:
    """Compute one flow op on numpy inputs with fir.runtime.reference's semantics; a flow.fused group runs its body
    op by op, each result rounded to its dtype as the unfused ops would be. The result is a fresh array."""
    if isinstance(op, FusedOp):
        env = dict(zip(op.body.block.args, inputs))
        for inner in op.body_ops():
            env[inner.results[0]] = evaluate_op(inner, [env[v] for v in inner.operands])
        return np.array(env[op.body.block.last_op.operands[0]])  # a copy, even when the body yields an argument
    shape, dt = to_tt(op.results[0].type)
    return evaluate(op.name, inputs, op.attr_values(), shape, dtypes.numpy_dtype(dt))


def start_of(module: ModuleOp) -> SourceLoc | None:
    """The start of the file a module was read from (the module op's own location is the best guess)."""
    loc = loc_of(module.location)
    return SourceLoc(loc.filename, 1, 1) if loc is not None else None


def find_function(module: ModuleOp, name: str | None) -> FuncOp:
    """The entry function: `name` if given, else the only function, else @main."""
    funcs = [op for op in module.ops if isinstance(op, FuncOp)]
    names = [f.sym_name.data for f in funcs]
    if name is not None:
        name = name.lstrip("@")
        for f in funcs:
            if f.sym_name.data == name:
                return f
        raise FirError(f"no function @{name} in the program (it has: {', '.join('@' + n for n in names) or 'none'})")
    if len(funcs) == 1:
        return funcs[0]
    for f in funcs:
        if f.sym_name.data == "main":
            return f
    if not funcs:
        raise FirError("the program has no function to run", start_of(module))
    raise FirError(f"the program has several functions ({', '.join('@' + n for n in names)}) and none is "
                   "@main; choose one with --entry", loc_of(funcs[1].location))


def run_function(module: ModuleOp, func: FuncOp, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Evaluate `func` on numpy inputs with the reference semantics, op by op in program order; returns its
    results. A logical function holds flow ops and func.return only (the verifier sees to it)."""
    block = func.body.blocks.first
    assert block is not None
    env: dict[SSAValue, np.ndarray] = dict(zip(block.args, inputs))
    ops = list(block.ops)
    with progress.task("reference", total=sum(not isinstance(op, ReturnOp) for op in ops)) as step:
        for op in ops:
            if isinstance(op, ReturnOp):
                return [env[v] for v in op.operands]
            if not isinstance(op, FlowOp):
                raise FirError(f"the reference interpreter runs flow ops only, not '{op.name}'",
                               loc_of(op.location))
            try:
                env[op.results[0]] = evaluate_op(op, [env[v] for v in op.operands])
            except KernelError as e:
                raise FirError(str(e), loc_of(op.location)) from None
            step()
    raise FirError(f"@{func.sym_name.data} has no func.return", loc_of(func.location))

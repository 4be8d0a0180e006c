"""Reference execution: xDSL's interpreter runs func ops, and each flow op calls its numpy kernel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import FuncOp
from xdsl.interpreter import Interpreter, InterpreterFunctions, impl, register_impls
from xdsl.interpreters.func import FuncFunctions

from fir.dialects import dtypes
from fir.syntax.diagnostics import FirError, SourceLoc, loc_of
from fir.dialects.base import to_tt
from fir.dialects.flow import FLOW_OPS, FlowOp, FusedOp
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


def _make_impl(op_cls: type[FlowOp]):
    @impl(op_cls)
    def run(self: InterpreterFunctions, interpreter: Interpreter, op: FlowOp, args: tuple[Any, ...]):
        try:
            return (evaluate_op(op, list(args)),)
        except KernelError as e:
            raise FirError(str(e), loc_of(op.location)) from None

    return run


FlowFunctions = register_impls(
    type(
        "FlowFunctions",
        (InterpreterFunctions,),
        {f"run_{op.name.split('.', 1)[1]}": _make_impl(op) for op in (*FLOW_OPS, FusedOp)}
        | {"__doc__": "Interpreter implementations of every flow op, backed by fir.runtime.reference."},
    )
)


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
    """Evaluate `func` on numpy inputs with the reference semantics; returns its results."""
    interp = Interpreter(module)
    interp.register_implementations(FuncFunctions())
    interp.register_implementations(FlowFunctions())
    return list(interp.call_op(func.sym_name.data, tuple(inputs)))

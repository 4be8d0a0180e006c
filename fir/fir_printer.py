"""Prints IR in .fir syntax: the exact inverse of fir.fir_parser, with every result type written out."""

from __future__ import annotations

from io import StringIO

from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Operation, SSAValue

from fir.diagnostics import FirError, loc_of
from fir.dialects.flow import FlowOp
from fir.dtypes import format_type


class _Names:
    """Unique, readable value names within one function: the name hint when free, else a suffix or a number."""

    def __init__(self) -> None:
        self.names: dict[SSAValue, str] = {}
        self.used: set[str] = set()
        self.counter = 0

    def define(self, v: SSAValue) -> str:
        hint = v.name_hint
        if hint:
            name, k = hint, 0
            while name in self.used:
                k += 1
                name = f"{hint}_{k}"
        else:
            while str(self.counter) in self.used:
                self.counter += 1
            name = str(self.counter)
            self.counter += 1
        self.used.add(name)
        self.names[v] = name
        return "%" + name

    def __getitem__(self, v: SSAValue) -> str:
        return "%" + self.names[v]


def _print_op(op: Operation, names: _Names, out: StringIO) -> None:
    if isinstance(op, ReturnOp):
        if op.operands:
            vals = ", ".join(names[v] for v in op.operands)
            types = ", ".join(format_type(v.type) for v in op.operands)
            out.write(f"  func.return {vals} : {types}\n")
        else:
            out.write("  func.return\n")
        return
    if not isinstance(op, FlowOp):
        raise FirError(f"'{op.name}' has no .fir syntax; print it with -t mlir", loc_of(op.location))
    operands = ", ".join(names[v] for v in op.operands)
    attrs = []
    for name in op.FIR_ATTRS:
        text = op.format_attr(name)
        if text is not None:
            attrs.append(f"{name} = {text}")
    results = ", ".join(names.define(r) for r in op.results)
    line = f"  {results} = {op.name}"
    if operands:
        line += " " + operands
    if attrs:
        line += " {" + ", ".join(attrs) + "}"
    line += " : " + ", ".join(format_type(r.type) for r in op.results)
    out.write(line + "\n")


def print_func(func: FuncOp, out: StringIO) -> None:
    """Write one function in .fir syntax."""
    names = _Names()
    block = func.body.blocks.first
    args = []
    for a in block.args if block is not None else ():
        args.append(f"{names.define(a)}: {format_type(a.type)}")
    outs = func.function_type.outputs.data
    header = f"func.func @{func.sym_name.data}({', '.join(args)})"
    if len(outs) == 1:
        header += f" -> {format_type(outs[0])}"
    elif len(outs) > 1:
        header += " -> (" + ", ".join(format_type(t) for t in outs) + ")"
    out.write(header + " {\n")
    if block is not None:
        for op in block.ops:
            _print_op(op, names, out)
    out.write("}\n")


def _unnamed_copy(module: ModuleOp) -> ModuleOp:
    copy = module.clone()
    copy.sym_name = None
    return copy


def print_fir(module: ModuleOp) -> str:
    """The module as .fir text."""
    out = StringIO()
    first = True
    if module.sym_name is not None:
        # A named module keeps its name: print it around the functions.
        inner = print_fir(ModuleOp([]) if not module.ops else _unnamed_copy(module))
        body = "".join("  " + line if line.strip() else line for line in inner.splitlines(keepends=True))
        return f"module @{module.sym_name.data} {{\n{body}}}\n"
    for op in module.ops:
        if not isinstance(op, FuncOp):
            raise FirError(f"'{op.name}' has no .fir syntax at module level; print it with -t mlir", loc_of(op.location))
        if not first:
            out.write("\n")
        print_func(op, out)
        first = False
    return out.getvalue()

"""Prints IR in .fir syntax: the exact inverse of fir.syntax.parser, with every result type written out.

Meshes come first, then the functions; placement and SBP attributes are printed in one canonical order (the
parser stores them in it too), so printing is a fixed point in both syntaxes."""

from __future__ import annotations

from io import StringIO

from xdsl.dialects.builtin import DictionaryAttr, ModuleOp
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Attribute, Operation, SSAValue

from fir.dialects.attr_schema import AttrSpec
from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.base import FirOp
from fir.dialects.flow import FusedOp, YieldOp
from fir.dialects.sbp import MeshOp
from fir.dialects.dtypes import format_type
from fir.syntax.parser import ARG_ATTRS, FUNC_ATTRS, OP_ATTR_ORDER, OP_ATTRS, RESULT_ATTRS


class ValueNames:
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


def _print_op(op: Operation, names: ValueNames, out: StringIO, indent: str = "  ") -> None:
    if isinstance(op, YieldOp):
        out.write(f"{indent}flow.yield {names[op.operands[0]]} : {format_type(op.operands[0].type)}\n")
        return
    if isinstance(op, FusedOp):
        _print_fused(op, names, out, indent)
        return
    if isinstance(op, ReturnOp):
        if op.operands:
            vals = ", ".join(names[v] for v in op.operands)
            types = ", ".join(format_type(v.type) for v in op.operands)
            out.write(f"  func.return {vals} : {types}\n")
        else:
            out.write("  func.return\n")
        return
    if not isinstance(op, FirOp):
        raise FirError(f"'{op.name}' has no .fir syntax; print it with -t mlir", loc_of(op.location))
    operands = ", ".join(names[v] for v in op.operands)
    attrs = []
    for name in op.FIR_ATTRS:
        text = op.format_attr(name)
        if text is not None:
            attrs.append(f"{name} = {text}")
    attrs += _format_attrs(dict(op.attributes), {n: OP_ATTRS[n] for n in OP_ATTR_ORDER}, f"'{op.name}' op", op)
    line = indent
    if op.results:
        line += ", ".join(names.define(r) for r in op.results) + " = "
    line += op.name
    if operands:
        line += " " + operands
    if attrs:
        line += " {" + ", ".join(attrs) + "}"
    if op.results:
        line += " : " + ", ".join(format_type(r.type) for r in op.results)
    out.write(line + "\n")


def _print_fused(op: FusedOp, names: ValueNames, out: StringIO, indent: str) -> None:
    """%r = flow.fused(%arg = %operand, ...) {attrs} : type { body }."""
    attrs = _format_attrs(dict(op.attributes), {n: OP_ATTRS[n] for n in OP_ATTR_ORDER}, f"'{op.name}' op", op)
    result = names.define(op.results[0])
    binds = ", ".join(f"{names.define(a)} = {names[v]}" for a, v in zip(op.body.block.args, op.operands))
    line = f"{indent}{result} = flow.fused({binds})"
    if attrs:
        line += " {" + ", ".join(attrs) + "}"
    out.write(f"{line} : {format_type(op.results[0].type)} {{\n")
    for inner in op.body.block.ops:
        _print_op(inner, names, out, indent + "  ")
    out.write(f"{indent}}}\n")


def _format_attrs(attrs: dict[str, Attribute], specs: dict[str, AttrSpec], owner: str, op: Operation) -> list[str]:
    """`name = value` for each discardable attribute, in the order of `specs`."""
    for name in attrs:
        if name not in specs:
            raise FirError(f"{owner} has attribute '{name}', which has no .fir syntax; print it with -t mlir",
                           loc_of(op.location))
    out = []
    for name, spec in specs.items():
        if name in attrs:
            try:
                out.append(f"{name} = {spec.format(spec.to_python(attrs[name]))}")
            except Exception as e:  # a malformed value (only reachable without the verifier)
                raise FirError(f"{owner}: attribute '{name}' has no .fir form: {e}", loc_of(op.location)) from None
    return out


def _attr_dict_text(d: DictionaryAttr | None, specs: dict[str, AttrSpec], func: FuncOp, owner: str) -> str:
    """` {sbp = [...], mesh = @m}` for an argument or result, or nothing."""
    if d is None or not d.data:
        return ""
    return " {" + ", ".join(_format_attrs(dict(d.data), specs, owner, func)) + "}"


def print_mesh(mesh: MeshOp, out: StringIO) -> None:
    """Write one mesh declaration; the device list only when it is not 0 .. n-1."""
    shape, devices = mesh.shape_values(), mesh.device_values()
    line = f"sbp.mesh @{mesh.sym_name.data} = [{', '.join(map(str, shape))}]"
    if devices != tuple(range(len(devices))):
        line += f" {{devices = [{', '.join(map(str, devices))}]}}"
    out.write(line + "\n")


def print_func(func: FuncOp, out: StringIO) -> None:
    """Write one function in .fir syntax."""
    names = ValueNames()
    block = func.body.blocks.first
    fname = f"@{func.sym_name.data}"
    arg_dicts = list(func.arg_attrs.data) if func.arg_attrs is not None else []
    res_dicts = list(func.res_attrs.data) if func.res_attrs is not None else []
    args = []
    for i, a in enumerate(block.args if block is not None else ()):
        d = arg_dicts[i] if i < len(arg_dicts) else None
        attrs = _attr_dict_text(d, ARG_ATTRS, func, f"argument {i} of {fname}")
        args.append(f"{names.define(a)}: {format_type(a.type)}{attrs}")
    outs = func.function_type.outputs.data
    header = f"func.func {fname}({', '.join(args)})"
    res_texts = [_attr_dict_text(res_dicts[i] if i < len(res_dicts) else None, RESULT_ATTRS, func,
                                 f"result {i} of {fname}")
                 for i in range(len(outs))]
    if len(outs) == 1 and not res_texts[0]:
        header += f" -> {format_type(outs[0])}"
    elif outs:
        header += " -> (" + ", ".join(format_type(t) + r for t, r in zip(outs, res_texts)) + ")"
    fattrs = _format_attrs(dict(func.attributes), FUNC_ATTRS, f"function {fname}", func)
    if fattrs:
        header += " attributes {" + ", ".join(fattrs) + "}"
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
    meshes = [op for op in module.ops if isinstance(op, MeshOp)]
    for op in module.ops:
        if not isinstance(op, (FuncOp, MeshOp)):
            raise FirError(f"'{op.name}' has no .fir syntax at module level; print it with -t mlir", loc_of(op.location))
    # Meshes first (functions refer to them), then the functions, each in module order.
    for mesh in meshes:
        print_mesh(mesh, out)
        first = False
    for op in module.ops:
        if not isinstance(op, FuncOp):
            continue
        if not first:
            out.write("\n")
        print_func(op, out)
        first = False
    return out.getvalue()

"""The .fir frontend: lark parses the text (fir/syntax/fir.lark), and this module builds verified xDSL IR from the tree.

Each op gets a FileLineColLoc, so later diagnostics (verifier, passes) point back into the source. Result types
left out in the text are inferred with the op's own rule; result types written in the text are checked against it.
The module holds sbp.mesh declarations and functions; function bodies hold flow and comm ops (any FirOp, built by
one generic path from its attribute schema). Placement and SBP annotations on functions, arguments, results and
flow ops are stored as discardable attributes; the module-level placement check is fir.syntax.frontend's.
"""

from __future__ import annotations

import difflib
import functools
import re
from importlib.resources import files
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, ModuleOp, StringAttr, TensorType
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Attribute, Block, Region, SSAValue
from xdsl.utils.exceptions import VerifyException

from fir.dialects import dtypes
from fir.dialects.attr_schema import AttrError, AttrSpec, Call, Ident, IntListSpec, SymbolRef, describe
from fir.syntax.diagnostics import FirError, SourceLoc
from fir.syntax.lexical import check_text
from fir.dialects import comm as comm_dialect
from fir.dialects import flow as flow_dialect
from fir.dialects import plan as plan_dialect
from fir.dialects import train as train_dialect
from fir.dialects import sbp as sbp_dialect
from fir.dialects.base import FirOp, fmt_tt, from_tt, to_tt
from fir.dialects.flow import check_distribution_attrs
from fir.dialects.sbp import MeshOp
from fir.dialects.shape_inference import ShapeError

# Every op a function body may hold, by name: the flow ops, the comm ops, the plan ops and sbp.position.
OPS_BY_NAME: dict[str, type[FirOp]] = {**flow_dialect.OPS_BY_NAME, **{op.name: op for op in comm_dialect.COMM_OPS},
                                       **{op.name: op for op in plan_dialect.PLAN_OPS},
                                       sbp_dialect.PositionOp.name: sbp_dialect.PositionOp}

# Discardable attributes of functions: the placement `mesh`, and on the per-device programs that partition
# writes, the `device` they run on (on SPMD programs: the `devices`), the logical function they come `of`, and
# the logical indices of the arguments and results they hold (`args`, `results`) when not all of them.
FUNC_ATTRS: dict[str, AttrSpec] = {
    "mesh": sbp_dialect.SymbolSpec(doc="the mesh the function's ops run on unless they name another"),
    "device": sbp_dialect.IntValueSpec(doc="a per-device program: the device it runs on"),
    "devices": IntListSpec(doc="an SPMD program: the devices that run it"),
    "of": sbp_dialect.SymbolSpec(doc="a per-device program: the logical function it is a piece of"),
    "args": IntListSpec(doc="a per-device program: the logical index of each argument"),
    "results": IntListSpec(doc="a per-device program: the logical index of each result"),
    **plan_dialect.FUNC_ATTRS,
}
# Discardable attributes of arguments (their layout, and the axis micro-batches cut them along) and results.
ARG_ATTRS: dict[str, AttrSpec] = {**sbp_dialect.VALUE_ATTRS, **plan_dialect.ARG_ATTRS, **train_dialect.ARG_ATTRS}
RESULT_ATTRS: dict[str, AttrSpec] = sbp_dialect.VALUE_ATTRS
# Discardable attributes of ops: placement and SBP annotations, and a plan instruction's stream, micro-batch
# and arena offset.
OP_ATTRS: dict[str, AttrSpec] = {**sbp_dialect.OP_ATTRS, **plan_dialect.INSTR_ATTRS}
# The order the printer writes an op's discardable attributes in (after the op's own).
OP_ATTR_ORDER: tuple[str, ...] = (sbp_dialect.SBP, sbp_dialect.SBP_IN, sbp_dialect.SBP_COST, sbp_dialect.MESH,
                                  *plan_dialect.INSTR_ATTRS)
# The largest mesh the .fir syntax declares (its default device list is written out in the IR).
MAX_MESH_DEVICES = 1 << 16


def attr_message(what: str, e: Exception | str) -> str:
    """`what` followed by an attribute error: `attribute 'x' expects ...`, `attribute 'sbp': S(...) takes ...`."""
    msg = str(e)
    return f"{what} {msg}" if msg.split(" ", 1)[0] in ("expects", "must", "holds", "has") else f"{what}: {msg}"


# `-> tensor<...> {` just before a name: attributes written on a bare result type (its `{` opened the body).
_BARE_RESULT_ATTRS = re.compile(r"->\s*tensor<[^>\n]*>\s*\{\s*\Z")
_VALID_HINT = re.compile(r"[A-Za-z_$.\-][\w$.\-]*")
_NUMERIC_SUFFIX = re.compile(r"(_\d+)+$")

# Escapes in string literals (the printer writes other control characters as \uXXXX).
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r"}
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|.)")

# Human names for grammar terminals in "expected ..." messages.
_TERMINAL_NAMES = {
    "VALUE_ID": "a value (%name)",
    "DEF_ID": "a result name (%name =)",
    "OP_NAME": "an op name (dialect.op)",
    "TENSOR_TYPE": "a tensor type",
    "SYMBOL": "a symbol (@name)",
    "BARE_ID": "a name",
    "INT": "an integer",
    "FLOAT": "a float",
    "SPECIAL_FLOAT": "a float",
    "STRING": "a string",
    "$END": "end of input",
}


@functools.cache
def _lark() -> Lark:
    grammar = files("fir.syntax").joinpath("fir.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True, cache=_cache_file())


def _cache_file() -> str | bool:
    """Where lark keeps the built parser tables between runs (building them costs a quarter second of every
    start): a file in the user's cache folder, named for the lark and Python versions (lark checks the grammar's
    hash itself). False, so no cache, when that folder cannot be made."""
    import os
    import sys

    import lark

    base = os.environ.get("FIR_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fir")
    try:
        os.makedirs(base, exist_ok=True)
    except OSError:
        return False
    return os.path.join(base, f"fir-grammar-lark{lark.__version__}-py{sys.version_info[0]}{sys.version_info[1]}.cache")


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[name]
    try:
        pattern = _lark().get_terminal(name).pattern
    except KeyError:
        return name
    return f"'{pattern.value}'"


class _Builder:
    """Walks the lark tree of one source chunk and builds the module."""

    def __init__(self, filename: str, line_offset: int):
        self.filename = filename
        self.line_offset = line_offset
        self.in_fused = False  # inside a flow.fused body, where flow.yield may appear

    # -- positions -----------------------------------------------------------------------------------------
    def loc(self, node: Token | Tree | None, col_offset: int = 0) -> SourceLoc | None:
        if node is None:
            return None
        if isinstance(node, Token):
            line, col = node.line, node.column
        else:
            line, col = node.meta.line, node.meta.column
        if line is None or col is None:
            return None
        return SourceLoc(self.filename, line + self.line_offset, col + col_offset)

    def error(self, message: str, node: Token | Tree | None, col_offset: int = 0) -> FirError:
        return FirError(message, self.loc(node, col_offset))

    def string(self, tok: Token) -> str:
        """A string literal's value: its escapes (format_literal's) replaced, any other character as written."""
        def unescape(m: re.Match[str]) -> str:
            e = m.group(1)
            if e in _ESCAPES:
                return _ESCAPES[e]
            if e.startswith("u") and len(e) == 5:
                return chr(int(e[1:], 16))
            raise self.error(f"unknown escape '\\{e[0]}' in a string (fir's are \\\\, \\\", \\n, \\t, \\r and "
                             "\\uXXXX)", tok, m.start() + 1)

        return _ESCAPE.sub(unescape, str(tok)[1:-1])

    # -- types -----------------------------------------------------------------------------------------------
    def tensor_type(self, tok: Token) -> TensorType:
        text = str(tok)
        inner = text[len("tensor<") : -1]
        parts = inner.split("x")
        dt, dims = parts[-1].strip(), parts[:-1]
        if dt not in dtypes.DTYPE_NAMES:
            col = len(text) - 1 - len(parts[-1])
            raise self.error(f"unknown element type '{dt}' (fir has {', '.join(dtypes.DTYPE_NAMES)})", tok, col)
        if len(dims) > dtypes.MAX_RANK:
            raise self.error(f"tensor type of rank {len(dims)}: fir accepts ranks up to {dtypes.MAX_RANK}", tok)
        shape: list[int] = []
        col = len("tensor<")
        for d in dims:
            ds = d.strip()
            if ds == "?":
                raise self.error("dynamic dimensions ('?') are not supported: fir shapes are static", tok, col)
            if not ds.isdigit():
                raise self.error(f"bad dimension '{d}' in tensor type (expected a non-negative integer)", tok, col)
            if int(ds) > dtypes.MAX_ELEMENTS:
                raise self.error(f"dimension {ds} is too large (at most {dtypes.MAX_ELEMENTS} elements)", tok, col)
            shape.append(int(ds))
            col += len(d) + 1
        n = 1
        for d in shape:
            n *= d
        if n > dtypes.MAX_ELEMENTS:
            raise self.error(f"tensor type has {n} elements, more than fir accepts ({dtypes.MAX_ELEMENTS})", tok)
        return dtypes.tensor_type(shape, dt)

    def type_list(self, node: Tree | None) -> list[tuple[TensorType, Token]]:
        if node is None:
            return []
        return [(self.tensor_type(t), t) for t in node.children if t is not None]

    # -- attribute literals ----------------------------------------------------------------------------------
    def literal(self, node: Tree | Token) -> Any:
        kind = node.data
        kids = node.children
        if kind == "int_lit":
            return int(kids[0])
        if kind == "float_lit":
            return float(kids[0])
        if kind == "true_lit":
            return True
        if kind == "false_lit":
            return False
        if kind == "str_lit":
            return self.string(kids[0])
        if kind == "list_lit":
            return [self.literal(k) for k in kids if k is not None]
        if kind == "symbol_lit":
            return SymbolRef(str(kids[0])[1:])
        if kind == "call_lit":
            return Call(str(kids[0]), [self.literal(k) for k in kids[1:] if k is not None])
        if kind == "ident_lit":
            return Ident(str(kids[0]))
        raise AssertionError(kind)

    def attr_dict(self, node: Tree | None) -> dict[str, tuple[Any, Token, Tree]]:
        out: dict[str, tuple[Any, Token, Tree]] = {}
        if node is None:
            return out
        for entry in node.children:
            if entry is None:
                continue
            name_tok, value_node = entry.children
            name = str(name_tok)
            if name in out:
                raise self.error(f"attribute '{name}' is given twice", name_tok)
            out[name] = (self.literal(value_node), name_tok, value_node)
        return out

    # -- module and functions --------------------------------------------------------------------------------
    def module(self, tree: Tree) -> ModuleOp:
        ops: list[FuncOp | MeshOp] = []
        # Meshes and functions share one symbol table: symbol -> (its token, "mesh" or "function").
        symbols: dict[str, tuple[Token, str]] = {}
        items = tree.children
        module_name = None
        if items and items[0].data == "module":
            if len(items) > 1:
                raise self.error("a module must enclose the whole file", items[1])
            sym = items[0].children[0] if items[0].children else None
            module_name = str(sym)[1:] if isinstance(sym, Token) else None
            items = [c for c in items[0].children if isinstance(c, Tree)]
        for item in items:
            if item.data == "module":
                raise self.error("a module must enclose the whole file", item)
            kind = "mesh" if item.data == "mesh" else "function"
            name_tok = item.children[0]
            if str(name_tok) in symbols:
                first, first_kind = symbols[str(name_tok)]
                line = first.line + self.line_offset
                if first_kind == kind:
                    raise self.error(f"{kind} {name_tok} is already defined at line {line}", name_tok)
                raise self.error(f"symbol {name_tok} is already defined at line {line} by a {first_kind} "
                                 "(meshes and functions share one symbol table)", name_tok)
            symbols[str(name_tok)] = (name_tok, kind)
            ops.append(self.mesh(item) if kind == "mesh" else self.func(item))
        module = ModuleOp(ops)
        module.location = SourceLoc(self.filename, 1 + self.line_offset, 1).to_attr()
        if module_name is not None:
            module.sym_name = StringAttr(module_name)
        return module

    def mesh(self, tree: Tree) -> MeshOp:
        name_tok, shape_node, attrs_node = tree.children
        shape = self.literal(shape_node)
        example = "such as [4] or [2, 2]"
        if not isinstance(shape, list) or not shape:
            raise self.error(f"a mesh shape is a list of 1 or 2 positive integers {example}, got {describe(shape)}"
                             if not isinstance(shape, list) else f"a mesh needs at least one axis, {example}",
                             shape_node)
        for d, node in zip(shape, shape_node.children):
            if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                what = str(d) if isinstance(d, int) and not isinstance(d, bool) else describe(d)
                raise self.error(f"a mesh axis is a positive number of devices, got {what}", node)
        if len(shape) > 2:
            raise self.error(f"a mesh has 1 or 2 axes, got {len(shape)}", shape_node.children[2])
        n = 1
        for d in shape:
            n *= d
        if n > MAX_MESH_DEVICES:
            raise self.error(f"mesh of shape {shape} has {n} devices, more than fir accepts ({MAX_MESH_DEVICES})",
                             shape_node)
        attrs = self.attr_dict(attrs_node)
        for aname, (_, atok, _) in attrs.items():
            if aname != "devices":
                raise self.error(f"unknown attribute '{aname}' for sbp.mesh (known: devices)", atok)
        devices = list(range(n))
        if "devices" in attrs:
            devices, _, dnode = attrs["devices"]
            if not isinstance(devices, list):
                raise self.error(f"devices is a list of device ids (non-negative integers), got {describe(devices)}",
                                 dnode)
            seen: dict[int, int] = {}
            for i, (d, node) in enumerate(zip(devices, dnode.children)):
                if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < 2**63:
                    what = str(d) if isinstance(d, int) and not isinstance(d, bool) else describe(d)
                    raise self.error(f"a device id is a non-negative integer, got {what}", node)
                if d in seen:
                    raise self.error(f"device {d} appears twice (the devices of a mesh are distinct)", node)
                seen[d] = i
            if len(devices) != n:
                raise self.error(f"mesh of shape {shape} needs {n} devices, got {len(devices)}", dnode)
        op = MeshOp.make(str(name_tok)[1:], tuple(shape), tuple(devices))
        op.location = self.loc(tree).to_attr()
        return op

    def discardable(self, attrs: dict[str, tuple[Any, Token, Tree]], specs: dict[str, AttrSpec], kind: str,
                    owner: str) -> dict[str, Attribute]:
        """Attributes of a function, an argument or a result, checked against `specs`; errors name `owner`."""
        out: dict[str, Attribute] = {}
        for aname, (value, atok, vnode) in attrs.items():
            if aname not in specs:
                raise self.error(f"unknown {kind} attribute '{aname}' (known: {', '.join(specs)})", atok)
            try:
                out[aname] = specs[aname].to_attr(value)
            except AttrError as e:
                raise self.error(attr_message(f"attribute '{aname}' of {owner}", e), vnode) from None
        return {n: out[n] for n in specs if n in out}  # stored in the canonical order, as printed

    def func(self, tree: Tree) -> FuncOp:
        name_tok, *rest = tree.children
        args = [c for c in rest if isinstance(c, Tree) and c.data == "arg"]
        results_node = next((c for c in rest if isinstance(c, Tree) and c.data == "func_results"), None)
        fattrs_node = next((c for c in rest if isinstance(c, Tree) and c.data == "attr_dict"), None)
        stmts = [c for c in rest if isinstance(c, Tree) and c.data in ("stmt", "fused_stmt")]

        values: dict[str, SSAValue] = {}
        defs: dict[str, Token] = {}
        arg_types = []
        arg_dicts: list[dict[str, Attribute]] = []
        for a in args:
            vtok, ttok, adict = a.children
            if str(vtok) in defs:
                raise self.error(f"argument {vtok} is already defined", vtok)
            arg_types.append(self.tensor_type(ttok))
            arg_dicts.append(self.discardable(self.attr_dict(adict), ARG_ATTRS, "argument", f"argument {vtok}"))
            defs[str(vtok)] = vtok
        func_attrs = self.discardable(self.attr_dict(fattrs_node), FUNC_ATTRS, "function", f"function {name_tok}")

        block = Block(arg_types=arg_types)
        for a, barg in zip(args, block.args):
            vtok = a.children[0]
            values[str(vtok)] = barg
            self.set_hint(barg, str(vtok))
            barg.location = self.loc(vtok).to_attr()

        declared_results = None
        res_dicts: list[dict[str, Attribute]] = []
        if results_node is not None:
            declared_results = []
            for r in results_node.children:
                if r is None:
                    continue
                ttok, rdict = (r, None) if isinstance(r, Token) else r.children
                declared_results.append((self.tensor_type(ttok), ttok))
                res_dicts.append(self.discardable(self.attr_dict(rdict), RESULT_ATTRS, "result",
                                                  f"result {len(res_dicts)}"))

        ret: ReturnOp | None = None
        for stmt in stmts:
            if ret is not None:
                raise self.error("func.return must be the last op of a function", stmt)
            op = self.stmt(stmt, values, defs)
            block.add_op(op)
            if isinstance(op, ReturnOp):
                ret = op
        if ret is None:
            raise self.error(f"function {name_tok} has no func.return", name_tok)

        ret_types = [v.type for v in ret.operands]
        if declared_results is None:
            result_types = ret_types
        else:
            result_types = [t for t, _ in declared_results]
            if len(result_types) != len(ret_types):
                raise FirError(
                    f"func.return returns {len(ret_types)} value(s) but {name_tok} declares {len(result_types)} result(s)",
                    _loc_attr(ret),
                )
            for i, (want, got) in enumerate(zip(result_types, ret_types)):
                if want != got:
                    raise FirError(
                        f"func.return operand {i} has type {dtypes.format_type(got)} but {name_tok} declares "
                        f"{dtypes.format_type(want)}",
                        _loc_attr(ret),
                    )
        func = FuncOp(str(name_tok)[1:], (arg_types, result_types), Region(block),
                      arg_attrs=_dict_array(arg_dicts), res_attrs=_dict_array(res_dicts))
        func.attributes.update(func_attrs)
        func.location = self.loc(tree).to_attr()
        return func

    def set_hint(self, value: SSAValue, name: str) -> None:
        # xDSL drops one trailing _N from a hint on every print; dropping them all now makes printing a fixed point.
        hint = _NUMERIC_SUFFIX.sub("", name[1:])
        if hint and _VALID_HINT.fullmatch(hint):
            value.name_hint = hint

    # -- statements ------------------------------------------------------------------------------------------
    def stmt(self, tree: Tree, values: dict[str, SSAValue], defs: dict[str, Token]):
        if tree.data == "fused_stmt":
            return self.fused(tree, values, defs)
        results_node, name_tok, operands_node, attrs_node, types_node = tree.children
        op_name = str(name_tok)
        result_toks = list(results_node.children) if results_node is not None else []
        operand_toks = list(operands_node.children) if operands_node is not None else []
        operands = []
        for t in operand_toks:
            if str(t) not in values:
                hint = ""
                close = difflib.get_close_matches(str(t), list(values), n=1)
                if close:
                    hint = f" (did you mean {close[0]}?)"
                raise self.error(f"use of undefined value {t}{hint}", t)
            operands.append(values[str(t)])
        declared = self.type_list(types_node)
        attrs = self.attr_dict(attrs_node)

        if op_name == "func.return":
            if result_toks:
                raise self.error("func.return has no results", result_toks[0])
            for aname, (_, atok, _) in attrs.items():
                raise self.error(f"func.return takes no attributes, got '{aname}'", atok)
            if declared and len(declared) != len(operands):
                raise self.error(f"func.return has {len(operands)} operand(s) but {len(declared)} type(s)",
                                 declared[0][1])
            for (want, ttok), v in zip(declared, operands):
                if want != v.type:
                    raise self.error(f"type {dtypes.format_type(want)} does not match the operand's type "
                                     f"{dtypes.format_type(v.type)}", ttok)
            op = ReturnOp(*operands)
            op.location = self.loc(tree).to_attr()
            return op

        if op_name == flow_dialect.YieldOp.name:
            return self.yield_op(tree, name_tok, result_toks, operands, operand_toks, attrs, declared)
        if op_name == flow_dialect.FusedOp.name:
            raise self.error("flow.fused binds its operands and has a body: `%r = flow.fused(%a = %x) : "
                             "tensor<...> { ... flow.yield %v : tensor<...> }`", name_tok)
        op_cls = OPS_BY_NAME.get(op_name)
        if op_cls is None:
            close = difflib.get_close_matches(op_name, list(OPS_BY_NAME) + ["func.return"], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise self.error(f"unknown op '{op_name}'{hint}", name_tok)
        op = self.fir_op(op_cls, tree, name_tok, operands, operand_toks, attrs, declared, result_toks)
        for rtok, res in zip(result_toks, op.results):
            if str(rtok) in defs:
                first = defs[str(rtok)]
                raise self.error(f"value {rtok} is already defined at line {first.line + self.line_offset}", rtok)
            defs[str(rtok)] = rtok
            values[str(rtok)] = res
            self.set_hint(res, str(rtok))
        return op

    def yield_op(self, tree: Tree, name_tok: Token, result_toks: list[Token], operands: list[SSAValue],
                 operand_toks: list[Token], attrs: dict, declared: list) -> flow_dialect.YieldOp:
        """flow.yield %v : type, the last op of a flow.fused body."""
        if not self.in_fused:
            raise self.error("flow.yield ends a flow.fused body; a function ends with func.return", name_tok)
        if result_toks:
            raise self.error("flow.yield has no results", result_toks[0])
        for aname, (_, atok, _) in attrs.items():
            raise self.error(f"flow.yield takes no attributes, got '{aname}'", atok)
        if len(operands) != 1:
            raise self.error(f"flow.yield gives exactly one value, got {len(operands)}",
                             operand_toks[1] if len(operands) > 1 else name_tok)
        if declared and (len(declared) != 1 or declared[0][0] != operands[0].type):
            raise self.error(f"type {dtypes.format_type(declared[0][0])} does not match the operand's type "
                             f"{dtypes.format_type(operands[0].type)}", declared[0][1])
        op = flow_dialect.YieldOp.create(operands=operands)
        op.location = self.loc(tree).to_attr()
        return op

    def fused(self, tree: Tree, values: dict[str, SSAValue], defs: dict[str, Token]) -> flow_dialect.FusedOp:
        """%r = flow.fused(%a = %x, ...) {attrs} : type { body ending in flow.yield }."""
        results_node, name_tok, bindings_node, attrs_node, types_node, region_node = tree.children
        if str(name_tok) != flow_dialect.FusedOp.name:
            raise self.error(f"only flow.fused binds operands and takes a body, not '{name_tok}'", name_tok)
        result_toks = list(results_node.children)
        if len(result_toks) != 1:
            raise self.error(f"flow.fused has 1 result, but {len(result_toks)} names are bound", result_toks[1])
        declared = self.type_list(types_node)
        if len(declared) != 1:
            raise self.error(f"flow.fused has 1 result, but {len(declared)} result types are given", declared[1][1])
        operands: list[SSAValue] = []
        body_values: dict[str, SSAValue] = {}
        body_defs: dict[str, Token] = {}
        bind_toks = [b.children for b in bindings_node.children if b is not None]
        for arg_tok, value_tok in bind_toks:
            if str(value_tok) not in values:
                raise self.error(f"use of undefined value {value_tok}", value_tok)
            if str(arg_tok) in body_defs:
                raise self.error(f"argument {arg_tok} is already defined", arg_tok)
            operands.append(values[str(value_tok)])
            body_defs[str(arg_tok)] = arg_tok
        block = Block(arg_types=[v.type for v in operands])
        for (arg_tok, _), arg in zip(bind_toks, block.args):
            body_values[str(arg_tok)] = arg
            self.set_hint(arg, str(arg_tok))
        outer, self.in_fused = self.in_fused, True
        try:
            for stmt in region_node.children:
                if isinstance(block.last_op, flow_dialect.YieldOp):
                    raise self.error("flow.yield must be the last op of a flow.fused body", stmt)
                inner = self.stmt(stmt, body_values, body_defs)
                if isinstance(inner, ReturnOp):
                    raise self.error("a flow.fused body ends with flow.yield, not func.return", stmt)
                block.add_op(inner)
        finally:
            self.in_fused = outer
        last = block.last_op
        if not isinstance(last, flow_dialect.YieldOp):
            raise self.error("a flow.fused body ends with flow.yield", name_tok)
        attrs = self.attr_dict(attrs_node)
        discardable: dict[str, Attribute] = {}
        for aname, (value, atok, vnode) in sorted(attrs.items(), key=lambda kv: _attr_rank(kv[0])):
            if aname not in flow_dialect.FusedOp.DISCARDABLE:
                raise self.error(f"unknown attribute '{aname}' for flow.fused (known: "
                                 f"{', '.join(OP_ATTR_ORDER)})", atok)
            try:
                discardable[aname] = OP_ATTRS[aname].to_attr(value)
            except AttrError as e:
                raise self.error(attr_message(f"attribute '{aname}' of flow.fused", e), vnode) from None
        op = flow_dialect.FusedOp.create(operands=operands, result_types=[declared[0][0]], regions=[Region(block)],
                                         attributes=discardable)
        op.location = self.loc(tree).to_attr()
        try:
            op.verify()
        except VerifyException as e:
            raise self.error(f"flow.fused: {e}", name_tok) from None
        rtok = result_toks[0]
        if str(rtok) in defs:
            raise self.error(f"value {rtok} is already defined at line {defs[str(rtok)].line + self.line_offset}",
                             rtok)
        defs[str(rtok)] = rtok
        values[str(rtok)] = op.results[0]
        self.set_hint(op.results[0], str(rtok))
        return op

    def fir_op(self, op_cls: type[FirOp], tree: Tree, name_tok: Token, operands: list[SSAValue],
               operand_toks: list[Token], attrs: dict, declared: list, result_toks: list[Token]) -> FirOp:
        """Build any FirOp (flow or comm) from its statement: operands, attributes, result type."""
        op_name = op_cls.name
        definition = op_cls.get_irdl_definition()
        n_expected = len(definition.operands)
        n_results = len(definition.results)
        if op_cls.is_variadic():
            if not operands:
                raise self.error(f"{op_name} expects at least one operand", name_tok)
        elif len(operands) != n_expected:
            where = operand_toks[n_expected] if len(operands) > n_expected else name_tok
            raise self.error(f"{op_name} expects {n_expected} operand(s), got {len(operands)}", where)
        if n_results == 0:
            if result_toks:
                raise self.error(f"{op_name} has no result, so nothing can be bound to {result_toks[0]}",
                                 result_toks[0])
            if declared:
                raise self.error(f"{op_name} has no result, so it takes no result type", declared[0][1])
        else:
            if len(result_toks) > 1:
                raise self.error(f"{op_name} has 1 result, but {len(result_toks)} names are bound", result_toks[1])
            if not result_toks:
                raise self.error(f"the result of {op_name} must be named, e.g. `%r = {op_name} ...`", name_tok)
            if len(declared) > 1:
                raise self.error(f"{op_name} has 1 result, but {len(declared)} result types are given",
                                 declared[1][1])

        ins = [to_tt(v.type) for v in operands]
        for aname, (_, atok, _) in attrs.items():
            if aname not in op_cls.FIR_ATTRS and aname not in op_cls.DISCARDABLE:
                known = ", ".join(op_cls.FIR_ATTRS) or "none"
                close = difflib.get_close_matches(aname, [*op_cls.FIR_ATTRS, *op_cls.DISCARDABLE], n=1)
                hint = f"; did you mean '{close[0]}'?" if close and close[0] in op_cls.DISCARDABLE else ""
                raise self.error(f"unknown attribute '{aname}' for {op_name} (known: {known}{hint})", atok)
        values: dict[str, Any] = {}
        for aname, spec in op_cls.FIR_ATTRS.items():
            if aname in attrs:
                values[aname] = attrs[aname][0]
            elif spec.required:
                raise self.error(f"{op_name} needs attribute '{aname}' ({spec.kind()})", name_tok)
            elif not spec.optional:
                values[aname] = op_cls.default_attr(aname, ins)
        declared_tt = to_tt(declared[0][0]) if declared else None
        if op_cls.NEEDS_RESULT_TYPE and declared_tt is None:
            # The op's own rule names an example when it has one; the literals may need the type to be read.
            msg = f"{op_name} needs a result type, e.g. `: {fmt_tt(ins[0]) if ins else 'tensor<4x8xf32>'}`"
            try:
                op_cls.infer(ins, {}, None)
            except ShapeError as e:
                msg = str(e)
            except Exception:  # a rule that reads its attributes first: the generic message
                pass
            raise self.error(msg if msg.startswith(op_name) else f"{op_name}: {msg}", name_tok)
        # Validate literals before shape rules, so a wrong-kind literal gets a message about itself.
        props: dict[str, Attribute] = {}
        for aname, value in values.items():
            try:
                props[aname] = op_cls.attr_from_literal(aname, value, declared_tt)
            except AttrError as e:
                node = attrs[aname][2] if aname in attrs else name_tok
                raise self.error(attr_message(f"attribute '{aname}' of {op_name}", e), node) from None
            values[aname] = op_cls.FIR_ATTRS[aname].to_python(props[aname])
        discardable: dict[str, Attribute] = {}
        for aname, (value, _, vnode) in sorted(attrs.items(), key=lambda kv: _attr_rank(kv[0])):
            if aname in op_cls.DISCARDABLE:
                try:
                    discardable[aname] = OP_ATTRS[aname].to_attr(value)
                except AttrError as e:
                    raise self.error(attr_message(f"attribute '{aname}' of {op_name}", e), vnode) from None
        try:
            out = op_cls.infer(ins, values, declared_tt)
        except ShapeError as e:
            msg = str(e) if str(e).startswith(op_name) else f"{op_name}: {e}"
            raise self.error(msg, name_tok) from None
        if declared_tt is not None and declared_tt != out:
            raise self.error(
                f"{op_name}: declared result type {fmt_tt(declared_tt)} does not match the inferred type {fmt_tt(out)}",
                declared[0][1],
            )
        if discardable:
            try:
                check_distribution_attrs(discardable, [s for s, _ in ins], out[0] if out is not None else ())
            except VerifyException as e:
                raise self.error(f"{op_name}: {e}", name_tok) from None
        # Everything build() would check is established above; create() skips re-checking it.
        op = op_cls.create(operands=operands, result_types=[from_tt(out)] if out is not None else [],
                           properties=props, attributes=discardable)
        op.location = self.loc(tree).to_attr()
        return op


def _attr_rank(name: str) -> int:
    """Position of a discardable op attribute in the canonical order (the order the printer writes)."""
    return OP_ATTR_ORDER.index(name) if name in OP_ATTR_ORDER else len(OP_ATTR_ORDER)


def _dict_array(dicts: list[dict[str, Attribute]]) -> ArrayAttr | None:
    """Argument or result attributes as FuncOp stores them: one dictionary per entry, or None when all are empty."""
    if not any(dicts):
        return None
    return ArrayAttr([DictionaryAttr(d) for d in dicts])


def _loc_attr(op) -> SourceLoc | None:
    from fir.syntax.diagnostics import loc_of

    return loc_of(op.location)


def _syntax_error(e: UnexpectedInput, filename: str, text: str, line_offset: int) -> FirError:
    loc = SourceLoc(filename, (e.line if e.line and e.line > 0 else 1) + line_offset,
                    e.column if e.column and e.column > 0 else 1)
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream is not None and e.pos_in_stream < len(text) else "?"
        return FirError(f"unexpected character '{ch}'", loc)
    if isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END"):
        lines = text.split("\n")
        last = len(lines)
        # Point just after the last token: skip trailing blank and comment-only lines.
        while last > 1 and (not lines[last - 1].strip() or lines[last - 1].lstrip().startswith("//")):
            last -= 1
        loc = SourceLoc(filename, last + line_offset, len(lines[last - 1]) + 1)
        return FirError("unexpected end of input (is a '}' missing?)", loc)
    assert isinstance(e, UnexpectedToken)
    before = text[: e.token.start_pos] if e.token.start_pos is not None else ""
    after = text[e.token.end_pos :] if e.token.end_pos is not None else ""
    if e.token.type == "BARE_ID" and _BARE_RESULT_ATTRS.search(before) and re.match(r"\s*=", after):
        return FirError("attributes of a result need the parenthesised result list, e.g. "
                        "`-> (tensor<4xf32> {sbp = [B]})`", loc)
    if e.token.type == "BARE_ID" and str(e.token) == "tensor":
        return FirError("malformed tensor type: expected tensor<DIMSxDTYPE> such as tensor<2x3xf32>, on one line", loc)
    expected = sorted({_describe_terminal(t) for t in e.expected})
    got = str(e.token)
    msg = f"unexpected '{got}'"
    if expected and len(expected) <= 6:
        msg += f", expected {' or '.join(expected)}"
    return FirError(msg, loc)


def parse_fir(text: str, filename: str = "<input>", line_offset: int = 0) -> ModuleOp:
    """Parse .fir source into a module of sbp.mesh and func.func ops (over flow and comm ops); raise FirError on
    any bad input. The module-level checks (placement, symbols in MLIR input) are fir.syntax.frontend.verify_module's."""
    check_text(text, filename, line_offset)
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, filename, text, line_offset) from None
    return _Builder(filename, line_offset).module(tree)


__all__ = ["parse_fir", "OPS_BY_NAME", "FUNC_ATTRS", "ARG_ATTRS", "RESULT_ATTRS", "OP_ATTRS", "OP_ATTR_ORDER", "attr_message"]

"""Loading programs: pick the syntax (.fir or MLIR generic), parse, and verify with located diagnostics."""

from __future__ import annotations

import re

from xdsl.context import Context
from xdsl.dialects.builtin import Builtin, FileLineColLoc, IntAttr, ModuleOp, StringAttr, UnknownLoc
from xdsl.dialects.func import Func, FuncOp, ReturnOp
from xdsl.ir import Operation
from xdsl.parser import Parser
from xdsl.utils.exceptions import ParseError, VerifyException

from fir.diagnostics import FirError, SourceLoc, loc_of
from fir.dialects.flow import Flow, FlowOp, to_tt
from fir.shape_inference import ShapeError
from fir.fir_parser import parse_fir


def make_context() -> Context:
    """An xDSL context with the dialects a fir program may use."""
    ctx = Context()
    for dialect in (Builtin, Func, Flow):
        ctx.load_dialect(dialect)
    return ctx


_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_$.\-]*")
_GENERIC_START = re.compile(r'\A(\s|//[^\n]*\n)*("|builtin\.module|#|!)')


def detect_syntax(text: str) -> str:
    """'mlir' for MLIR generic text (it starts with a quoted op name or builtin.module), else 'fir'."""
    return "mlir" if _GENERIC_START.match(text) else "fir"


class _LocatingParser(Parser):
    """xDSL's MLIR parser, giving each op without an explicit loc(...) the position it was read from."""

    def __init__(self, ctx: Context, text: str, name: str, line_offset: int):
        super().__init__(ctx, text, name)
        self._fir_line_offset = line_offset

    def parse_operation(self) -> Operation:
        start = self._current_token.span.get_location()
        op = super().parse_operation()
        if isinstance(op.location, UnknownLoc):
            op.location = FileLineColLoc(
                StringAttr(start.file), IntAttr(start.line + self._fir_line_offset), IntAttr(start.col)
            )
        return op


def _check_strings_closed(text: str, filename: str, line_offset: int) -> None:
    # MLIR strings end on their line; an unclosed one makes xDSL's lexer backtrack exponentially, so catch it first.
    for i, line in enumerate(text.split("\n")):
        j, start = 0, None
        while j < len(line):
            c = line[j]
            if start is None and line.startswith("//", j):
                break
            if c == '"':
                start = j if start is None else None
            elif c == "\\" and start is not None:
                j += 1
            j += 1
        if start is not None:
            raise FirError("unterminated string", SourceLoc(filename, i + 1 + line_offset, start + 1))


def parse_mlir(text: str, filename: str, ctx: Context | None = None, line_offset: int = 0) -> ModuleOp:
    """Parse MLIR (generic or xDSL custom) text; raise FirError on bad input."""
    _check_strings_closed(text, filename, line_offset)
    parser: _LocatingParser | None = None
    try:
        parser = _LocatingParser(ctx or make_context(), text, filename, line_offset)
        module = parser.parse_module()
        if isinstance(module.location, UnknownLoc):
            module.location = SourceLoc(filename, 1 + line_offset, 1).to_attr()
        return module
    except (ValueError, VerifyException) as e:
        # xDSL checks some things while parsing without a ParseError: names (ValueError), attributes it builds
        # (VerifyException, e.g. `1 : i0`). Report them where the parser stopped.
        where = SourceLoc(filename, 1 + line_offset, 1)
        if parser is not None:
            loc = parser._current_token.span.get_location()
            where = SourceLoc(filename, loc.line + line_offset, loc.col)
        raise FirError(str(e.args[0]) if e.args else str(e), where) from None
    except ParseError as e:
        loc = e.span.get_location()
        where = SourceLoc(filename, loc.line + line_offset, loc.col)
        msg = e.msg.split("\n")[0].strip()
        undefined = re.match(r"values used but not defined: \[(%[^\],]+)", msg)
        if undefined:
            # xDSL notices undefined values only at the end: point at the first use instead.
            pattern = re.compile(re.escape(undefined.group(1)) + r"(?![\w$.\-])")
            for i, line_text in enumerate(text.split("\n")):
                use = pattern.search(line_text.split("//", 1)[0])
                if use is not None:
                    where = SourceLoc(filename, i + 1 + line_offset, use.start() + 1)
                    break
            msg = f"use of undefined value {undefined.group(1)}"
        elif not msg or msg.startswith("in "):
            # xDSL's message fragments at the end of the text mean the input stops inside something.
            msg = "unexpected end of input" + (f" ({msg})" if msg else "") + "; is a closing '})' missing?"
        raise FirError(msg, where) from None


def _check_structure(module: ModuleOp) -> None:
    for op in module.ops:
        if not isinstance(op, FuncOp):
            raise FirError(f"'{op.name}' cannot appear at module level (only func.func)", loc_of(op.location))
        ftype = op.function_type
        for t in (*ftype.inputs.data, *ftype.outputs.data):
            try:
                to_tt(t)
            except ShapeError as e:
                raise FirError(f"function @{op.sym_name.data}: {e}", loc_of(op.location)) from None
        if len(op.body.blocks) != 1:
            raise FirError(f"function @{op.sym_name.data} must have exactly one block", loc_of(op.location))
        if not _SYMBOL.fullmatch(op.sym_name.data):
            raise FirError(f"function name \"{op.sym_name.data}\" is not a fir symbol ([A-Za-z_][A-Za-z0-9_$.-]*)",
                           loc_of(op.location))
        block = op.body.blocks.first
        assert block is not None
        defined = set(block.args)
        for inner in block.ops:
            if not isinstance(inner, (FlowOp, ReturnOp)) or inner.regions:
                raise FirError(f"'{inner.name}' cannot appear in a function body", loc_of(inner.location))
            for i, v in enumerate(inner.operands):
                if v not in defined:
                    raise FirError(f"'{inner.name}' op operand {i} is used before it is defined", loc_of(inner.location))
            defined.update(inner.results)


def verify_module(module: ModuleOp) -> None:
    """Run every op's verifier; the first failure becomes a FirError at that op's location."""
    # The module and functions first: the structure check and the op verifiers rely on their shape.
    if len(module.body.blocks) != 1:
        raise FirError("a module must have exactly one block", loc_of(module.location))
    for op in (module, *module.ops):
        _verify_op(op)
    _check_structure(module)
    for op in module.walk():
        _verify_op(op)


def _verify_op(op: Operation) -> None:
    try:
        op.verify(verify_nested_ops=False)
    except VerifyException as e:
        raise FirError(f"'{op.name}' op {e}", loc_of(op.location)) from None
    except Exception as e:  # a malformed generic op can trip a rule in unexpected ways
        raise FirError(f"'{op.name}' op is malformed: {e}", loc_of(op.location)) from None


def parse_source(
    text: str, filename: str = "<input>", syntax: str | None = None, line_offset: int = 0, ctx: Context | None = None
) -> ModuleOp:
    """Parse and verify a program in .fir or MLIR syntax (detected when `syntax` is None)."""
    syntax = syntax or detect_syntax(text)
    if syntax == "fir":
        module = parse_fir(text, filename, line_offset)
    else:
        module = parse_mlir(text, filename, ctx, line_offset)
    verify_module(module)
    return module


def load_file(path: str, syntax: str | None = None) -> tuple[ModuleOp, str]:
    """Read, parse and verify a file; returns the module and the source text (for diagnostics)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise FirError(f"cannot read '{path}': {getattr(e, 'strerror', None) or e}") from None
    if syntax is None and path.endswith(".mlir"):
        syntax = "mlir"
    return parse_source(text, path, syntax), text

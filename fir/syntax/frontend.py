"""Loading programs: pick the syntax (.fir or MLIR generic), parse, and verify with located diagnostics."""

from __future__ import annotations

import re

from xdsl.context import Context
from xdsl.dialects.builtin import Builtin, FileLineColLoc, IntAttr, ModuleOp, StringAttr, UnknownLoc
from xdsl.dialects.func import Func, FuncOp, ReturnOp
from xdsl.ir import Attribute, Block, Operation, SSAValue
from xdsl.parser import Parser
from xdsl.utils.exceptions import ParseError, VerifyException

from fir.distribution import layout
from fir.dialects.attr_schema import AttrError, AttrSpec, IntListSpec, IntSpec
from fir.syntax.diagnostics import FirError, SourceLoc, loc_of
from fir.dialects.base import FirOp
from fir.dialects.comm import CollectiveOp, Comm, CommOp, RecvOp, SendOp
from fir.dialects.base import to_tt
from fir.dialects.flow import Flow, FlowOp, FusedOp, YieldOp
from fir.dialects.plan import ARENA_SIZE, INSTR_ATTRS, LoadOp, Plan, PlanOp
from fir.planning import plan_ir
from fir.dialects.sbp import MESH, OP_ATTRS, SBP, SBP_IN, IntValueSpec, MeshOp, PositionOp, Sbp_
from fir.syntax.lexical import check_text
from fir.syntax.parser import ARG_ATTRS, FUNC_ATTRS, RESULT_ATTRS, attr_message, parse_fir
from fir.distribution.sbp import Mesh, NdSbp, Partial, Split, format_nd
from fir.dialects.shape_inference import ShapeError

# The dialects a fir program may use: builtin and func for its structure, flow for the ops, sbp for meshes and
# SBP attributes, comm for the data movement that boxing inserts.
DIALECTS = (Builtin, Func, Flow, Sbp_, Comm, Plan)


def make_context() -> Context:
    """An xDSL context with the dialects a fir program may use."""
    ctx = Context()
    for dialect in DIALECTS:
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


def parse_mlir(text: str, filename: str, ctx: Context | None = None, line_offset: int = 0) -> ModuleOp:
    """Parse MLIR (generic or xDSL custom) text; raise FirError on bad input."""
    check_text(text, filename, line_offset)
    parser: _LocatingParser | None = None
    try:
        parser = _LocatingParser(ctx or make_context(), text, filename, line_offset)
        module = parser.parse_module()
        if isinstance(module.location, UnknownLoc):
            module.location = SourceLoc(filename, 1 + line_offset, 1).to_attr()
        return module
    except (ValueError, VerifyException, ArithmeticError) as e:
        # xDSL checks some things while parsing without a ParseError: names (ValueError), attributes it builds
        # (VerifyException, e.g. `1 : i0`), integer widths it computes with (ArithmeticError, e.g. `array<i0: 0>`
        # or a width of twenty digits). Report them where the parser stopped.
        where = SourceLoc(filename, 1 + line_offset, 1)
        if parser is not None:
            loc = parser._current_token.span.get_location()
            where = SourceLoc(filename, loc.line + line_offset, loc.col)
        msg = str(e.args[0]) if e.args else str(e)
        if isinstance(e, ArithmeticError):
            msg = f"cannot read this attribute: its integer type has an unusable width ({msg})"
        raise FirError(msg, where) from None
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
        if isinstance(op, MeshOp):
            if not _SYMBOL.fullmatch(op.sym_name.data):
                raise FirError(f"mesh name \"{op.sym_name.data}\" is not a fir symbol ([A-Za-z_][A-Za-z0-9_$.-]*)",
                               loc_of(op.location))
            if op.attributes:
                raise FirError(f"'sbp.mesh' op has no attribute '{next(iter(op.attributes))}'", loc_of(op.location))
            continue
        if not isinstance(op, FuncOp):
            raise FirError(f"'{op.name}' cannot appear at module level (only func.func and sbp.mesh)",
                           loc_of(op.location))
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
        _check_func_attrs(op)
        block = op.body.blocks.first
        assert block is not None
        _check_body(block, (FirOp, ReturnOp), "a function body")


def _check_body(block: Block, allowed: tuple[type, ...], where: str) -> None:
    """Every op of `block` is of an allowed kind and uses only values defined before it in the block (a
    flow.fused body, checked the same way, sees only its own arguments)."""
    defined = set(block.args)
    for inner in block.ops:
        if not isinstance(inner, allowed) or (inner.regions and not isinstance(inner, FusedOp)):
            raise FirError(f"'{inner.name}' cannot appear in {where}", loc_of(inner.location))
        for i, v in enumerate(inner.operands):
            if v not in defined:
                raise FirError(f"'{inner.name}' op operand {i} is used before it is defined", loc_of(inner.location))
        if isinstance(inner, FusedOp):
            if len(inner.regions) != 1 or len(inner.regions[0].blocks) != 1:
                raise FirError("a flow.fused op has one region of exactly one block (its body)", loc_of(inner.location))
            _check_body(inner.body.block, (FlowOp, YieldOp), "a flow.fused body")
        defined.update(inner.results)


def _check_value(spec: AttrSpec, attr: Attribute) -> str | None:
    """Why a discardable attribute does not hold what `spec` stores, or None when it does."""
    try:
        value = spec.to_python(attr)
    except (VerifyException, AssertionError) as e:
        return str(e) or f"expects {spec.kind()}, got {attr}"
    try:  # a value the .fir syntax accepts (a string among its choices, a non-negative offset)
        stored = spec.to_attr(value)
    except AttrError as e:
        return str(e)
    if isinstance(spec, (IntValueSpec, IntSpec, IntListSpec)) and stored != attr:
        return f"expects {spec.kind()} stored as i64, got {attr}"  # integers: exactly the i64 storage .fir writes
    return None


def _check_attr_dict(attrs: dict[str, Attribute], specs: dict[str, AttrSpec], kind: str, owner: str,
                     where: SourceLoc | None) -> None:
    for name, attr in attrs.items():
        if name not in specs:
            raise FirError(f"{owner}: unknown {kind} attribute '{name}' (known: {', '.join(specs)})", where)
        problem = _check_value(specs[name], attr)
        if problem is not None:
            raise FirError(attr_message(f"{owner}: {kind} attribute '{name}'", problem), where)


def _check_func_attrs(func: FuncOp) -> None:
    """The discardable attributes of a function, its arguments and its results (MLIR input may hold any)."""
    where = loc_of(func.location)
    owner = f"function @{func.sym_name.data}"
    _check_attr_dict(dict(func.attributes), FUNC_ATTRS, "function", owner, where)
    if "of" in func.attributes and ("device" in func.attributes) == ("devices" in func.attributes):
        raise FirError(f"{owner}: a device program (one with `of`) needs either `device`, the device it runs on, or "
                       "`devices` (an SPMD program), the devices that run it", where)
    if "devices" in func.attributes:
        devs = FUNC_ATTRS["devices"].to_python(func.attributes["devices"])
        if not devs or any(d < 0 for d in devs) or list(devs) != sorted(set(devs)):
            raise FirError(f"{owner}: `devices` lists the devices that run the program: distinct device ids, "
                           f"ascending, at least one (got {list(devs)})", where)
    ftype = func.function_type
    for which, kind, n, specs in (("arg_attrs", "argument", len(ftype.inputs.data), ARG_ATTRS),
                                  ("res_attrs", "result", len(ftype.outputs.data), RESULT_ATTRS)):
        dicts = getattr(func, which)
        if dicts is None:
            continue
        if len(dicts.data) != n:
            raise FirError(f"{owner}: {which} has {len(dicts.data)} entries but the function has {n} {kind}(s)",
                           where)
        for d in dicts.data:
            _check_attr_dict(dict(d.data), specs, kind, owner, where)


def _check_symbols(module: ModuleOp) -> None:
    """Meshes and functions share one symbol table: each name once (checked before xDSL's own check, which
    reports it at the module)."""
    seen: dict[str, Operation] = {}
    for op in module.ops:
        name = op.properties.get("sym_name")
        if not isinstance(op, (FuncOp, MeshOp)) or not isinstance(name, StringAttr):
            continue
        if name.data in seen:
            first = loc_of(seen[name.data].location)
            at = f" at line {first.line}" if first is not None else ""
            raise FirError(f"symbol @{name.data} is already defined{at}", loc_of(op.location))
        seen[name.data] = op


# -- placement ------------------------------------------------------------------------------------------------
def _symbol(attrs: dict[str, Attribute], name: str) -> str | None:
    attr = attrs.get(name)
    return OP_ATTRS[MESH].to_python(attr).name if attr is not None else None


class _Placement:
    """Checks every placement and nd-SBP of a module against its meshes."""

    def __init__(self, module: ModuleOp):
        self.meshes: dict[str, Mesh] = {op.sym_name.data: op.mesh() for op in module.ops if isinstance(op, MeshOp)}

    def mesh(self, name: str | None, what: str, where: SourceLoc | None) -> Mesh | None:
        if name is None:
            return None
        if name not in self.meshes:
            declared = ", ".join(f"@{m}" for m in self.meshes) if self.meshes else "none"
            raise FirError(f"{what}: unknown mesh @{name} (declared: {declared})", where)
        return self.meshes[name]

    def layout(self, nd: NdSbp | None, what: str, shape: tuple[int, ...] | None, mesh: Mesh | None,
               where: SourceLoc | None) -> None:
        """`nd` must have one entry per mesh axis and, where the logical shape is known, lay the tensor out.
        `what` names it, with `{}` where the nd-SBP goes: `flow.exp: sbp {} of the result`."""
        if nd is None:
            return
        if mesh is None:
            reason = _unplaced_reason(nd, shape)
        elif shape is None:
            reason = (f"it has {len(nd)} entries but the mesh has {len(mesh.shape)} axes"
                      if len(nd) != len(mesh.shape) else None)
        else:
            reason = layout.check_nd(shape, nd, mesh.shape)
        if reason is not None:
            on = f" on mesh @{mesh.name} of shape {list(mesh.shape)}" if mesh is not None else ""
            raise FirError(f"{what.format(format_nd(nd))} cannot lay out {_fmt_shape(shape)}{on}: {reason}", where)

    def check(self, module: ModuleOp) -> None:
        for func in module.ops:
            if isinstance(func, FuncOp):
                self.func(func)

    def func(self, func: FuncOp) -> None:
        fname = f"@{func.sym_name.data}"
        floc = loc_of(func.location)
        fmesh = self.mesh(_symbol(dict(func.attributes), MESH), f"function {fname}", floc)
        # A per-device program holds local pieces: the logical shapes of its values are not known here.
        local = "device" in func.attributes or "devices" in func.attributes
        block = func.body.blocks.first
        assert block is not None
        ftype = func.function_type
        arg_dicts = [dict(d.data) for d in func.arg_attrs.data] if func.arg_attrs is not None else []
        for i, (arg, d) in enumerate(zip(block.args, arg_dicts)):
            what = f"argument {_value_name(arg, i)} of {fname}"
            where = loc_of(getattr(arg, "location", None)) or floc
            mesh = self.mesh(_symbol(d, MESH), what, where) or fmesh
            nd = OP_ATTRS[SBP].to_python(d[SBP]) if SBP in d else None
            self.layout(nd, f"{what}: sbp {{}}", _shape(arg.type, local), mesh, where)
        res_dicts = [dict(d.data) for d in func.res_attrs.data] if func.res_attrs is not None else []
        for i, (t, d) in enumerate(zip(ftype.outputs.data, res_dicts)):
            what = f"result {i} of {fname}"
            mesh = self.mesh(_symbol(d, MESH), what, floc) or fmesh
            nd = OP_ATTRS[SBP].to_python(d[SBP]) if SBP in d else None
            self.layout(nd, f"{what}: sbp {{}}", _shape(t, local), mesh, floc)
        form = "device" if "device" in func.attributes else "spmd" if "devices" in func.attributes else None
        for op in block.ops:
            _check_form(op, form)
            if isinstance(op, PositionOp):
                vals = op.attr_values()
                m = self.mesh(vals["mesh"].name, op.name, loc_of(op.location))
                if vals["axis"] >= len(m.shape):
                    raise FirError(f"sbp.position: mesh @{m.name} has {len(m.shape)} axes, not axis {vals['axis']}",
                                   loc_of(op.location))
            elif isinstance(op, CommOp):
                self.comm(op, local)
            elif isinstance(op, FirOp):
                self.op(op, fmesh, local)

    def op(self, op: FirOp, fmesh: Mesh | None, local: bool) -> None:
        where = loc_of(op.location)
        attrs = dict(op.attributes)
        for name in attrs:  # the verifier read these values; their storage must be the .fir one too
            spec = OP_ATTRS.get(name) or INSTR_ATTRS.get(name)
            if spec is not None:
                problem = _check_value(spec, attrs[name])
                if problem is not None:
                    raise FirError(attr_message(f"'{op.name}' op attribute '{name}'", problem), where)
        mesh = self.mesh(_symbol(attrs, MESH), op.name, where) or fmesh
        if SBP in attrs and op.results:
            self.layout(OP_ATTRS[SBP].to_python(attrs[SBP]), f"{op.name}: sbp {{}} of the result",
                        _shape(op.results[0].type, local), mesh, where)
        if SBP_IN in attrs:
            for i, (nd, v) in enumerate(zip(OP_ATTRS[SBP_IN].to_python(attrs[SBP_IN]), op.operands)):
                self.layout(nd, f"{op.name}: sbp_in {{}} of operand {i}", _shape(v.type, local), mesh, where)

    def comm(self, op: CommOp, local: bool) -> None:
        where = loc_of(op.location)
        values = op.attr_values()
        src = self.mesh(values["mesh"].name, op.name, where) if "mesh" in values else None
        dst = self.mesh(values["to_mesh"].name, op.name, where) if "to_mesh" in values else src
        local = local or op.is_local
        if "from" in values and op.operands:
            self.layout(values["from"], f"{op.name}: from {{}}", _shape(op.operands[0].type, local), src, where)
        if "to" in values and op.results:
            self.layout(values["to"], f"{op.name}: to {{}}", _shape(op.results[0].type, local), dst, where)


def _check_form(op: Operation, form: str | None) -> None:
    """Per-device programs name their peers and groups; SPMD programs compute them from their position; logical
    programs have no position."""
    where = loc_of(op.location)
    if isinstance(op, PositionOp) and form != "spmd":
        raise FirError("sbp.position belongs in an SPMD program (one with `devices`, spmd-partition's output)", where)
    if isinstance(op, LoadOp) and "mesh" in op.properties and form != "spmd":
        raise FirError("a load of the device's piece (mesh, from, to) belongs in an SPMD plan; a device's own plan "
                       "loads its box (start, limit)", where)
    if isinstance(op, (SendOp, RecvOp)):
        spmd = "to_mesh" in op.properties
        if form == "device" and spmd:
            raise FirError(f"'{op.name}' in a per-device program names its peer device, not meshes "
                           "(expand-devices writes it)", where)
        if form == "spmd" and not spmd:
            raise FirError(f"'{op.name}' in an SPMD program names its meshes (mesh, to_mesh), not a device", where)
    elif isinstance(op, CollectiveOp) and "id" in op.properties:
        if form == "device" and "group" not in op.properties:
            raise FirError(f"'{op.name}' in a per-device program needs its group", where)
        if form == "spmd" and "group" in op.properties:
            raise FirError(f"'{op.name}' in an SPMD program has no group: it follows from the mesh", where)


def _value_name(v: SSAValue, index: int) -> str:
    return f"%{v.name_hint}" if v.name_hint else str(index)


def _shape(t: Attribute, local: bool) -> tuple[int, ...] | None:
    return None if local else to_tt(t)[0]


def _fmt_shape(shape: tuple[int, ...] | None) -> str:
    if shape is None:
        return "the tensor"
    return "a tensor of shape " + ("x".join(map(str, shape)) if shape else "[] (rank 0)")


def _unplaced_reason(nd: NdSbp, shape: tuple[int, ...] | None) -> str | None:
    """What is wrong with the nd-SBP of a value placed on no mesh: only its own rules can be checked."""
    if len({s.op for s in nd if isinstance(s, Partial)}) > 1:
        return "it mixes P and P(max), whose order of reduction would matter"
    if shape is not None:
        for s in nd:
            if isinstance(s, Split) and s.axis >= len(shape):
                return f"{s} names axis {s.axis} but the tensor has rank {len(shape)}"
    return None


def check_placement(module: ModuleOp) -> None:
    """Every `mesh` names a declared sbp.mesh; every nd-SBP fits its mesh and its value's shape. Raise FirError."""
    _Placement(module).check(module)


def verify_module(module: ModuleOp) -> None:
    """Run every op's verifier; the first failure becomes a FirError at that op's location."""
    # The module and functions first: the structure check and the op verifiers rely on their shape.
    if len(module.body.blocks) != 1:
        raise FirError("a module must have exactly one block", loc_of(module.location))
    _check_symbols(module)
    for op in (module, *module.ops):
        _verify_op(op)
    _check_structure(module)
    for op in module.walk():
        _verify_op(op)
    check_placement(module)
    _check_plans(module)


def _check_plans(module: ModuleOp) -> None:
    """Plan ops only in plans, and every plan's streams and events well formed."""
    for func in module.ops:
        if not isinstance(func, FuncOp):
            continue
        if plan_ir.is_plan(func):
            plan_ir.verify_plan(func)
            if ARENA_SIZE in func.attributes:  # a memory plan, from plan-memory or from elsewhere: is it safe?
                from fir.planning.arena import verify_memory

                verify_memory(func)
            continue
        for op in func.body.ops:
            if isinstance(op, PlanOp):
                raise FirError(f"'{op.name}' belongs in a plan (a function with a `schedule` attribute, made by "
                               "the schedule pass)", loc_of(op.location))


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
    try:
        if syntax == "fir":
            module = parse_fir(text, filename, line_offset)
        else:
            module = parse_mlir(text, filename, ctx, line_offset)
        verify_module(module)
    except RecursionError:  # check_text bounds bracket nesting; this is the last line of defence
        raise FirError("the input nests too deeply to be read", SourceLoc(filename, 1 + line_offset, 1)) from None
    return module


def load_file(path: str, syntax: str | None = None) -> tuple[ModuleOp, str]:
    """Read, parse and verify a file; returns the module and the source text (for diagnostics)."""
    from fir.syntax.files import read_text

    text = read_text(path)  # a bad byte is a located error, as in the tools
    if syntax is None and path.endswith(".mlir"):
        syntax = "mlir"
    return parse_source(text, path, syntax), text

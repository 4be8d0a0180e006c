"""A tiny kernel IR: C expressions and statements as trees, rendered to CUDA C.

The emitters (fir.codegen.kernels) build kernels from these nodes instead of pasting strings, so index
arithmetic, dtype conversions and control flow are composed and checked in Python; `render_kernel` prints a
kernel as one `extern "C" __global__` function. Every binary expression is parenthesised when printed, so
precedence never depends on how trees were combined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

# C types of fir's dtypes in memory, and the type each computes in (f16/bf16 widen to float).
STORAGE = {"f32": "float", "f16": "__half", "bf16": "__nv_bfloat16", "i32": "int", "i64": "long long",
           "i1": "bool"}
COMPUTE = {"f32": "float", "f16": "float", "bf16": "float", "i32": "int", "i64": "long long", "i1": "bool"}
# Index arithmetic is 64-bit: local tensors may exceed 2^31 elements.
INDEX = "long long"


# ----------------------------------------------------------------------------------------------- expressions
class Expr:
    """A C expression."""

    def __add__(self, o: Expr | int) -> Expr:
        return binop("+", self, o)

    def __sub__(self, o: Expr | int) -> Expr:
        return binop("-", self, o)

    def __mul__(self, o: Expr | int) -> Expr:
        return binop("*", self, o)

    def __floordiv__(self, o: Expr | int) -> Expr:
        return binop("/", self, o)

    def __mod__(self, o: Expr | int) -> Expr:
        return binop("%", self, o)

    def __lt__(self, o: Expr | int) -> Expr:  # type: ignore[override]
        return binop("<", self, o)

    def __getitem__(self, index: Expr | int) -> Expr:
        return Load(self, lit(index))


@dataclass(frozen=True, eq=False)
class Var(Expr):
    """A named variable, parameter or builtin (threadIdx.x)."""

    name: str


@dataclass(frozen=True, eq=False)
class Lit(Expr):
    """A literal, written exactly as given (the emitter chooses the suffix)."""

    text: str


@dataclass(frozen=True, eq=False)
class BinOp(Expr):
    op: str
    a: Expr
    b: Expr


@dataclass(frozen=True, eq=False)
class UnOp(Expr):
    op: str
    a: Expr


@dataclass(frozen=True, eq=False)
class Call(Expr):
    fn: str
    args: tuple[Expr, ...]


@dataclass(frozen=True, eq=False)
class Cast(Expr):
    ctype: str
    a: Expr


@dataclass(frozen=True, eq=False)
class Select(Expr):
    cond: Expr
    a: Expr
    b: Expr


@dataclass(frozen=True, eq=False)
class Load(Expr):
    """ptr[index]."""

    ptr: Expr
    index: Expr


def lit(v: Expr | int | float | bool) -> Expr:
    """An expression for a Python number (ints are 64-bit, floats float32), or the expression itself."""
    if isinstance(v, Expr):
        return v
    if isinstance(v, bool):
        return Lit("true" if v else "false")
    if isinstance(v, int):
        return Lit(f"{v}LL" if not -(2**31) <= v < 2**31 else str(v))
    return float_lit(v)


def float_lit(v: float) -> Expr:
    """A float32 literal; infinities and NaN through CUDA's intrinsics."""
    if math.isnan(v):
        return Lit("__int_as_float(0x7fc00000)")
    if math.isinf(v):
        return Lit("__int_as_float(0x7f800000)" if v > 0 else "__int_as_float(0xff800000)")
    return Lit(f"{float(v)!r}f")


def binop(op: str, a: Expr | int, b: Expr | int) -> Expr:
    """a op b, folding integer constants and multiplications by 1 / additions of 0 (index math reads better)."""
    a, b = lit(a), lit(b)
    ia, ib = _int_value(a), _int_value(b)
    if ia is not None and ib is not None and op in ("+", "-", "*"):
        return lit({"+": ia + ib, "-": ia - ib, "*": ia * ib}[op])
    if op == "+" and ia == 0:
        return b
    if op in ("+", "-") and ib == 0:
        return a
    if op == "*" and (ia == 1 or ib == 1):
        return b if ia == 1 else a
    if op == "*" and (ia == 0 or ib == 0):
        return lit(0)
    if op == "/" and ib == 1:
        return a
    return BinOp(op, a, b)


def call(fn: str, *args: Expr | int | float) -> Expr:
    """fn(args...)."""
    return Call(fn, tuple(lit(a) for a in args))


def _int_value(e: Expr) -> int | None:
    if isinstance(e, Lit):
        t = e.text.removesuffix("LL")
        if t.lstrip("-").isdigit():
            return int(t)
    return None


# ----------------------------------------------------------------------------------------------- statements
class Stmt:
    """A C statement."""


@dataclass(eq=False)
class Decl(Stmt):
    ctype: str
    var: Var
    init: Expr | None = None
    const: bool = False


@dataclass(eq=False)
class Assign(Stmt):
    target: Expr
    value: Expr
    op: str = "="  # or "+=", ...


@dataclass(eq=False)
class For(Stmt):
    """for (INDEX var = start; var < stop; var += step) body."""

    var: Var
    start: Expr
    stop: Expr
    step: Expr
    body: list[Stmt]
    unroll: bool = False


@dataclass(eq=False)
class If(Stmt):
    cond: Expr
    then: list[Stmt]
    orelse: list[Stmt] = field(default_factory=list)


@dataclass(eq=False)
class Raw(Stmt):
    """A statement the tree has no node for (a barrier, a return, a WMMA call), written verbatim."""

    text: str


@dataclass(eq=False)
class Comment(Stmt):
    text: str


SYNC = Raw("__syncthreads();")


# ----------------------------------------------------------------------------------------------- kernels
@dataclass(frozen=True)
class Param:
    """A kernel parameter: a pointer to a tensor's elements (const when read only), or with `scalar` a 64-bit
    integer passed by value (a device's own constant in an SPMD plan, such as its coordinate)."""

    name: str
    ctype: str
    const: bool = True
    scalar: bool = False

    def text(self) -> str:
        """The parameter's C declaration."""
        if self.scalar:
            return f"const {self.ctype} {self.name}"
        return f"{'const ' if self.const else ''}{self.ctype}* {self.name}"

    def var(self) -> Var:
        """The parameter as an expression."""
        return Var(self.name)


@dataclass
class Kernel:
    """One __global__ function and how to launch it (grid and block are 3-D; smem is dynamic shared bytes)."""

    name: str
    params: list[Param]
    body: list[Stmt]
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    smem: int = 0
    comment: str = ""
    # The most threads per block the kernel is launched with: lets ptxas budget registers (no spills).
    max_threads: int = 0
    # Device functions or templates the kernel calls, beyond the prelude's; a translation unit writes each once.
    helpers: tuple[str, ...] = ()

    def threads(self) -> int:
        """Threads per block."""
        return math.prod(self.block)


def render_expr(e: Expr) -> str:
    """C text of an expression."""
    if isinstance(e, Var):
        return e.name
    if isinstance(e, Lit):
        return e.text
    if isinstance(e, BinOp):
        return f"({render_expr(e.a)} {e.op} {render_expr(e.b)})"
    if isinstance(e, UnOp):
        return f"({e.op}{render_expr(e.a)})"
    if isinstance(e, Call):
        return f"{e.fn}({', '.join(render_expr(a) for a in e.args)})"
    if isinstance(e, Cast):
        return f"(({e.ctype})({render_expr(e.a)}))"
    if isinstance(e, Select):
        return f"({render_expr(e.cond)} ? {render_expr(e.a)} : {render_expr(e.b)})"
    if isinstance(e, Load):
        return f"{render_expr(e.ptr)}[{render_expr(e.index)}]"
    raise TypeError(f"not an expression: {e!r}")


def render_stmts(stmts: Sequence[Stmt], indent: int = 1) -> list[str]:
    """C lines of statements, indented by `indent` levels of two spaces."""
    pad = "  " * indent
    lines: list[str] = []
    for s in stmts:
        if isinstance(s, Decl):
            init = f" = {render_expr(s.init)}" if s.init is not None else ""
            lines.append(f"{pad}{'const ' if s.const else ''}{s.ctype} {s.var.name}{init};")
        elif isinstance(s, Assign):
            lines.append(f"{pad}{render_expr(s.target)} {s.op} {render_expr(s.value)};")
        elif isinstance(s, For):
            if s.unroll:
                lines.append(f"{pad}#pragma unroll")
            v = s.var.name
            lines.append(f"{pad}for ({INDEX} {v} = {render_expr(s.start)}; {v} < {render_expr(s.stop)}; "
                         f"{v} += {render_expr(s.step)}) {{")
            lines += render_stmts(s.body, indent + 1)
            lines.append(f"{pad}}}")
        elif isinstance(s, If):
            lines.append(f"{pad}if ({render_expr(s.cond)}) {{")
            lines += render_stmts(s.then, indent + 1)
            if s.orelse:
                lines.append(f"{pad}}} else {{")
                lines += render_stmts(s.orelse, indent + 1)
            lines.append(f"{pad}}}")
        elif isinstance(s, Raw):
            lines.append(pad + s.text)
        elif isinstance(s, Comment):
            lines.append(f"{pad}// {s.text}")
        else:
            raise TypeError(f"not a statement: {s!r}")
    return lines


def render_kernel(k: Kernel) -> str:
    """The kernel as an `extern "C" __global__` function."""
    params = ", ".join(p.text() for p in k.params)
    bounds = f"__launch_bounds__({k.max_threads or k.threads()}) "
    head = f"// {k.comment}\n" if k.comment else ""
    body = "\n".join(render_stmts(k.body))
    return f'{head}extern "C" __global__ void {bounds}{k.name}({params}) {{\n{body}\n}}\n'

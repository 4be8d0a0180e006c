"""Kernels of the row-wise and reduction flow ops: reduce_sum / reduce_mean / reduce_max, softmax, layernorm and
cross_entropy.

Each kernel reduces "rows" with a group of threads: a warp per row (8 rows per 256-thread block) when rows are
short, a whole block per row when they are long. Groups walk their rows grid-stride, so all threads of a group
take the same trip count and reach every shuffle and barrier together. Rows that fit in 48 KiB of shared memory
are cached there (as float) so global memory is read once. Floats accumulate in float, integers in long long
(wrapping), and each result is rounded to its dtype once, when stored, as fir.runtime.reference does."""

from __future__ import annotations

import math
from dataclasses import dataclass

from xdsl.ir import Operation

from fir.codegen.common import (
    BID,
    GDIM,
    MAX_BLOCKS,
    THREADS,
    TID,
    blocks_for,
    grid_stride,
    load,
    store,
    tensor_param,
    unravel,
)
from fir.codegen.kernel_ir import (
    INDEX,
    Assign,
    Cast,
    Decl,
    Expr,
    For,
    If,
    Kernel,
    Lit,
    Param,
    Raw,
    Select,
    Stmt,
    Var,
    binop,
    call,
    float_lit,
    lit,
)
from fir.codegen.prelude import STATUS_EMPTY_MEAN, STATUS_LABEL_OUT_OF_RANGE
from fir.dialects.base import to_tt

FLOATS = ("f32", "f16", "bf16")
# Rows up to this long get a warp each (a lane then handles at most 16 elements); longer rows get a block.
WARP_ROW_MAX = 512
WARPS_PER_BLOCK = THREADS // 32
# Rows are cached in shared memory up to the default dynamic limit (more needs an opt-in and costs occupancy).
SMEM_LIMIT = 48 * 1024

CACHE = Var("fir_row_cache")
SCRATCH = {"float": Var("fir_red_f"), "long long": Var("fir_red_i")}
T_ID, LANE, WARP = Var("tid"), Var("lane"), Var("warp")
NAN = float_lit(math.nan)
NEG_INF = float_lit(-math.inf)
LLONG_MIN = Lit("(-9223372036854775807LL - 1)")


# ----------------------------------------------------------------------------------------------- thread groups
@dataclass(frozen=True)
class _Group:
    """The threads that reduce one row together: a warp (several per block) or the whole block."""

    warp: bool
    threads: int  # per block

    @property
    def per_block(self) -> int:
        return self.threads // 32 if self.warp else 1

    @property
    def size(self) -> int:
        return 32 if self.warp else self.threads

    @property
    def lane(self) -> Var:
        """This thread's rank in its group."""
        return LANE if self.warp else T_ID

    def prologue(self, *scratch: str) -> list[Stmt]:
        """Thread coordinates and the 32-entry shared scratch of each block reduction's type."""
        out: list[Stmt] = [Decl("int", T_ID, TID, const=True)]
        if self.warp:
            out += [Decl("int", LANE, binop("%", T_ID, 32), const=True),
                    Decl("int", WARP, binop("/", T_ID, 32), const=True)]
        out += [Raw(f"__shared__ {ct} {SCRATCH[ct].name}[32];") for ct in scratch]
        return out

    def scratch(self, ctype: str) -> tuple[str, ...]:
        """The scratch types the group's reductions need."""
        return () if self.warp else (ctype,)

    def sum(self, v: Expr, ctype: str) -> Expr:
        """The group's sum of v, in every thread of the group."""
        if self.warp:
            return call("fir_warp_sum", v)
        return call(f"fir_block_sum<{ctype}>", v, SCRATCH[ctype])

    def max(self, v: Expr, ctype: str) -> Expr:
        """The group's (NaN-propagating) maximum of v, in every thread of the group."""
        if self.warp:
            return call("fir_warp_max", v)
        return call(f"fir_block_max<{ctype}>", v, NEG_INF if ctype == "float" else LLONG_MIN, SCRATCH[ctype])

    def rows(self, row: Var, rows: int, body: list[Stmt]) -> For:
        """Each group takes rows grid-stride: the trip count is uniform across the group."""
        if self.warp:
            start = binop("+", binop("*", Cast(INDEX, BID), self.per_block), WARP)
            step = binop("*", Cast(INDEX, GDIM), self.per_block)
        else:
            start, step = Cast(INDEX, BID), Cast(INDEX, GDIM)
        return For(row, start, lit(rows), step, body)

    def each(self, j: Var, n: int, body: list[Stmt]) -> For:
        """for (j = lane; j < n; j += group size): consecutive lanes read consecutive elements."""
        return For(j, self.lane, lit(n), lit(self.size), body)

    def grid(self, rows: int) -> int:
        return max(1, min(MAX_BLOCKS, -(-rows // self.per_block)))


def _block_threads(n: int) -> int:
    """Threads of a block-per-row group: about 16 elements a thread, 128 to 1024 threads."""
    want = max(1, -(-n // 16))
    return min(1024, max(128, 1 << (want - 1).bit_length()))


def _group_for(n: int) -> _Group:
    """A warp per row for short rows, a block per row for long ones."""
    return _Group(True, THREADS) if n <= WARP_ROW_MAX else _Group(False, _block_threads(n))


# ----------------------------------------------------------------------------------------------- row access
class _Row:
    """The elements of the current row: the first pass loads (and caches) them, later passes reread the cache
    (or global memory when the row does not fit in shared memory)."""

    def __init__(self, g: _Group, n: int, x: Param, base: Expr, stride: int):
        self.g, self.n, self.x, self.base, self.stride = g, n, x, base, stride
        self.cached = g.per_block * n * 4 <= SMEM_LIMIT

    @property
    def smem(self) -> int:
        return self.g.per_block * self.n * 4 if self.cached else 0

    def decls(self) -> list[Stmt]:
        return [Raw(f"extern __shared__ __align__(16) float {CACHE.name}[];")] if self.cached else []

    def index(self, j: Expr) -> Expr:
        return binop("+", self.base, binop("*", j, self.stride))

    def slot(self, j: Expr) -> Expr:
        # Each warp of a warp-per-row block caches its row in its own slice.
        return binop("+", binop("*", WARP, self.n), j) if self.g.warp else j

    def first(self, j: Var, v: Var) -> list[Stmt]:
        """v = element j, loaded from global memory (and cached)."""
        out: list[Stmt] = [Decl("float", v, load(self.x, self.index(j)), const=True)]
        if self.cached:
            out.append(Assign(CACHE[self.slot(j)], v))
        return out

    def again(self, j: Var) -> Expr:
        """Element j after the first pass. Only the thread that loaded it reads it: no barrier needed."""
        return CACHE[self.slot(j)] if self.cached else load(self.x, self.index(j))


# ----------------------------------------------------------------------------------------------- helpers
def _numel(shape: tuple[int, ...] | list[int]) -> int:
    return math.prod(shape)


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _params(op: Operation) -> list[Param]:
    """out, then in0, in1, ... (the op's operands)."""
    out = [tensor_param("out", to_tt(op.results[0].type)[1], const=False)]
    return out + [tensor_param(f"in{i}", to_tt(v.type)[1]) for i, v in enumerate(op.operands)]


def _empty(name: str, op: Operation, comment: str) -> Kernel:
    """A kernel with nothing to do (an empty result): launchable, so callers need no special case."""
    return Kernel(name, _params(op), [], (1, 1, 1), (32, 1, 1), comment=comment + " (empty)", max_threads=32)


def _strided_offset(index: Expr, sizes: list[int], strides: list[int]) -> Expr:
    """Offset of the linear `index` over a row-major box of `sizes`, laid out with `strides` in memory."""
    out: Expr = lit(0)
    for c, s in zip(unravel(index, sizes), strides):
        out = binop("+", out, binop("*", c, s))
    return out


def _axis_groups(shape: tuple[int, ...], reduced: set[int]) -> list[tuple[int, int, bool]]:
    """(size, stride, reduced) of the input's axes with size-1 axes dropped and neighbours of the same kind
    merged (row-major neighbours always merge): fewer divisions in the index math."""
    out: list[tuple[int, int, bool]] = []
    stride = 1
    for a in reversed(range(len(shape))):
        n, red = shape[a], a in reduced
        if n != 1:
            if out and out[-1][2] == red:
                out[-1] = (out[-1][0] * n, out[-1][1], red)  # the inner axis' stride
            else:
                out.append((n, stride, red))
        stride *= n
    return out[::-1]


# ----------------------------------------------------------------------------------------------- reductions
def reduce_kernel(name: str, op: Operation) -> Kernel:
    """The kernel of flow.reduce_sum / reduce_mean / reduce_max over any axes."""
    kind = op.name.removeprefix("flow.reduce_")
    shape, dt = to_tt(op.operands[0].type)
    out_shape = to_tt(op.results[0].type)[0]
    attrs = op.attr_values()
    reduced = {a % len(shape) for a in attrs["axes"]} if shape else set()
    m = _numel(out_shape)
    n = math.prod(shape[a] for a in reduced)
    comment = (f"reduce_{kind} {dt}[{_shape_str(shape)}] axes {sorted(reduced)} -> {dt}[{_shape_str(out_shape)}]")
    if m == 0:
        return _empty(name, op, comment)
    params = _params(op)
    out, x = params
    floating = dt in FLOATS
    acc_t = "float" if floating else "long long"  # integers accumulate wide and wrap like numpy
    if kind == "max":
        identity = NEG_INF if floating else (Cast("long long", lit(-(2**31))) if dt == "i32" else LLONG_MIN)
    else:
        identity = float_lit(0.0) if floating else Cast("long long", lit(0))

    def combine(acc: Expr, v: Expr) -> Expr:
        if kind == "max":
            return call("fir_max", acc, v)
        return binop("+", acc, v) if floating else call("fir_add", acc, v)

    def element(index: Expr) -> Expr:
        v = load(x, index)
        return v if floating else Cast("long long", v)

    def finish(total: Expr) -> Expr:
        return binop("/", total, float_lit(float(n))) if kind == "mean" else total

    o, acc = Var("o"), Var("acc")
    if n == 0:
        # Nothing to reduce: the identity; the mean of nothing is undefined, an error as in the reference
        # (fir_status), and NaN.
        fail = [Raw(f"fir_fail({STATUS_EMPTY_MEAN});")] if kind == "mean" else []
        value = NAN if kind == "mean" else identity
        body: list[Stmt] = [grid_stride(o, m, [*fail, store(out, dt, o, value)])]
        return Kernel(name, params, body, (blocks_for(m), 1, 1), (THREADS, 1, 1), comment=comment + " (empty axes)",
                      max_threads=THREADS)

    groups = _axis_groups(shape, reduced)
    kept = [(s, st) for s, st, r in groups if not r]
    red = [(s, st) for s, st, r in groups if r]
    base = Var("base")
    base_decl = Decl(INDEX, base, _strided_offset(o, [s for s, _ in kept], [st for _, st in kept]), const=True)

    # Innermost axis kept (or at most 8 elements per output, too few to share out): a thread per output
    # element, looping over the reduced axes; neighbouring threads read neighbouring elements, so each step of
    # the loop is coalesced.
    if not groups or not groups[-1][2] or n <= 8:
        rvars = [Var(f"r{k}") for k in range(len(red))]
        idx = base
        for rv, (_, st) in zip(rvars, red):
            idx = binop("+", idx, binop("*", rv, st))
        inner: list[Stmt] = [Assign(acc, combine(acc, element(idx)))]
        for rv, (s, _) in reversed(list(zip(rvars, red))):
            inner = [For(rv, lit(0), lit(s), lit(1), inner)]
        body = [grid_stride(o, m, [base_decl, Decl(acc_t, acc, identity), *inner,
                                   store(out, dt, o, finish(acc))])]
        return Kernel(name, params, body, (blocks_for(m), 1, 1), (THREADS, 1, 1),
                      comment=comment + " (thread per output)", max_threads=THREADS)

    # Innermost axis reduced: a warp or a block per output element, its threads striding over the reduced
    # elements (contiguous along the innermost axis), then a shuffle / block reduction.
    g = _group_for(n)
    r = Var("r")
    rsizes, rstrides = [s for s, _ in red], [st for _, st in red]
    total = Var("total")
    reduce_all = g.max if kind == "max" else g.sum
    row = [
        base_decl,
        Decl(acc_t, acc, identity),
        g.each(r, n, [Assign(acc, combine(acc, element(binop("+", base, _strided_offset(r, rsizes, rstrides)))))]),
        Decl(acc_t, total, reduce_all(acc, acc_t), const=True),
        If(binop("==", g.lane, 0), [store(out, dt, o, finish(total))]),
    ]
    body = [*g.prologue(*g.scratch(acc_t)), g.rows(o, m, row)]
    return Kernel(name, params, body, (g.grid(m), 1, 1), (g.threads, 1, 1),
                  comment=comment + (" (warp per output)" if g.warp else " (block per output)"),
                  max_threads=g.threads)


# ----------------------------------------------------------------------------------------------- softmax
def _row_max(g: _Group, row: _Row, m: Var) -> list[Stmt]:
    """m = the row's maximum, shifted to 0 when not finite (as the reference does), loading the row."""
    j, v, part = Var("j"), Var("v"), Var("part")
    return [
        Decl("float", part, NEG_INF),
        g.each(j, row.n, [*row.first(j, v), Assign(part, call("fir_max", part, v))]),
        Decl("float", m, g.max(part, "float")),
        # A row of infinities or NaNs would give inf - inf = NaN in the shift.
        Assign(m, Select(call("isfinite", m), m, float_lit(0.0))),
    ]


def _exp_sum(g: _Group, row: _Row, m: Var, s: Var, keep: bool) -> list[Stmt]:
    """s = sum of exp(x - m) over the row; with keep, the exponentials replace the cached row."""
    j, e, part = Var("j"), Var("e"), Var("part_s")
    loop: list[Stmt] = [Decl("float", e, call("expf", binop("-", row.again(j), m)), const=True)]
    if keep and row.cached:
        loop.append(Assign(CACHE[row.slot(j)], e))
    loop.append(Assign(part, e, "+="))
    return [Decl("float", part, float_lit(0.0)), g.each(j, row.n, loop), Decl("float", s, g.sum(part, "float"),
                                                                             const=True)]


def softmax_kernel(name: str, op: Operation) -> Kernel:
    """The kernel of flow.softmax: a warp or block per row, max then sum of exp(x - max), then the quotients."""
    shape, dt = to_tt(op.results[0].type)
    axis = op.attr_values()["axis"] % len(shape)
    n, inner = shape[axis], _numel(shape[axis + 1:])
    comment = f"softmax {dt}[{_shape_str(shape)}] axis {axis}"
    if _numel(shape) == 0:
        return _empty(name, op, comment)
    rows = _numel(shape) // n
    params = _params(op)
    out, x = params
    g = _group_for(n)
    rv, base, m, s, j = Var("row"), Var("base"), Var("mx"), Var("sum"), Var("j")
    # Row r is (outer, inner) = divmod(r, inner); its elements lie `inner` apart.
    start = binop("*", rv, n) if inner == 1 else binop("+", binop("*", binop("/", rv, inner), n * inner),
                                                        binop("%", rv, inner))
    row = _Row(g, n, x, base, inner)
    e = row.again(j) if row.cached else call("expf", binop("-", row.again(j), m))
    body_row: list[Stmt] = [
        Decl(INDEX, base, start, const=True),
        *_row_max(g, row, m),
        *_exp_sum(g, row, m, s, keep=True),
        g.each(j, n, [store(out, dt, row.index(j), binop("/", e, s))]),
    ]
    body = [*g.prologue(*g.scratch("float")), *row.decls(), g.rows(rv, rows, body_row)]
    return Kernel(name, params, body, (g.grid(rows), 1, 1), (g.threads, 1, 1), smem=row.smem,
                  comment=comment + (" (row cached)" if row.cached else " (row reread)"), max_threads=g.threads)


# ----------------------------------------------------------------------------------------------- layernorm
def layernorm_kernel(name: str, op: Operation) -> Kernel:
    """The kernel of flow.layernorm: a warp or block per row, mean, biased variance of the centred row, then
    (x - mean) / sqrt(var + eps) * gamma + beta."""
    shape, dt = to_tt(op.results[0].type)
    attrs = op.attr_values()
    k = len(attrs["axes"])
    n = _numel(shape[len(shape) - k:])
    comment = f"layernorm {dt}[{_shape_str(shape)}] over {k} trailing axes"
    if _numel(shape) == 0:
        return _empty(name, op, comment)
    rows = _numel(shape) // n
    params = _params(op)
    out, x, gamma, beta = params
    g = _group_for(n)
    rv, base, j, v, d = Var("row"), Var("base"), Var("j"), Var("v"), Var("d")
    mean, var, denom, part = Var("mean"), Var("var"), Var("denom"), Var("part")
    row = _Row(g, n, x, base, 1)
    count = float_lit(float(n))
    body_row: list[Stmt] = [
        Decl(INDEX, base, binop("*", rv, n), const=True),
        Decl("float", part, float_lit(0.0)),
        g.each(j, n, [*row.first(j, v), Assign(part, v, "+=")]),
        Decl("float", mean, binop("/", g.sum(part, "float"), count), const=True),
        # Two passes: the variance of the centred values does not cancel catastrophically.
        Assign(part, float_lit(0.0)),
        g.each(j, n, [Decl("float", d, binop("-", row.again(j), mean), const=True),
                      Assign(part, binop("*", d, d), "+=")]),
        Decl("float", var, binop("/", g.sum(part, "float"), count), const=True),
        Decl("float", denom, call("sqrtf", binop("+", var, float_lit(float(attrs["eps"])))), const=True),
        g.each(j, n, [store(out, dt, row.index(j),
                            binop("+", binop("*", binop("/", binop("-", row.again(j), mean), denom), load(gamma, j)),
                                  load(beta, j)))]),
    ]
    body = [*g.prologue(*g.scratch("float")), *row.decls(), g.rows(rv, rows, body_row)]
    return Kernel(name, params, body, (g.grid(rows), 1, 1), (g.threads, 1, 1), smem=row.smem,
                  comment=comment + (" (row cached)" if row.cached else " (row reread)"), max_threads=g.threads)


# ----------------------------------------------------------------------------------------------- cross-entropy
def _row_loss(g: _Group, row: _Row, labels: Param, rv: Var, classes: int, loss: Var) -> list[Stmt]:
    """loss = logsumexp(row) - row[label] in every thread of the group; NaN and fir_fail on a bad label."""
    m, s, label = Var("mx"), Var("sum"), Var("label")
    ok = binop("&&", binop(">=", label, 0), binop("<", label, classes))
    picked = load(row.x, row.index(label))  # the same address in every lane: one broadcast load
    return [
        *_row_max(g, row, m),
        *_exp_sum(g, row, m, s, keep=False),
        Decl(INDEX, label, Cast(INDEX, load(labels, rv)), const=True),
        Decl("float", loss, NAN),
        If(ok, [Assign(loss, binop("-", binop("+", call("logf", s), m), picked))],
           [If(binop("==", g.lane, 0), [Raw(f"fir_fail({STATUS_LABEL_OUT_OF_RANGE});")])]),
    ]


def cross_entropy_kernel(name: str, op: Operation) -> Kernel:
    """The kernel of flow.cross_entropy: per-row losses (reduction none), or their sum / mean computed by one
    block in a fixed order (deterministic, one launch)."""
    lshape, dt = to_tt(op.operands[0].type)
    classes, nrows = lshape[-1], _numel(lshape[:-1])
    reduction = op.attr_values()["reduction"]
    comment = f"cross_entropy {dt}[{_shape_str(lshape)}] reduction {reduction}"
    params = _params(op)
    out, logits, labels = params
    rv, base, loss = Var("row"), Var("base"), Var("loss")

    if reduction == "none":
        if nrows == 0:
            return _empty(name, op, comment)
        g = _group_for(classes)
        row = _Row(g, classes, logits, base, 1)
        body_row = [Decl(INDEX, base, binop("*", rv, classes), const=True),
                    *_row_loss(g, row, labels, rv, classes, loss),
                    If(binop("==", g.lane, 0), [store(out, dt, rv, loss)])]
        body = [*g.prologue(*g.scratch("float")), *row.decls(), g.rows(rv, nrows, body_row)]
        return Kernel(name, params, body, (g.grid(nrows), 1, 1), (g.threads, 1, 1), smem=row.smem,
                      comment=comment, max_threads=g.threads)

    # sum / mean: one block. Short rows: its warps take rows in turn, then a block sum of the warps' totals;
    # long rows: the whole block takes each row in turn. Either way the summation order is fixed.
    if classes <= WARP_ROW_MAX:
        g = _Group(True, min(1024, max(32, 32 * nrows)))
    else:
        g = _Group(False, _block_threads(classes))
    row = _Row(g, classes, logits, base, 1)
    acc, total = Var("acc"), Var("total")
    body_row = [Decl(INDEX, base, binop("*", rv, classes), const=True),
                *_row_loss(g, row, labels, rv, classes, loss),
                Assign(acc, loss, "+=")]
    # A warp's total is in all its lanes: the block sums lane 0's copies. A block's total is already whole.
    combined = (call("fir_block_sum<float>", Select(binop("==", LANE, 0), acc, float_lit(0.0)), SCRATCH["float"])
                if g.warp else acc)
    final: Expr = total if reduction == "sum" else binop("/", total, float_lit(float(nrows)))
    body = [*g.prologue("float"), *row.decls(),
            Decl("float", acc, float_lit(0.0)),
            g.rows(rv, nrows, body_row),
            Decl("float", total, combined, const=True),
            If(binop("==", T_ID, 0), [store(out, dt, lit(0), final)])]
    if reduction == "mean" and nrows == 0:  # the mean over no labels: an error, as in the reference
        body.append(If(binop("==", T_ID, 0), [Raw(f"fir_fail({STATUS_EMPTY_MEAN});")]))
    return Kernel(name, params, body, (1, 1, 1), (g.threads, 1, 1), smem=row.smem, comment=comment,
                  max_threads=g.threads)

"""The kernel of flow.matmul: a tiled GEMM specialised to the op's static shapes.

Every variant shares one skeleton: blockIdx.x / blockIdx.y pick a BM x BN tile of the output, blockIdx.z walks
the (numpy-broadcast) batch, and a loop over K stages BK-deep tiles of both operands in shared memory, zero
padded past the matrix edges, so any M, N, K (K = 0 included) needs no special case. What differs is the
inner product of the staged tiles:

- f32, i32, i64: register blocking, each thread accumulating TM x TN outputs from outer products of a column
  of the A tile and a row of the B tile (k-major in shared memory); integers wrap through fir_add / fir_mul;
- f16, bf16: tensor cores through WMMA 16x16x16 fragments with f32 accumulators; the staged tiles keep the
  operands' memory layout and a transpose is a col_major fragment. Each warp writes its accumulators through
  a 16x16 shared scratch and rounds them once with fir_st<T>, as the reference does.

Transposes only change how a tile is read from global memory (always along the contiguous axis, coalesced)
and where it lands in shared memory. Bounds checks are left out along axes the tile divides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fir.codegen.common import broadcast_offset, store_value, tensor_param
from fir.codegen.kernel_ir import (
    COMPUTE,
    INDEX,
    STORAGE,
    SYNC,
    Assign,
    BinOp,
    Cast,
    Comment,
    Decl,
    Expr,
    For,
    If,
    Kernel,
    Lit,
    Load,
    Param,
    Raw,
    Select,
    Stmt,
    Var,
    binop,
    call,
    lit,
    render_expr,
)
from fir.dialects.base import to_tt
from fir.dialects.flow import MatmulOp

# Enough blocks to fill every SM of an H100 (132) once: below that, smaller tiles give more parallelism.
_FULL_WAVE = 132
_MAX_GRID_YZ = 65535

TID = Var("tid")
M0, N0 = Var("m0"), Var("n0")


@dataclass(frozen=True)
class Problem:
    """A matmul's static shapes: out[b] (M x N) = op(A[b]) (M x K) @ op(B[b]) (K x N), over a broadcast batch."""

    dtype: str
    m: int
    n: int
    k: int
    ta: bool
    tb: bool
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    batch_shape: tuple[int, ...]

    @property
    def batch(self) -> int:
        """Number of output matrices."""
        return math.prod(self.batch_shape)

    def a_memory(self) -> tuple[int, int]:
        """Rows and columns of A's matrices in memory (K x M when transposed)."""
        return (self.k, self.m) if self.ta else (self.m, self.k)

    def b_memory(self) -> tuple[int, int]:
        """Rows and columns of B's matrices in memory (N x K when transposed)."""
        return (self.n, self.k) if self.tb else (self.k, self.n)


def problem_of(op: MatmulOp) -> Problem:
    """The static problem of a flow.matmul."""
    (a_shape, dt), (b_shape, _) = (to_tt(v.type) for v in op.operands)
    out_shape = to_tt(op.results[0].type)[0]
    attrs = op.attr_values()
    ta, tb = bool(attrs.get("transpose_a", False)), bool(attrs.get("transpose_b", False))
    k = a_shape[-2] if ta else a_shape[-1]
    return Problem(dt, out_shape[-2], out_shape[-1], k, ta, tb, a_shape, b_shape, tuple(out_shape[:-2]))


# ----------------------------------------------------------------------------------------------- shared pieces
def _and(*conds: Expr | None) -> Expr | None:
    """The conjunction of the conditions that are not None (None when all are)."""
    out: Expr | None = None
    for c in conds:
        if c is not None:
            out = c if out is None else BinOp("&&", out, c)
    return out


def _guard(cond: Expr | None, body: list[Stmt]) -> list[Stmt]:
    """body, under `if (cond)` unless the condition is statically true (None)."""
    return body if cond is None else [If(cond, body)]


def _below(e: Expr, bound: int, tile: int) -> Expr | None:
    """e < bound, or None where tiles of `tile` divide `bound` (every index a tile reaches is in range)."""
    return None if bound % tile == 0 else binop("<", e, bound)


def load_tile(dst: str, dst_ld: int, src: Param, base: Expr, mem: tuple[int, int], origin: tuple[Expr, Expr],
              tile: tuple[int, int], transpose: bool, threads: int, zero: Expr) -> list[Stmt]:
    """Stage a tile[0] x tile[1] block of a row-major matrix (mem[0] x mem[1], at `base`) in shared memory
    `dst` with row stride `dst_ld`, transposed when asked; out-of-range elements are zero.

    Consecutive threads read consecutive columns (coalesced whatever the tile's layout in shared memory); a
    thread keeps its column and steps down `threads / cols` rows per load, so every load is one address plus
    a literal offset (few registers, however many loads are in flight)."""
    rows, cols = tile
    assert threads % cols == 0 and (rows * cols) % threads == 0, (tile, threads)
    step = threads // cols
    r, c, off = Var(f"{dst}_r"), Var(f"{dst}_c"), Var(f"{dst}_src")
    gr, gc = binop("+", origin[0], r), binop("+", origin[1], c)
    out: list[Stmt] = [Decl("int", r, binop("/", TID, cols), const=True),
                       Decl("int", c, binop("%", TID, cols), const=True),
                       Decl(INDEX, off, binop("+", base, binop("+", binop("*", gr, mem[1]), gc)), const=True)]
    col_ok = _below(gc, mem[1], cols)
    at = binop("+", binop("*", c, dst_ld), r) if transpose else binop("+", binop("*", r, dst_ld), c)
    for i in range(rows // step):
        value: Expr = src.var()[binop("+", off, i * step * mem[1])]
        cond = _and(_below(binop("+", gr, i * step), mem[0], rows), col_ok)
        if cond is not None:
            value = Select(cond, value, zero)
        out.append(Assign(Var(dst)[binop("+", at, i * step if transpose else i * step * dst_ld)], value))
    return out


def _batch_loop(p: Problem, a_rows_cols: int, b_rows_cols: int, body_of) -> tuple[list[Stmt], int]:
    """The body over the batch (blockIdx.z strides through it) and grid.z; body_of(a_base, b_base, out_base)."""
    if p.batch == 1:
        return body_of(lit(0), lit(0), lit(0)), 1
    z = Var("z")
    a_base = binop("*", broadcast_offset(z, p.batch_shape, p.a_shape[:-2]), a_rows_cols)
    b_base = binop("*", broadcast_offset(z, p.batch_shape, p.b_shape[:-2]), b_rows_cols)
    bases = [Decl(INDEX, Var("a_base"), a_base, const=True), Decl(INDEX, Var("b_base"), b_base, const=True),
             Decl(INDEX, Var("out_base"), binop("*", z, p.m * p.n), const=True)]
    body = bases + body_of(Var("a_base"), Var("b_base"), Var("out_base"))
    loop = For(z, Cast(INDEX, Var("blockIdx.z")), lit(p.batch), Cast(INDEX, Var("gridDim.z")), body)
    return [loop], max(1, min(p.batch, _MAX_GRID_YZ))


def _prologue(bm: int, bn: int) -> list[Stmt]:
    """The thread id and the output tile's origin (M tiles along x, N tiles along y)."""
    return [Decl("int", TID, Cast("int", Var("threadIdx.x")), const=True),
            Decl(INDEX, M0, binop("*", Cast(INDEX, Var("blockIdx.x")), bm), const=True),
            Decl(INDEX, N0, binop("*", Cast(INDEX, Var("blockIdx.y")), bn), const=True)]


def _grid_xy(p: Problem, bm: int, bn: int) -> tuple[int, int]:
    gx, gy = max(1, -(-p.m // bm)), max(1, -(-p.n // bn))
    if gy > _MAX_GRID_YZ:
        raise ValueError(f"matmul with N={p.n} needs {gy} column tiles, beyond CUDA's 65535 in y")
    return gx, gy


OUT_W, ROWS_LEFT, COLS_LEFT = Var("out_w"), Var("rows_left"), Var("cols_left")


def out_window(out: Param, p: Problem, row0: Expr, col0: Expr, out_base: Expr, tile: tuple[int, int]) -> list[Stmt]:
    """A pointer to the output at (row0, col0), and the rows / columns left in the matrix from there where the
    tile does not divide M / N: each store is then 32-bit index math (rows * N < 2^31, as grid.y bounds N)."""
    at = binop("+", out_base, binop("+", binop("*", row0, p.n), col0))
    s: list[Stmt] = [Decl(f"{out.ctype}*", OUT_W, binop("+", out.var(), at))]
    if p.m % tile[0]:
        s.append(Decl("int", ROWS_LEFT, Cast("int", binop("-", lit(p.m), row0)), const=True))
    if p.n % tile[1]:
        s.append(Decl("int", COLS_LEFT, Cast("int", binop("-", lit(p.n), col0)), const=True))
    return s


def store_window(p: Problem, tile: tuple[int, int], r: Expr, c: Expr, value: Expr) -> list[Stmt]:
    """out_w[r][c] = value (converted to the storage type), where inside the matrix."""
    cond = _and(binop("<", r, ROWS_LEFT) if p.m % tile[0] else None,
                binop("<", c, COLS_LEFT) if p.n % tile[1] else None)
    return _guard(cond, [Assign(OUT_W[binop("+", binop("*", r, p.n), c)], store_value(p.dtype, value))])


def _params(dt: str) -> list[Param]:
    return [tensor_param("out", dt, const=False), tensor_param("in0", dt), tensor_param("in1", dt)]


def _tiles(p: Problem, bm: int, bn: int) -> int:
    return -(-p.m // bm) * -(-p.n // bn) * max(1, p.batch)


# ----------------------------------------------------------------------------------------------- SIMT GEMM
@dataclass(frozen=True)
class SimtTile:
    """A register-blocked tile: the block computes BM x BN, each thread TM x TN (in groups of 4 rows / columns,
    BM / (TM / 4) apart, so a warp's shared reads of a row of 4 are contiguous float4s)."""

    bm: int
    bn: int
    bk: int
    tm: int
    tn: int

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)


SIMT_LARGE = SimtTile(128, 128, 8, 8, 8)
SIMT_SMALL = SimtTile(64, 64, 16, 4, 4)
PAD = 4  # floats of padding per shared row: transposed staging writes hit distinct banks, float4s stay aligned


def _simt_index(group_span: int, t: Expr, i: int) -> Expr:
    """The tile row (or column) of a thread's i-th output along that axis."""
    return binop("+", binop("*", t, 4), (i // 4) * group_span + i % 4)


def simt_kernel(name: str, p: Problem, cfg: SimtTile) -> Kernel:
    """out = A @ B with shared-memory tiles and register blocking (f32 in float, integers wrapping)."""
    dt, ct = p.dtype, COMPUTE[p.dtype]
    params = _params(dt)
    out, a, b = params
    lda, ldb = cfg.bm + PAD, cfg.bn + PAD
    tx_n = cfg.bn // cfg.tn
    tx, ty = Var("tx"), Var("ty")
    span_m, span_n = cfg.bm // (cfg.tm // 4), cfg.bn // (cfg.tn // 4)
    is_float = dt == "f32"
    zero = Lit("0.0f") if is_float else Cast(STORAGE[dt], lit(0))
    rows = [_simt_index(span_m, ty, i) for i in range(cfg.tm)]
    cols = [_simt_index(span_n, tx, j) for j in range(cfg.tn)]

    def body_of(a_base: Expr, b_base: Expr, out_base: Expr) -> list[Stmt]:
        acc = Var("acc")
        s: list[Stmt] = [Raw(f"{ct} acc[{cfg.tm}][{cfg.tn}];")]
        s += [Assign(acc[i][j], Cast(ct, lit(0))) for i in range(cfg.tm) for j in range(cfg.tn)]
        kt, kk = Var("kt"), Var("kk")
        k0 = binop("*", kt, cfg.bk)
        # Both tiles are k-major in shared memory: As[k][m], Bs[k][n].
        step = [Comment("stage the k-th tiles of A and B (k-major in shared memory)")]
        step += load_tile("As", lda, a, a_base, p.a_memory(), (k0, M0) if p.ta else (M0, k0),
                          (cfg.bk, cfg.bm) if p.ta else (cfg.bm, cfg.bk), not p.ta, cfg.threads, zero)
        step += load_tile("Bs", ldb, b, b_base, p.b_memory(), (N0, k0) if p.tb else (k0, N0),
                          (cfg.bn, cfg.bk) if p.tb else (cfg.bk, cfg.bn), p.tb, cfg.threads, zero)
        step.append(SYNC)
        inner: list[Stmt] = []
        ra = [Var(f"ra{i}") for i in range(cfg.tm)]
        rb = [Var(f"rb{j}") for j in range(cfg.tn)]
        inner += _read_fragment("As", lda, kk, rows, ra, ct, is_float)
        inner += _read_fragment("Bs", ldb, kk, cols, rb, ct, is_float)
        for i in range(cfg.tm):
            for j in range(cfg.tn):
                if is_float:
                    inner.append(Assign(acc[i][j], binop("*", ra[i], rb[j]), "+="))
                else:
                    inner.append(Assign(acc[i][j], call("fir_add", acc[i][j], call("fir_mul", ra[i], rb[j]))))
        step.append(For(kk, lit(0), lit(cfg.bk), lit(1), inner, unroll=True))
        step.append(SYNC)  # before the next tiles overwrite these
        s.append(For(kt, lit(0), lit(-(-p.k // cfg.bk)), lit(1), step))
        s.append(Comment("write the thread's outputs"))
        s += out_window(out, p, M0, N0, out_base, (cfg.bm, cfg.bn))
        for i in range(cfg.tm):
            for j in range(cfg.tn):
                s += store_window(p, (cfg.bm, cfg.bn), rows[i], cols[j], acc[i][j])
        return s

    body: list[Stmt] = _prologue(cfg.bm, cfg.bn)
    body += [Decl("int", tx, binop("%", TID, tx_n), const=True), Decl("int", ty, binop("/", TID, tx_n), const=True),
             Raw(f"__shared__ __align__(16) {STORAGE[dt]} As[{cfg.bk * lda}];"),
             Raw(f"__shared__ __align__(16) {STORAGE[dt]} Bs[{cfg.bk * ldb}];")]
    loop, gz = _batch_loop(p, p.m * p.k, p.k * p.n, body_of)
    body += loop
    gx, gy = _grid_xy(p, cfg.bm, cfg.bn)
    return Kernel(name, params, body, (gx, gy, gz), (cfg.threads, 1, 1), max_threads=cfg.threads,
                  comment=f"matmul {_describe(p)}: {cfg.bm}x{cfg.bn}x{cfg.bk} tiles, {cfg.tm}x{cfg.tn} per thread")


def _read_fragment(smem: str, ld: int, kk: Expr, index: list[Expr], regs: list[Var], ct: str,
                   vector: bool) -> list[Stmt]:
    """Registers <- row kk of a k-major tile at the thread's indices (float4 reads of each group of 4)."""
    row = binop("*", kk, ld)
    if not vector:
        return [Decl(ct, r, Var(smem)[binop("+", row, ix)], const=True) for r, ix in zip(regs, index)]
    out: list[Stmt] = []
    for g in range(0, len(regs), 4):
        v = Var(f"{regs[g].name}_4")
        at = binop("/", binop("+", row, index[g]), 4)  # index[g] is a multiple of 4, and so is ld
        out.append(Decl("float4", v, Load(Cast("const float4*", Var(smem)), at), const=True))
        out += [Decl(ct, regs[g + c], Var(f"{v.name}.{f}"), const=True) for c, f in enumerate("xyzw")]
    return out


# ----------------------------------------------------------------------------------------------- WMMA GEMM
@dataclass(frozen=True)
class WmmaTile:
    """A tensor-core tile: the block computes BM x BN with WARPS_M x WARPS_N warps, each a grid of 16x16
    accumulator fragments (FM x FN)."""

    bm: int
    bn: int
    bk: int
    warps_m: int
    warps_n: int

    @property
    def threads(self) -> int:
        return 32 * self.warps_m * self.warps_n

    @property
    def fm(self) -> int:
        return self.bm // self.warps_m // 16

    @property
    def fn(self) -> int:
        return self.bn // self.warps_n // 16


WMMA_LARGE = WmmaTile(128, 128, 16, 2, 4)  # 8 warps of 64x32; BK=16 stays clear of 128 registers
WMMA_SMALL = WmmaTile(64, 64, 32, 2, 2)  # 4 warps of 32x32
HPAD = 8  # halves of padding per shared row: ldm stays a multiple of 8, ldmatrix rows hit distinct banks


def wmma_kernel(name: str, p: Problem, cfg: WmmaTile) -> Kernel:
    """out = A @ B on tensor cores (f16 / bf16 operands, f32 accumulators, one rounding at the end)."""
    dt, st = p.dtype, STORAGE[p.dtype]
    params = _params(dt)
    out, a, b = params
    zero = call(f"fir_st<{st}>", Lit("0.0f"))
    # Shared tiles keep each operand's memory layout: [BM][BK] (row_major) or, transposed, [BK][BM] (col_major).
    a_tile = (cfg.bk, cfg.bm) if p.ta else (cfg.bm, cfg.bk)
    b_tile = (cfg.bn, cfg.bk) if p.tb else (cfg.bk, cfg.bn)
    lda, ldb = a_tile[1] + HPAD, b_tile[1] + HPAD
    a_layout = "wmma::col_major" if p.ta else "wmma::row_major"
    b_layout = "wmma::col_major" if p.tb else "wmma::row_major"
    wm, wn, lane = Var("wm"), Var("wn"), Var("lane")
    warp_m0 = binop("*", wm, cfg.bm // cfg.warps_m)
    warp_n0 = binop("*", wn, cfg.bn // cfg.warps_n)

    def frag_ptr(smem: str, ld: int, outer: Expr, k: Expr, k_major: bool) -> str:
        """&tile[...] of a fragment at row / column `outer` and depth k (offsets are multiples of 16 elements,
        so fragment pointers stay 256-bit aligned)."""
        at = binop("+", binop("*", k, ld), outer) if k_major else binop("+", binop("*", outer, ld), k)
        return f"{smem} + {render_expr(at)}"

    def body_of(a_base: Expr, b_base: Expr, out_base: Expr) -> list[Stmt]:
        s: list[Stmt] = [Raw(f"wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[{cfg.fm}][{cfg.fn}];")]
        s += [Raw(f"wmma::fill_fragment(acc[{i}][{j}], 0.0f);") for i in range(cfg.fm) for j in range(cfg.fn)]
        kt, kk = Var("kt"), Var("kk")
        k0 = binop("*", kt, cfg.bk)
        step: list[Stmt] = [Comment("stage the k-th tiles of A and B in their memory layout")]
        step += load_tile("As", lda, a, a_base, p.a_memory(), (k0, M0) if p.ta else (M0, k0), a_tile, False,
                          cfg.threads, zero)
        step += load_tile("Bs", ldb, b, b_base, p.b_memory(), (N0, k0) if p.tb else (k0, N0), b_tile, False,
                          cfg.threads, zero)
        step.append(SYNC)
        inner: list[Stmt] = [
            Raw(f"wmma::fragment<wmma::matrix_a, 16, 16, 16, {st}, {a_layout}> fa[{cfg.fm}];"),
            Raw(f"wmma::fragment<wmma::matrix_b, 16, 16, 16, {st}, {b_layout}> fb[{cfg.fn}];")]
        for i in range(cfg.fm):
            ptr = frag_ptr("As", lda, binop("+", warp_m0, 16 * i), kk, p.ta)
            inner.append(Raw(f"wmma::load_matrix_sync(fa[{i}], {ptr}, {lda});"))
        for j in range(cfg.fn):
            ptr = frag_ptr("Bs", ldb, binop("+", warp_n0, 16 * j), kk, not p.tb)
            inner.append(Raw(f"wmma::load_matrix_sync(fb[{j}], {ptr}, {ldb});"))
        inner += [Raw(f"wmma::mma_sync(acc[{i}][{j}], fa[{i}], fb[{j}], acc[{i}][{j}]);")
                  for i in range(cfg.fm) for j in range(cfg.fn)]
        step.append(For(kk, lit(0), lit(cfg.bk), lit(16), inner, unroll=True))
        step.append(SYNC)  # before the next tiles overwrite these
        s.append(For(kt, lit(0), lit(-(-p.k // cfg.bk)), lit(1), step))
        # Epilogue: each fragment goes through the warp's 16x16 scratch; a lane writes 8 of its elements.
        s.append(Comment("round each accumulator fragment once, through the warp's shared scratch"))
        t, r, c = Var("t"), Var("er"), Var("ec")
        s += out_window(out, p, binop("+", M0, warp_m0), binop("+", N0, warp_n0), out_base, (cfg.bm, cfg.bn))
        for i in range(cfg.fm):
            for j in range(cfg.fn):
                s.append(Raw(f"wmma::store_matrix_sync(scratch, acc[{i}][{j}], 16, wmma::mem_row_major);"))
                s.append(Raw("__syncwarp();"))
                write = [Decl("int", r, binop("+", binop("*", Cast("int", t), 2), binop("/", lane, 16)), const=True),
                         Decl("int", c, binop("%", lane, 16), const=True)]
                write += store_window(p, (cfg.bm, cfg.bn), binop("+", r, 16 * i), binop("+", c, 16 * j),
                                      Var("scratch")[binop("+", binop("*", r, 16), c)])
                s.append(For(t, lit(0), lit(8), lit(1), write, unroll=True))
                s.append(Raw("__syncwarp();"))  # before the next fragment overwrites the scratch
        return s

    warp = Var("warp")
    body: list[Stmt] = [Raw("using namespace nvcuda;"), *_prologue(cfg.bm, cfg.bn),
                        Decl("int", warp, binop("/", TID, 32), const=True),
                        Decl("int", lane, binop("%", TID, 32), const=True),
                        Decl("int", wm, binop("/", warp, cfg.warps_n), const=True),
                        Decl("int", wn, binop("%", warp, cfg.warps_n), const=True),
                        Raw(f"__shared__ __align__(32) {st} As[{a_tile[0] * lda}];"),
                        Raw(f"__shared__ __align__(32) {st} Bs[{b_tile[0] * ldb}];"),
                        Raw(f"__shared__ __align__(32) float Cs[{cfg.threads // 32 * 256}];"),
                        Raw("float* const scratch = Cs + warp * 256;")]
    loop, gz = _batch_loop(p, p.m * p.k, p.k * p.n, body_of)
    body += loop
    gx, gy = _grid_xy(p, cfg.bm, cfg.bn)
    return Kernel(name, params, body, (gx, gy, gz), (cfg.threads, 1, 1), max_threads=cfg.threads,
                  comment=f"matmul {_describe(p)}: WMMA {cfg.bm}x{cfg.bn}x{cfg.bk} tiles, "
                          f"{cfg.warps_m}x{cfg.warps_n} warps")


# ----------------------------------------------------------------------------------------------- entry point
def _describe(p: Problem) -> str:
    batch = "x".join(map(str, p.batch_shape)) + " x " if p.batch_shape else ""
    flags = "".join(f" {f}" for f, on in (("transpose_a", p.ta), ("transpose_b", p.tb)) if on)
    return f"{p.dtype} {batch}[{p.m}x{p.k}] @ [{p.k}x{p.n}]{flags}"


def matmul_kernel(name: str, op: MatmulOp) -> Kernel:
    """The CUDA kernel of one flow.matmul on its (static) local shapes."""
    p = problem_of(op)
    if p.m * p.n * p.batch == 0:  # an empty result: nothing to write
        return Kernel(name, _params(p.dtype), [Comment("empty result")], (1, 1, 1), (32, 1, 1), max_threads=32,
                      comment=f"matmul {_describe(p)}: empty")
    if p.dtype in ("f16", "bf16"):
        large = _tiles(p, WMMA_LARGE.bm, WMMA_LARGE.bn) >= _FULL_WAVE
        return wmma_kernel(name, p, WMMA_LARGE if large else WMMA_SMALL)
    if p.dtype == "f32":
        large = _tiles(p, SIMT_LARGE.bm, SIMT_LARGE.bn) >= _FULL_WAVE
        return simt_kernel(name, p, SIMT_LARGE if large else SIMT_SMALL)
    if p.dtype in ("i32", "i64"):
        return simt_kernel(name, p, SIMT_SMALL)
    raise ValueError(f"matmul of {p.dtype} has no kernel")

"""Kernels of the data-movement and source ops: transpose (through shared memory when the innermost axis
moves), reshape, concat, slice, gather, constant and iota. Each output element is written once, by a
grid-stride loop over the output, except in the tiled transpose."""

from __future__ import annotations

import hashlib
import math

import numpy as np
from xdsl.ir import Operation

from fir.codegen.common import (
    BID,
    compute_type,
    THREADS,
    TID,
    blocks_for,
    float_constant,
    grid_stride,
    offset,
    scalar_param,
    store,
    store_value,
    strides,
    tensor_param,
    unravel,
)
from fir.codegen.kernel_ir import (
    INDEX,
    STORAGE,
    SYNC,
    Assign,
    BinOp,
    Cast,
    Decl,
    Expr,
    For,
    If,
    Kernel,
    Param,
    Raw,
    Stmt,
    Var,
    binop,
    call,
    float_lit,
    lit,
    render_expr,
)
from fir.codegen.prelude import STATUS_INDEX_OUT_OF_RANGE
from fir.dialects.base import to_tt

# Tiled transpose: 32 x 32 tiles, 32 x 8 threads, each thread moving 4 elements; the +1 column keeps the
# column reads of the tile free of shared-memory bank conflicts.
TILE = 32
ROWS = 8


def _shape(v) -> tuple[tuple[int, ...], str]:
    return to_tt(v.type)


def _copy_kernel(name: str, op: Operation, comment: str, source) -> Kernel:
    """A grid-stride loop over the output; `source(i, params)` gives the statements that write output element i."""
    shape, dt = _shape(op.results[0])
    params = [tensor_param("out", dt, const=False)]
    params += [tensor_param(f"in{k}", _shape(v)[1]) for k, v in enumerate(op.operands)]
    n = math.prod(shape)
    i = Var("i")
    body = source(i, params)
    return Kernel(name, params, [grid_stride(i, n, body)], (blocks_for(n), 1, 1), (THREADS, 1, 1), comment=comment)


def _raw_copy(out: Param, src: Param, out_index: Expr, in_index: Expr) -> Stmt:
    """out[o] = in[i] bit for bit (no conversion)."""
    return Assign(out.var()[out_index], src.var()[in_index])


def transpose_kernel(name: str, op: Operation) -> Kernel:
    """flow.transpose: shared-memory tiles when the innermost axis moves, else a gather of whole rows."""
    in_shape, dt = _shape(op.operands[0])
    perm = list(op.attr_values()["perm"])
    out_shape, _ = _shape(op.results[0])
    rank = len(in_shape)
    if rank < 2 or perm[-1] == rank - 1 or math.prod(in_shape) == 0:
        def source(i, params):
            coords = unravel(i, out_shape)
            in_coords: list[Expr] = [lit(0)] * rank
            for out_axis, in_axis in enumerate(perm):
                in_coords[in_axis] = coords[out_axis]
            return [_raw_copy(params[0], params[1], i, offset(in_coords, in_shape))]
        return _copy_kernel(name, op, f"transpose perm={perm} (rows kept)", source)
    return _tiled_transpose(name, dt, in_shape, perm)


def _tiled_transpose(name: str, dt: str, in_shape: tuple[int, ...], perm: list[int]) -> Kernel:
    rank = len(in_shape)
    a = perm[-1]  # the input axis that becomes the output's innermost
    last = rank - 1  # the input's innermost axis, which moves inward in the output
    out_shape = [in_shape[p] for p in perm]
    in_st, out_st = strides(in_shape), strides(out_shape)
    out_stride_of = {p: out_st[k] for k, p in enumerate(perm)}  # output stride of each input axis
    others = [d for d in range(rank) if d not in (a, last)]
    batch = math.prod(in_shape[d] for d in others)
    rows, cols = in_shape[a], in_shape[last]
    params = [tensor_param("out", dt, const=False), tensor_param("in0", dt)]
    out, src = params[0].var(), params[1].var()
    tile: Expr = Var("tile")
    storage = params[0].ctype
    body: list[Stmt] = [Raw(f"__shared__ {storage} tile[{TILE}][{TILE + 1}];")]
    # blockIdx.z walks the other axes: their offsets in the input and the output.
    b = Var("b")
    body.append(Decl(INDEX, b, Cast(INDEX, Var("blockIdx.z")), const=True))
    in_base: Expr = lit(0)
    out_base: Expr = lit(0)
    for d, c in zip(others, unravel(b, [in_shape[d] for d in others])):
        in_base = binop("+", in_base, binop("*", c, in_st[d]))
        out_base = binop("+", out_base, binop("*", c, out_stride_of[d]))
    body += [Decl(INDEX, Var("in_base"), in_base, const=True), Decl(INDEX, Var("out_base"), out_base, const=True)]
    r0 = binop("*", Cast(INDEX, Var("blockIdx.y")), TILE)
    c0 = binop("*", Cast(INDEX, BID), TILE)
    body += [Decl(INDEX, Var("r0"), r0, const=True), Decl(INDEX, Var("c0"), c0, const=True)]
    k = Var("k")
    ty, tx = Var("threadIdx.y"), TID
    # Read: rows of the tile along the input's innermost axis (coalesced).
    r = binop("+", Var("r0"), binop("+", ty, k))
    c = binop("+", Var("c0"), tx)
    read = If(BinOp("&&", BinOp("<", r, lit(rows)), BinOp("<", c, lit(cols))),
              [Assign(tile[binop("+", ty, k)][tx],
                      src[binop("+", Var("in_base"), binop("+", binop("*", r, in_st[a]), c))])])
    body.append(For(k, lit(0), lit(TILE), lit(ROWS), [read], unroll=True))
    body.append(SYNC)
    # Write: rows of the tile along the output's innermost axis (input axis a), also coalesced.
    wr = binop("+", Var("r0"), tx)
    wc = binop("+", Var("c0"), binop("+", ty, k))
    write = If(BinOp("&&", BinOp("<", wr, lit(rows)), BinOp("<", wc, lit(cols))),
               [Assign(out[binop("+", Var("out_base"), binop("+", binop("*", wc, out_stride_of[last]), wr))],
                       tile[tx][binop("+", ty, k)])])
    body.append(For(k, lit(0), lit(TILE), lit(ROWS), [write], unroll=True))
    grid = (-(-cols // TILE), -(-rows // TILE), batch)
    if grid[1] > 65535 or grid[2] > 65535:
        raise ValueError(f"transpose of {in_shape} needs a grid of {grid}, beyond CUDA's 65535 in y and z")
    return Kernel(name, params, body, grid, (TILE, ROWS, 1),
                  comment=f"transpose perm={perm} through {TILE}x{TILE} shared-memory tiles")


def reshape_kernel(name: str, op: Operation) -> Kernel:
    """flow.reshape: a row-major copy (the launch plan leaves out one the plan put in place)."""

    def source(i, params):
        return [_raw_copy(params[0], params[1], i, i)]
    return _copy_kernel(name, op, "reshape (row-major copy)", source)


def slice_kernel(name: str, op: Operation) -> Kernel:
    """flow.slice: out[c] = in[start + c * stride] on every axis."""
    in_shape, dt = _shape(op.operands[0])
    vals = op.attr_values()
    out_shape = _shape(op.results[0])[0]

    def source(i, params):
        coords = [binop("+", s, binop("*", c, st)) for c, s, st in
                  zip(unravel(i, out_shape), vals["start"], vals["stride"])]
        return [_raw_copy(params[0], params[1], i, offset(coords, in_shape))]
    return _copy_kernel(name, op, f"slice start={list(vals['start'])} stride={list(vals['stride'])}", source)


def piece_kernel(name: str, op: Operation) -> Kernel:
    """An SPMD plan's comm.slice (B -> S(axis)): the device's piece, whose start along the split axis is the
    launch's scalar argument (the class's pieces share one shape, not one start)."""
    in_shape, dt = _shape(op.operands[0])
    out_shape = _shape(op.results[0])[0]
    axis = op.transition()[2].axis  # type: ignore[attr-defined]
    params = [tensor_param("out", dt, const=False), tensor_param("in0", dt), scalar_param("start")]
    n = math.prod(out_shape)
    i = Var("i")
    coords = unravel(i, out_shape)
    coords[axis] = binop("+", coords[axis], params[2].var())
    body = [_raw_copy(params[0], params[1], i, offset(coords, in_shape))]
    return Kernel(name, params, [grid_stride(i, n, body)], (blocks_for(n), 1, 1), (THREADS, 1, 1),
                  comment=f"the device's piece along axis {axis} (start given at launch)")


def position_kernel(name: str, op: Operation) -> Kernel:
    """sbp.position: the device's coordinate, given at launch, as a rank-0 tensor."""
    dt = _shape(op.results[0])[1]  # i32 or i64
    params = [tensor_param("out", dt, const=False), scalar_param("coord")]
    return Kernel(name, params, [store(params[0], dt, 0, params[1].var())], (1, 1, 1), (1, 1, 1),
                  comment="the device's coordinate (given at launch)")


def concat_kernel(name: str, op: Operation) -> Kernel:
    """flow.concat: each output element from the operand whose range along `axis` holds it."""
    out_shape, dt = _shape(op.results[0])
    axis = op.attr_values()["axis"] % len(out_shape)

    starts = np.cumsum([0] + [_shape(v)[0][axis] for v in op.operands]).tolist()

    def source(i, params):
        coords = unravel(i, out_shape)
        c = Var("c")
        chain: list[Stmt] = []
        # Tested from the last operand down: the first whose start is <= c holds the element.
        for k, v in enumerate(op.operands):
            in_coords = list(coords)
            in_coords[axis] = binop("-", c, starts[k])
            copy = [_raw_copy(params[0], params[k + 1], i, offset(in_coords, _shape(v)[0]))]
            chain = copy if not chain else [If(BinOp(">=", c, lit(starts[k])), copy, chain)]
        return [Decl(INDEX, c, coords[axis], const=True), *chain]
    return _copy_kernel(name, op, f"concat along axis {axis}", source)


def gather_kernel(name: str, op: Operation) -> Kernel:
    """flow.gather: np.take(table, indices, axis); an index out of range sets fir_status and writes zero."""
    table_shape, dt = _shape(op.operands[0])
    idx_shape = _shape(op.operands[1])[0]
    axis = op.attr_values()["axis"] % len(table_shape)
    out_shape = _shape(op.results[0])[0]
    size = table_shape[axis]

    def source(i, params):
        coords = unravel(i, out_shape)
        pre, idx_c, post = coords[:axis], coords[axis:axis + len(idx_shape)], coords[axis + len(idx_shape):]
        j = Var("j")
        stmts: list[Stmt] = [Decl("long long", j, Cast("long long", params[2].var()[offset(idx_c, idx_shape)]),
                                  const=True)]
        in_index = offset([*pre, j, *post], table_shape)
        ok = BinOp("&&", BinOp(">=", j, lit(0)), BinOp("<", j, lit(size)))
        zero = store_value(dt, float_lit(0.0) if dt in ("f32", "f16", "bf16") else lit(0))
        stmts.append(If(ok, [_raw_copy(params[0], params[1], i, in_index)],
                        [Raw(f"fir_fail({STATUS_INDEX_OUT_OF_RANGE});"), Assign(params[0].var()[i], zero)]))
        return stmts
    return _copy_kernel(name, op, f"gather along axis {axis}", source)


def scatter_add_kernel(name: str, op: Operation) -> Kernel:
    """flow.scatter_add: each output element sums, in index order, the updates whose index selects it (no atomics:
    the same bits on every run, as the reference's np.add.at). Every thread scans all the indices, so the work is
    output elements x indices: right for embedding gradients of modest vocabularies; an index out of range sets
    fir_status."""
    upd_shape, dt = _shape(op.operands[0])
    idx_shape = _shape(op.operands[1])[0]
    out_shape = _shape(op.results[0])[0]
    axis = op.attr_values()["axis"] % len(out_shape)
    size, k, count = out_shape[axis], len(idx_shape), math.prod(idx_shape)

    def source(i, params):
        coords = unravel(i, out_shape)
        pre, v, post = coords[:axis], coords[axis], coords[axis + 1:]
        n, j, acc = Var("n"), Var("j"), Var("acc")
        ctype = compute_type(dt)
        upd_index = offset([*pre, *unravel(n, idx_shape), *post], upd_shape) if k else offset([*pre, *post], upd_shape)
        body: list[Stmt] = [
            Decl("long long", j, Cast("long long", params[2].var()[n if k else lit(0)]), const=True),
            If(BinOp("||", BinOp("<", j, lit(0)), BinOp(">=", j, lit(size))),
               [Raw(f"fir_fail({STATUS_INDEX_OUT_OF_RANGE});")]),
            If(BinOp("==", j, v), [Assign(acc, call("fir_ld", params[1].var()[upd_index]), "+=")]),
        ]
        zero: Expr = float_lit(0.0) if dt in ("f32", "f16", "bf16") else Cast(ctype, lit(0))
        return [Decl(ctype, acc, zero), For(n, lit(0), lit(max(count, 1)), lit(1), body),
                store(params[0], dt, i, acc)]
    return _copy_kernel(name, op, f"scatter_add along axis {axis} ({count} indices)", source)


def iota_kernel(name: str, op: Operation) -> Kernel:
    """flow.iota: element (i0, i1, ...) is i_axis."""
    shape, dt = _shape(op.results[0])
    axis = op.attr_values()["axis"] % len(shape)

    def source(i, params):
        c = unravel(i, shape)[axis]
        value: Expr = Cast("float", c) if dt in ("f32", "f16", "bf16") else c
        return [store(params[0], dt, i, value if dt != "i1" else BinOp("!=", c, lit(0)))]
    return _copy_kernel(name, op, f"iota along axis {axis}", source)


def constant_kernel(name: str, op: Operation) -> Kernel:
    """flow.constant: the literal, written from a table in the translation unit (or one splat value)."""
    shape, dt = _shape(op.results[0])
    value = np.asarray(op.attr_values()["value"])
    flat = np.broadcast_to(value, shape).ravel() if value.size == 1 else value.ravel()
    n = math.prod(shape)
    i = Var("i")
    params = [tensor_param("out", dt, const=False)]
    floats = dt in ("f32", "f16", "bf16")
    if value.size == 1 or (flat.size and np.all(flat == flat[0])):
        v = flat[0] if flat.size else 0
        x = float_constant(v, dt) if floats else lit(bool(v)) if dt == "i1" else Cast("long long", lit(int(v)))
        body = [grid_stride(i, n, [store(params[0], dt, i, x)])]
        return Kernel(name, params, body, (blocks_for(n), 1, 1), (THREADS, 1, 1), comment="constant (splat)")
    # Named by content: equal tables are written once per translation unit, and different ones never clash.
    table = f"fir_table_{dt}_{hashlib.sha1(np.ascontiguousarray(flat).tobytes()).hexdigest()[:16]}"
    # Floats are stored as float32 holding each value rounded once to the dtype (as the reference rounds it).
    if floats:
        items = ", ".join(render_expr(float_constant(x, dt)) for x in flat)
        ctype = "float"
    else:
        items = ", ".join(render_expr(lit(bool(x) if dt == "i1" else int(x))) for x in flat)
        ctype = STORAGE[dt]
    helper = f"__device__ const {ctype} {table}[{max(1, n)}] = {{{items}}};\n"
    value_expr = call("fir_ld", Var(table)[i]) if floats else Var(table)[i]
    body = [grid_stride(i, n, [store(params[0], dt, i, value_expr)])]
    return Kernel(name, params, body, (blocks_for(n), 1, 1), (THREADS, 1, 1), comment="constant (table)",
                  helpers=(helper,))


__all__ = ["concat_kernel", "constant_kernel", "gather_kernel", "iota_kernel", "piece_kernel", "position_kernel",
           "reshape_kernel", "scatter_add_kernel", "slice_kernel", "transpose_kernel"]

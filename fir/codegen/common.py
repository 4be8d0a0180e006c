"""Helpers every kernel emitter shares: row-major index math, loads and stores in fir's dtypes, grid-stride
loops and launch sizes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fir.codegen.kernel_ir import (
    COMPUTE,
    INDEX,
    STORAGE,
    Assign,
    Cast,
    Decl,
    Expr,
    For,
    Param,
    Stmt,
    Var,
    binop,
    call,
    float_lit,
    lit,
)
from fir.dialects.dtypes import numpy_dtype

THREADS = 256
# Grid-stride loops use at most this many blocks (enough to fill an H100's 132 SMs many times over).
MAX_BLOCKS = 65535

TID = Var("threadIdx.x")
BID = Var("blockIdx.x")
BDIM = Var("blockDim.x")
GDIM = Var("gridDim.x")


def strides(shape: Sequence[int]) -> list[int]:
    """Row-major element strides."""
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return out[::-1]


def unravel(index: Expr, shape: Sequence[int]) -> list[Expr]:
    """The coordinates of a row-major linear index (axis 0 needs no modulo)."""
    coords: list[Expr] = []
    for d, (n, s) in enumerate(zip(shape, strides(shape))):
        if n == 1:
            coords.append(lit(0))
            continue
        c = binop("/", index, s)
        coords.append(c if d == 0 else binop("%", c, n))
    return coords


def offset(coords: Sequence[Expr], shape: Sequence[int]) -> Expr:
    """The row-major linear offset of coordinates in `shape`."""
    out: Expr = lit(0)
    for c, s, n in zip(coords, strides(shape), shape):
        if n != 1:
            out = binop("+", out, binop("*", c, s))
    return out


def broadcast_offset(index: Expr, out_shape: Sequence[int], in_shape: Sequence[int]) -> Expr:
    """Offset into an operand of `in_shape` broadcast (numpy rules) to `out_shape`, at linear output `index`."""
    in_shape = tuple(in_shape)
    out_shape = tuple(out_shape)
    if in_shape == out_shape:
        return index
    lead = len(out_shape) - len(in_shape)
    if math.prod(in_shape) == 1:
        return lit(0)
    # An operand equal to the output's trailing axes repeats every prod(in_shape) elements.
    if in_shape == out_shape[lead:]:
        return binop("%", index, math.prod(in_shape))
    coords = unravel(index, out_shape)[lead:]
    return offset([c if n != 1 else lit(0) for c, n in zip(coords, in_shape)], in_shape)


def load(param: Param, index: Expr) -> Expr:
    """Element `index` of a tensor parameter in its compute type."""
    return call("fir_ld", param.var()[index])


def store_value(dtype: str, value: Expr) -> Expr:
    """A compute-type value converted to `dtype`'s storage type."""
    if dtype in ("f16", "bf16"):
        return call(f"fir_st<{STORAGE[dtype]}>", value)
    if dtype == "i1":
        return value
    return Cast(STORAGE[dtype], value)


def store(param: Param, dtype: str, index: Expr, value: Expr) -> Stmt:
    """out[index] = value, converted to the storage type."""
    return Assign(param.var()[index], store_value(dtype, value))


def round_to(dtype: str, value: Expr) -> Expr:
    """A float compute value rounded to `dtype` once (f16/bf16), as each fir op's result is."""
    if dtype == "f16":
        return call("fir_round_f16", value)
    if dtype == "bf16":
        return call("fir_round_bf16", value)
    return value


def float_constant(value: float, dtype: str) -> Expr:
    """A float literal of `value` rounded once to `dtype`, as the reference rounds a constant (float64 straight to
    f16/bf16; the result is exact in float32)."""
    return float_lit(float(np.asarray(value, np.float64).astype(numpy_dtype(dtype)).astype(np.float32)))


def tensor_param(name: str, dtype: str, const: bool = True) -> Param:
    """A parameter pointing at a tensor of `dtype`."""
    return Param(name, STORAGE[dtype], const)


def scalar_param(name: str) -> Param:
    """A 64-bit integer parameter passed by value."""
    return Param(name, INDEX, scalar=True)


def grid_stride(var: Var, n: int, body: list[Stmt]) -> For:
    """for (i = global thread id; i < n; i += all threads) body."""
    start = binop("+", binop("*", Cast(INDEX, BID), BDIM), TID)
    return For(var, start, lit(n), binop("*", Cast(INDEX, GDIM), BDIM), body)


def blocks_for(n: int, threads: int = THREADS) -> int:
    """Blocks of a grid-stride loop over n elements."""
    return max(1, min(MAX_BLOCKS, -(-n // threads)))


def compute_type(dtype: str) -> str:
    """The C type a dtype computes in."""
    return COMPUTE[dtype]


def decl(ctype: str, name: str, init: Expr) -> tuple[Stmt, Var]:
    """A const declaration and its variable."""
    v = Var(name)
    return Decl(ctype, v, init, const=True), v

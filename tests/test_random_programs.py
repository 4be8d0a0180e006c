"""Property tests over random, well-typed fir programs.

A hypothesis strategy writes .fir text for a function of 1-4 f32 arguments followed by random flow ops of every
kind, and keeps its own shape bookkeeping: each expected shape comes from numpy itself (np.broadcast_shapes,
np.matmul, np.sum, np.take, ... applied to dummy arrays), never from fir's `infer` rules. The properties:

* parse -> print -> parse -> print is a fixed point, in .fir syntax and through MLIR generic syntax;
* every inferred or written result type equals the generator's shape, and so do the arrays the reference
  interpreter computes;
* each op's value equals an independent numpy evaluation (float64 formulas, per op on the interpreter's own
  operand values), and chains of elementwise ops with broadcasting equal numpy end to end;
* xDSL's cse, dce and canonicalize leave the program's results bit-for-bit unchanged.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from io import StringIO
from typing import Any

import ml_dtypes
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.printer import Printer

from fir.dialects.dtypes import TOLERANCE, dtype_name
from fir.syntax.parser import parse_fir
from fir.syntax.printer import print_fir
from fir.syntax.frontend import make_context, parse_source, verify_module
from fir.runtime.interpreter import run_function

NP_DTYPE: dict[str, Any] = {
    "f32": np.dtype(np.float32),
    "f16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "f64": np.dtype(np.float64),
    "i32": np.dtype(np.int32),
    "i64": np.dtype(np.int64),
    "i1": np.dtype(np.bool_),
}
FLOATS = ("f32", "f16", "bf16", "f64")
INTS = ("i32", "i64")
MAX_RANK = 4
# How a generated function is wrapped: bare, or in a module with or without a name.
MODULE_WRAPS = ("", "", "module {", "module @m {", "// a random program\nmodule @prog {")
MAX_NUMEL = 1200

SETTINGS = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# ----------------------------------------------------------------------------------------------- program model
@dataclass
class Val:
    """One SSA value of a generated program, with the type the generator expects."""

    shape: tuple[int, ...]
    dtype: str
    hi: int | None = None  # integers: every element lies in [0, hi); None when unknown
    pos: bool = False  # floats: made by an op whose result is (nearly always) positive


@dataclass
class Op:
    """One generated flow op: its operands (indices into Program.values) and its full attribute values."""

    name: str
    operands: list[int]
    attrs: dict[str, Any]
    result: int


@dataclass
class Program:
    text: str
    values: list[Val]  # arguments first, then one value per op, in order
    n_args: int
    ops: list[Op]
    returns: list[int]

    def expected(self) -> list[tuple[tuple[int, ...], str]]:
        """The expected (shape, dtype) of every value: arguments, then each op's result."""
        return [(v.shape, v.dtype) for v in self.values]

    def arg_vals(self) -> list[Val]:
        return self.values[: self.n_args]


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def type_text(shape: tuple[int, ...], dtype: str) -> str:
    return "tensor<" + "".join(f"{d}x" for d in shape) + dtype + ">"


def lit(v: Any) -> str:
    """A .fir literal, written independently of fir's own formatter."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        r = repr(v)
        return r if any(c in r for c in ".e") else r + ".0"
    if isinstance(v, str):
        return '"' + v + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(lit(x) for x in v) + "]"
    raise TypeError(v)


def dummy(shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape, dtype=np.int8)


# ----------------------------------------------------------------------------------------------- the generator
class _Gen:
    """Writes one function, op by op; every shape is worked out with numpy on dummy arrays."""

    UNARY = ("neg", "exp", "log", "sqrt", "rsqrt", "tanh", "relu", "sigmoid", "erf", "gelu")
    BINARY = ("add", "sub", "mul", "div", "max", "min", "pow", "greater", "equal")

    def __init__(self, draw, n_args: int):
        self.draw = draw
        self.values: list[Val] = []
        self.names: list[str] = []
        self.ops: list[Op] = []
        self.lines: list[str] = []
        self.arg_decls: list[str] = []
        self.arg_indices: list[int] = []
        self.n_args = 0
        self.style = draw(st.sampled_from(["v", "v", "num", "mixed"]))
        self.counter = 0
        for _ in range(n_args):
            self.new_arg(self.rand_shape())

    # -- random helpers ---------------------------------------------------------------------------------------
    def int(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def chance(self, percent: int) -> bool:
        return self.draw(st.integers(0, 99)) < percent

    def choice(self, seq):
        return self.draw(st.sampled_from(list(seq)))

    def rand_shape(self, min_rank: int = 0, max_rank: int = MAX_RANK) -> tuple[int, ...]:
        return tuple(self.int(1, 5) for _ in range(self.int(min_rank, max_rank)))

    def rand_float(self) -> float:
        if self.chance(50):
            return self.choice([0.0, 1.0, -1.0, 0.5, 2.0, -0.25, 3.0, 1e-3, 10.0])
        return float(np.float32(self.draw(st.floats(-8, 8, allow_nan=False, width=32))))

    def pick(self, pred, recent: int = 50) -> int | None:
        """A value satisfying pred: the most recent one with probability recent%, else any."""
        cands = [i for i, v in enumerate(self.values) if pred(v)]
        if not cands:
            return None
        if self.chance(recent):
            return cands[-1]
        return self.choice(cands)

    # -- naming and emitting ---------------------------------------------------------------------------------
    def fresh_name(self) -> str:
        k = self.counter
        self.counter += 1
        style = self.style if self.style != "mixed" else self.choice(["v", "num", "dot", "under", "dash", "vnum"])
        return {"v": f"%v{k}", "num": f"%{k}", "dot": f"%t.{k}", "under": f"%_{k}", "dash": f"%a-{k}",
                "vnum": f"%v_{k}"}[style]

    def new_arg(self, shape: tuple[int, ...]) -> int:
        name = f"%arg{self.n_args}" if self.style == "num" else f"%a{self.n_args}"
        self.n_args += 1
        self.arg_decls.append(f"{name}: {type_text(shape, 'f32')}")
        # Arguments precede every op result in Program.values; op operands are renumbered at the end.
        self.values.append(Val(shape, "f32"))
        self.names.append(name)
        self.arg_indices.append(len(self.values) - 1)
        return len(self.values) - 1

    def can_add_arg(self) -> bool:
        return self.n_args < 4

    def attr_text(self, attrs: dict[str, Any], defaults: dict[str, Any]) -> str:
        """Required and non-default attributes always, default ones sometimes; in a random order."""
        items = [(k, v) for k, v in attrs.items() if k not in defaults or defaults[k] != v or self.chance(30)]
        if len(items) > 1 and self.chance(30):
            items = self.draw(st.permutations(items))
        if not items:
            return ""
        return " {" + ", ".join(f"{k} = {lit(v)}" for k, v in items) + "}"

    def emit(self, op: str, operands: list[int], attrs: dict[str, Any], defaults: dict[str, Any],
             val: Val, write_type: bool | None = None) -> int:
        if numel(val.shape) > MAX_NUMEL or len(val.shape) > MAX_RANK + 1:
            raise _TooBig
        name = self.fresh_name()
        line = f"  {name} = flow.{op}"
        if operands:
            line += " " + ", ".join(self.names[i] for i in operands)
        line += self.attr_text(attrs, defaults)
        if write_type is None:
            write_type = self.chance(50)
        if write_type:
            line += " : " + type_text(val.shape, val.dtype)
        if self.chance(5):
            line += "  // a comment"
        self.lines.append(line)
        self.values.append(val)
        self.names.append(name)
        self.ops.append(Op(f"flow.{op}", list(operands), dict(attrs), len(self.values) - 1))
        return len(self.values) - 1

    # -- sources -----------------------------------------------------------------------------------------------
    def fill(self, shape: tuple[int, ...], dtype: str, value: float | None = None) -> int:
        if value is None:
            value = self.rand_float() if dtype in FLOATS else self.int(0, 1 if dtype == "i1" else 4)
            if dtype in FLOATS and self.chance(3):
                value = self.choice([math.inf, -math.inf, math.nan])
        if dtype in INTS and self.chance(50):
            value = float(value)  # an integral float literal is fine for an integer fill
        hi = int(value) + 1 if dtype in INTS and int(value) >= 0 else None
        return self.emit("fill", [], {"value": value}, {}, Val(shape, dtype, hi=hi, pos=dtype in FLOATS and value > 0),
                         write_type=True)

    def constant(self, shape: tuple[int, ...], dtype: str, bound: int | None = None) -> int:
        """A constant; integers lie in [0, bound)."""
        n = numel(shape)
        if dtype in INTS or dtype == "i1":
            b = 2 if dtype == "i1" else bound if bound is not None else 6
            flat = [self.int(0, b - 1) for _ in range(n)]
        else:
            flat = [self.rand_float() if self.chance(80) else self.int(-3, 3) for _ in range(n)]
        if n > 40 or self.chance(25):  # a splat: one number for every element
            flat = [flat[0]] * n
            literal: Any = flat[0]
        else:
            literal = np.array(flat, dtype=object).reshape(shape).tolist()
        hi = (max(flat) + 1 if flat else 0) if dtype in INTS else None
        pos = dtype in FLOATS and all(float(x) > 0 for x in flat)
        return self.emit("constant", [], {"value": literal}, {}, Val(shape, dtype, hi=hi, pos=pos), write_type=True)

    def iota(self, shape: tuple[int, ...], dtype: str, axis: int | None = None) -> int:
        rank = len(shape)
        if axis is None:
            axis = self.int(0, rank - 1)
        written = axis - rank if self.chance(25) else axis
        hi = shape[axis] if dtype in INTS else None
        return self.emit("iota", [], {"axis": written}, {"axis": 0}, Val(shape, dtype, hi=hi), write_type=True)

    def operand_of(self, shape: tuple[int, ...], dtype: str, allow_arg: bool = True) -> int:
        """An operand of exactly this type: an existing value, a new argument, a fill or a constant."""
        existing = self.pick(lambda v: v.shape == shape and v.dtype == dtype, recent=0)
        r = self.int(0, 99)
        if existing is not None and r < 30:
            return existing
        if allow_arg and dtype == "f32" and self.can_add_arg() and r < 55:
            return self.new_arg(shape)
        if r < 80:
            return self.fill(shape, dtype)
        return self.constant(shape, dtype)

    # -- ops -------------------------------------------------------------------------------------------------
    def op_source(self) -> bool:
        kind = self.choice(["fill", "constant", "iota"])
        shape = self.rand_shape(min_rank=1 if kind == "iota" else 0)
        dtype = self.choice(["f32", "f32", "i32", "f16", "bf16", "f64"] if kind != "iota" else ["i32", "f32", "i64"])
        getattr(self, kind)(shape, dtype)
        return True

    def op_unary(self) -> bool:
        op = self.choice(self.UNARY)
        ok = (lambda v: v.dtype in FLOATS + ("i32",)) if op in ("neg", "relu") else (lambda v: v.dtype in FLOATS)
        x = None
        if op in ("log", "sqrt", "rsqrt") and self.chance(70):
            x = self.pick(lambda v: v.dtype in FLOATS and v.pos)
        if x is None:
            x = self.pick(ok)
        if x is None:
            return False
        v = self.values[x]
        attrs: dict[str, Any] = {}
        defaults: dict[str, Any] = {}
        if op == "gelu":
            attrs, defaults = {"approximate": self.choice(["none", "tanh"])}, {"approximate": "none"}
        hi = v.hi if op == "relu" else None
        pos = op in ("exp", "sigmoid") or (op == "erf" and v.pos) or (op in ("sqrt", "rsqrt") and v.pos) or (op == "relu" and v.pos)
        self.emit(op, [x], attrs, defaults, Val(v.shape, v.dtype, hi=hi, pos=pos))
        return True

    def broadcast_partner(self, shape: tuple[int, ...], dtype: str) -> int:
        """A second operand whose shape broadcasts with `shape`."""
        r = self.int(0, 99)
        if r < 30:
            cand = self.pick(lambda v: v.dtype == dtype and _broadcasts(v.shape, shape), recent=20)
            if cand is not None:
                return cand
        if r < 50 and shape:
            # Reduce a value of this shape with keepdims (or over leading axes): the result broadcasts back.
            src = self.pick(lambda v: v.dtype == dtype and v.shape == shape)
            if src is not None:
                if self.chance(60):
                    return self.reduce_of(src, keep=True)
                return self.reduce_of(src, keep=False, axes=list(range(self.int(1, len(shape)))))
        # A new operand: every dimension d or 1, maybe only a suffix of the axes, maybe with new leading axes.
        suffix = self.int(0, len(shape))
        dims = [d if self.chance(60) else 1 for d in shape[len(shape) - suffix:]]
        if suffix == len(shape) < MAX_RANK and self.chance(15):
            dims = [self.int(1, 3)] + dims
        return self.operand_of(tuple(dims), dtype)

    def op_binary(self) -> bool:
        op = self.choice(self.BINARY)
        allowed = FLOATS if op in ("div", "pow") else FLOATS + INTS
        a = None
        if op == "pow" and self.chance(70):
            a = self.pick(lambda v: v.dtype in FLOATS and v.pos)
        if a is None:
            a = self.pick(lambda v: v.dtype in allowed)
        if a is None:
            return False
        va = self.values[a]
        if self.chance(10):
            b = a  # x op x
        else:
            b = self.broadcast_partner(va.shape, va.dtype)
        vb = self.values[b]
        lhs, rhs = (a, b) if self.chance(70) else (b, a)
        shape = tuple(np.broadcast_shapes(self.values[lhs].shape, self.values[rhs].shape))
        hi = None
        if va.dtype in INTS and op in ("max", "min") and va.hi is not None and vb.hi is not None:
            hi = max(va.hi, vb.hi)
        if op in ("greater", "equal"):
            self.emit(op, [lhs, rhs], {}, {}, Val(shape, "i1"))
        else:
            self.emit(op, [lhs, rhs], {}, {}, Val(shape, va.dtype, hi=hi))
        return True

    def op_matmul(self) -> bool:
        a = self.pick(lambda v: v.dtype in FLOATS + INTS and len(v.shape) >= 2)
        if a is None:
            src = self.pick(lambda v: v.dtype in FLOATS and len(v.shape) >= 1)
            if src is None:
                return False
            a = self.reshape_of(src, min_rank=2)
        va = self.values[a]
        ta, tb = self.chance(30), self.chance(30)
        m, k = (va.shape[-1], va.shape[-2]) if ta else (va.shape[-2], va.shape[-1])
        batch = va.shape[:-2]
        r = self.int(0, 99)
        if r < 15 and not ta:
            b, tb = a, True  # x @ x^T
        else:
            n = self.int(1, 5)
            bdims = list(batch[len(batch) - self.int(0, len(batch)):])
            bdims = [d if self.chance(70) else 1 for d in bdims]
            if not batch and self.chance(20):
                bdims = [self.int(1, 3)]
            shape = tuple(bdims) + ((n, k) if tb else (k, n))
            existing = self.pick(lambda v: v.dtype == va.dtype and len(v.shape) >= 2
                                 and (v.shape[-1] if tb else v.shape[-2]) == k
                                 and _broadcasts(v.shape[:-2], batch), recent=0)
            b = existing if existing is not None and r < 40 else self.operand_of(shape, va.dtype)
        vb = self.values[b]
        ea = np.swapaxes(dummy(va.shape), -1, -2) if ta else dummy(va.shape)
        eb = np.swapaxes(dummy(vb.shape), -1, -2) if tb else dummy(vb.shape)
        shape = np.matmul(ea, eb).shape
        self.emit("matmul", [a, b], {"transpose_a": ta, "transpose_b": tb},
                  {"transpose_a": False, "transpose_b": False}, Val(shape, va.dtype))
        return True

    def reduce_of(self, x: int, keep: bool | None = None, axes: list[int] | None = None) -> int:
        v = self.values[x]
        op = self.choice(["reduce_sum", "reduce_max"] + (["reduce_mean"] if v.dtype in FLOATS else []))
        rank = len(v.shape)
        if axes is None:
            axes = list(self.draw(st.permutations(range(rank))))[: self.int(1, rank)]
        axes = [a - rank if self.chance(30) else a for a in axes]
        if keep is None:
            keep = self.chance(40)
        shape = np.sum(dummy(v.shape), axis=tuple(axes), keepdims=keep).shape
        hi = v.hi if op == "reduce_max" else None
        return self.emit(op, [x], {"axes": axes, "keepdims": keep}, {"keepdims": False},
                         Val(shape, v.dtype, hi=hi, pos=v.pos and op != "reduce_sum"))

    def op_reduce(self) -> bool:
        x = self.pick(lambda v: v.dtype in FLOATS + INTS and len(v.shape) >= 1)
        if x is None:
            return False
        self.reduce_of(x)
        return True

    def op_softmax(self) -> bool:
        x = self.pick(lambda v: v.dtype in FLOATS and len(v.shape) >= 1)
        if x is None:
            return False
        v = self.values[x]
        rank = len(v.shape)
        axis = self.int(-rank, rank - 1)
        self.emit("softmax", [x], {"axis": axis}, {"axis": -1}, Val(v.shape, v.dtype, pos=True))
        return True

    def op_layernorm(self) -> bool:
        x = self.pick(lambda v: v.dtype in FLOATS and len(v.shape) >= 1)
        if x is None:
            return False
        v = self.values[x]
        rank = len(v.shape)
        k = self.int(1, rank)
        axes = [a if self.chance(50) else a - rank for a in range(rank - k, rank)]
        if len(axes) > 1 and self.chance(30):
            axes = list(self.draw(st.permutations(axes)))
        norm_shape = v.shape[rank - k:]
        gamma = self.operand_of(norm_shape, v.dtype)
        beta = self.operand_of(norm_shape, v.dtype)
        eps = self.choice([1e-5, 1e-5, 1e-6, 1e-3, 0.1, 1.0])
        self.emit("layernorm", [x, gamma, beta], {"axes": axes, "eps": eps}, {"axes": [-1], "eps": 1e-5},
                  Val(v.shape, v.dtype))
        return True

    def transpose_of(self, x: int) -> int:
        v = self.values[x]
        perm = list(self.draw(st.permutations(range(len(v.shape)))))
        shape = np.transpose(dummy(v.shape), perm).shape
        return self.emit("transpose", [x], {"perm": perm}, {}, Val(shape, v.dtype, hi=v.hi, pos=v.pos))

    def op_transpose(self) -> bool:
        x = self.pick(lambda v: True)
        self.transpose_of(x)
        return True

    def reshape_of(self, x: int, min_rank: int = 0) -> int:
        v = self.values[x]
        n = numel(v.shape)
        if self.chance(10) and len(v.shape) >= min_rank:
            shape = v.shape  # an identity reshape, for canonicalize
        else:
            factors = _prime_factors(n)
            rank = self.int(max(min_rank, 1 if factors else 0), MAX_RANK)
            dims = [1] * rank
            for f in factors:
                dims[self.int(0, rank - 1)] *= f
            shape = tuple(dims)
        assert np.reshape(dummy(v.shape), shape).shape == shape
        return self.emit("reshape", [x], {}, {}, Val(shape, v.dtype, hi=v.hi, pos=v.pos), write_type=True)

    def op_reshape(self) -> bool:
        self.reshape_of(self.pick(lambda v: True))
        return True

    def op_broadcast_to(self) -> bool:
        x = self.pick(lambda v: True)
        v = self.values[x]
        extra = self.int(0, MAX_RANK - len(v.shape)) if len(v.shape) < MAX_RANK else 0
        target = tuple(self.int(1, 4) for _ in range(extra)) + tuple(
            self.int(1, 4) if d == 1 and self.chance(60) else d for d in v.shape)
        shape = np.broadcast_to(dummy(v.shape), target).shape
        self.emit("broadcast_to", [x], {}, {}, Val(shape, v.dtype, hi=v.hi, pos=v.pos), write_type=True)
        return True

    def slice_of(self, x: int, axis: int | None = None) -> int:
        v = self.values[x]
        start, limit, stride = [], [], []
        for i, d in enumerate(v.shape):
            if axis is not None and i != axis:
                s, l, t = 0, d, 1
            else:
                s = self.int(0, d - 1)
                l = self.int(s + 1, d)
                t = self.int(1, 3)
            start.append(s)
            limit.append(l)
            stride.append(t)
        shape = dummy(v.shape)[tuple(slice(s, l, t) for s, l, t in zip(start, limit, stride))].shape
        return self.emit("slice", [x], {"start": start, "limit": limit, "stride": stride},
                         {"stride": [1] * len(v.shape)}, Val(shape, v.dtype, hi=v.hi, pos=v.pos))

    def op_slice(self) -> bool:
        self.slice_of(self.pick(lambda v: True))
        return True

    def op_concat(self) -> bool:
        x = self.pick(lambda v: len(v.shape) >= 1)
        if x is None:
            return False
        v = self.values[x]
        rank = len(v.shape)
        axis = self.int(0, rank - 1)
        parts = [x]
        for _ in range(self.int(0, 2)):
            r = self.int(0, 99)
            if r < 25:
                parts.append(x)
            elif r < 50:
                parts.append(self.slice_of(x, axis))
            else:
                cand = self.pick(lambda w: w.dtype == v.dtype and len(w.shape) == rank and all(
                    w.shape[i] == v.shape[i] for i in range(rank) if i != axis), recent=0)
                if cand is not None and r < 70:
                    parts.append(cand)
                else:
                    shape = tuple(self.int(1, 3) if i == axis else d for i, d in enumerate(v.shape))
                    parts.append(self.operand_of(shape, v.dtype))
        if len(parts) > 1 and self.chance(50):
            parts = list(self.draw(st.permutations(parts)))
        shape = np.concatenate([dummy(self.values[p].shape) for p in parts], axis=axis).shape
        written = axis - rank if self.chance(25) else axis
        his = [self.values[p].hi for p in parts]
        hi = max(his) if v.dtype in INTS and None not in his else None  # type: ignore[type-var]
        self.emit("concat", parts, {"axis": written}, {}, Val(shape, v.dtype, hi=hi))
        return True

    def indices(self, bound: int, shape: tuple[int, ...] | None = None) -> int:
        """Integer values in [0, bound), of the given shape (or a random one of rank 0-2)."""
        if shape is None:
            existing = self.pick(lambda v: v.dtype in INTS and v.hi is not None and v.hi <= bound
                                 and len(v.shape) <= 2, recent=0)
            if existing is not None and self.chance(30):
                return existing
            shape = self.rand_shape(0, 2)
        else:
            existing = self.pick(lambda v: v.dtype in INTS and v.hi is not None and v.hi <= bound
                                 and v.shape == shape, recent=0)
            if existing is not None and self.chance(40):
                return existing
        dtype = "i32" if self.chance(85) else "i64"
        fits = [a for a, d in enumerate(shape) if d <= bound]
        if fits and self.chance(40):
            return self.iota(shape, dtype, self.choice(fits))
        return self.constant(shape, dtype, bound)

    def op_gather(self) -> bool:
        t = self.pick(lambda v: len(v.shape) >= 1)
        if t is None:
            return False
        v = self.values[t]
        rank = len(v.shape)
        axis = self.int(0, rank - 1)
        idx = self.indices(v.shape[axis])
        vi = self.values[idx]
        shape = np.take(dummy(v.shape), np.zeros(vi.shape, dtype=np.int64), axis=axis).shape
        written = axis - rank if self.chance(25) else axis
        self.emit("gather", [t, idx], {"axis": written}, {"axis": 0}, Val(shape, v.dtype, hi=v.hi, pos=v.pos))
        return True

    def op_scatter_add(self) -> bool:
        u = self.pick(lambda v: len(v.shape) >= 1 and v.dtype in FLOATS + INTS)
        if u is None:
            return False
        v = self.values[u]
        axis = self.int(0, len(v.shape) - 1)
        size = self.int(1, 6)
        idx = self.indices(size, (v.shape[axis],))
        shape = v.shape[:axis] + (size,) + v.shape[axis + 1:]
        written = axis - len(v.shape) if self.chance(25) else axis
        self.emit("scatter_add", [u, idx], {"axis": written}, {"axis": 0}, Val(shape, v.dtype), write_type=True)
        return True

    def op_cast(self) -> bool:
        x = self.pick(lambda v: v.dtype in FLOATS + INTS)
        v = self.values[x]
        if v.dtype in INTS:
            target = self.choice(["f32", v.dtype])
        elif v.dtype == "f32":
            target = self.choice(["f16", "bf16", "bf16", "f16", "f32", "f64"])
        else:
            target = self.choice(["f32", "f32", "f16", "bf16"])
        hi = v.hi if target == v.dtype else None
        self.emit("cast", [x], {}, {}, Val(v.shape, target, hi=hi, pos=v.pos), write_type=True)
        return True

    def op_cross_entropy(self) -> bool:
        x = self.pick(lambda v: v.dtype in FLOATS and len(v.shape) >= 1)
        if x is None:
            return False
        v = self.values[x]
        labels = self.indices(v.shape[-1], v.shape[:-1])
        reduction = self.choice(["mean", "sum", "none"])
        shape = v.shape[:-1] if reduction == "none" else ()
        self.emit("cross_entropy", [x, labels], {"reduction": reduction}, {"reduction": "mean"},
                  Val(shape, v.dtype, pos=True))
        return True

    def op_repeat(self) -> bool:
        """An exact copy of an earlier op (for cse)."""
        if not self.ops:
            return False
        op = self.choice(self.ops)
        name = self.fresh_name()
        line = f"  {name} = {op.name}"
        if op.operands:
            line += " " + ", ".join(self.names[i] for i in op.operands)
        if op.attrs:
            line += " {" + ", ".join(f"{k} = {lit(v)}" for k, v in op.attrs.items()) + "}"
        v = self.values[op.result]
        line += " : " + type_text(v.shape, v.dtype)
        self.lines.append(line)
        self.values.append(Val(v.shape, v.dtype, hi=v.hi, pos=v.pos))
        self.names.append(name)
        self.ops.append(Op(op.name, list(op.operands), dict(op.attrs), len(self.values) - 1))
        return True

    def op_canon_bait(self) -> bool:
        """A pattern that canonicalize rewrites: chains of transposes / reshapes / negs, or an identity op."""
        x = self.pick(lambda v: True)
        v = self.values[x]
        kind = self.choice(["transpose2", "reshape2", "neg2", "cast", "broadcast_to", "slice", "concat",
                            "transpose_id"])
        if kind == "transpose2":
            self.transpose_of(self.transpose_of(x))
        elif kind == "reshape2":
            self.reshape_of(self.reshape_of(x))
        elif kind == "neg2":
            if v.dtype not in FLOATS + ("i32",):
                return False
            y = self.emit("neg", [x], {}, {}, Val(v.shape, v.dtype))
            self.emit("neg", [y], {}, {}, Val(v.shape, v.dtype))
        elif kind in ("cast", "broadcast_to"):
            self.emit(kind, [x], {}, {}, Val(v.shape, v.dtype, hi=v.hi, pos=v.pos), write_type=True)
        elif kind == "slice":
            rank = len(v.shape)
            self.emit("slice", [x], {"start": [0] * rank, "limit": list(v.shape), "stride": [1] * rank},
                      {"stride": [1] * rank}, Val(v.shape, v.dtype, hi=v.hi, pos=v.pos))
        elif kind == "concat":
            if not v.shape:
                return False
            self.emit("concat", [x], {"axis": self.int(0, len(v.shape) - 1)}, {}, Val(v.shape, v.dtype, hi=v.hi))
        else:
            self.emit("transpose", [x], {"perm": list(range(len(v.shape)))}, {}, Val(v.shape, v.dtype, hi=v.hi))
        return True

    OP_KINDS = ("unary", "unary", "binary", "binary", "binary", "matmul", "reduce", "softmax", "layernorm",
                "transpose", "reshape", "broadcast_to", "concat", "slice", "gather", "scatter_add", "source", "cast",
                "cast", "cross_entropy", "repeat", "canon_bait")

    def random_op(self, kinds: tuple[str, ...] | None = None) -> None:
        while True:
            kind = self.choice(kinds or self.OP_KINDS)
            snapshot = (len(self.values), len(self.lines), len(self.ops), self.n_args, len(self.arg_decls),
                        self.counter)
            try:
                if getattr(self, "op_" + kind)():
                    return
            except _TooBig:
                pass
            self.rollback(snapshot)

    def rollback(self, snapshot) -> None:
        nv, nl, no, na, nd, counter = snapshot
        del self.values[nv:], self.names[nv:], self.lines[nl:], self.ops[no:], self.arg_decls[nd:]
        del self.arg_indices[nd:]
        self.n_args, self.counter = na, counter


class _TooBig(Exception):
    pass


def _broadcasts(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    try:
        np.broadcast_shapes(a, b)
    except ValueError:
        return False
    return True


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


def _finish(g: _Gen, draw, return_all: bool) -> Program:
    """Put the arguments first (they were added lazily) and write the function."""
    n_args = g.n_args
    arg_idx = g.arg_indices
    order = arg_idx + [i for i in range(len(g.values)) if i not in set(arg_idx)]
    remap = {old: new for new, old in enumerate(order)}
    values = [g.values[i] for i in order]
    names = [g.names[i] for i in order]
    ops = [Op(o.name, [remap[i] for i in o.operands], o.attrs, remap[o.result]) for o in g.ops]
    if return_all:
        returns = [o.result for o in ops]
    elif draw(st.booleans()):
        k = draw(st.integers(1, min(3, len(values))))
        returns = draw(st.lists(st.integers(0, len(values) - 1), min_size=k, max_size=k))
        if draw(st.booleans()):
            returns[-1] = len(values) - 1
    else:  # a random part of the op results, the last one included: the rest is dead code
        returns = [o.result for o in ops[:-1] if draw(st.integers(0, 99)) < 40] + [ops[-1].result]
    ret_types = [type_text(values[i].shape, values[i].dtype) for i in returns]
    header = f"func.func @{draw(st.sampled_from(['main', 'f', 'prog_1']))}({', '.join(g.arg_decls)})"
    r = draw(st.integers(0, 2))
    if r == 1:
        header += " -> " + (ret_types[0] if len(ret_types) == 1 and draw(st.booleans()) else
                            "(" + ", ".join(ret_types) + ")")
    ret = "  func.return " + ", ".join(names[i] for i in returns)
    if draw(st.booleans()):
        ret += " : " + ", ".join(ret_types)
    body = header + " {\n" + "\n".join(g.lines + [ret]) + "\n}\n"
    wrap = draw(st.sampled_from(MODULE_WRAPS))
    if wrap:
        body = wrap + "\n" + body + "}\n"
    return Program(body, values, n_args, ops, returns)


@st.composite
def programs(draw, return_all: bool = False, max_ops: int = 15, for_passes: bool = False) -> Program:
    """A random well-typed fir program: (text, the expected type of every value, the ops).

    for_passes: more repeated ops (for cse) and patterns that canonicalize rewrites."""
    g = _Gen(draw, draw(st.integers(1, 4)))
    kinds = _Gen.OP_KINDS + ("canon_bait",) * 5 + ("repeat",) * 2 if for_passes else None
    for _ in range(draw(st.integers(1, max_ops))):
        g.random_op(kinds)
    return _finish(g, draw, return_all)


# ----------------------------------------------------------------------------------------------- helpers
def generic_text(module) -> str:
    out = StringIO()
    Printer(stream=out, print_generic_format=True).print_op(module)
    return out.getvalue() + "\n"


def the_func(module) -> FuncOp:
    funcs = [op for op in module.ops if isinstance(op, FuncOp)]
    assert len(funcs) == 1
    return funcs[0]


def types_of(module) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of the arguments and then of every op result, in order."""
    func = the_func(module)
    block = func.body.blocks.first
    out = [(tuple(a.type.get_shape()), dtype_name(a.type.element_type)) for a in block.args]
    for op in block.ops:
        if isinstance(op, ReturnOp):
            continue
        (r,) = op.results
        out.append((tuple(r.type.get_shape()), dtype_name(r.type.element_type)))
    return out


def random_inputs(prog: Program, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(v.shape).astype(np.float32) for v in prog.arg_vals()]


def run(module, inputs: list[np.ndarray]) -> list[np.ndarray]:
    with np.errstate(all="ignore"):
        return run_function(module, the_func(module), inputs)


# ----------------------------------------------------------------------------------------------- round trips
@settings(max_examples=150, **SETTINGS)
@given(programs())
def test_fir_print_parse_is_a_fixed_point(prog: Program):
    module = parse_fir(prog.text, "<random>")
    verify_module(module)
    printed = print_fir(module)
    again = parse_source(printed, "<printed>", syntax="fir")
    assert print_fir(again) == printed, f"program:\n{prog.text}\nprinted:\n{printed}"
    assert types_of(again) == prog.expected()


@settings(max_examples=120, **SETTINGS)
@given(programs())
def test_mlir_generic_round_trip(prog: Program):
    module = parse_source(prog.text, "<random>")
    printed = print_fir(module)
    generic = generic_text(module)
    back = parse_source(generic, "<generic>", syntax="mlir")
    assert print_fir(back) == printed, f"program:\n{prog.text}\ngeneric:\n{generic}"
    assert generic_text(back) == generic
    # The .fir printout of the generic round trip reads back too.
    assert print_fir(parse_source(print_fir(back), "<again>")) == printed


# ----------------------------------------------------------------------------------------------- shapes and values
@settings(max_examples=150, **SETTINGS)
@given(programs(return_all=True), st.integers(0, 2**32 - 1))
def test_shapes_agree_with_numpy_and_the_interpreter(prog: Program, seed: int):
    module = parse_source(prog.text, "<random>")
    expected = prog.expected()
    assert types_of(module) == expected, f"program:\n{prog.text}"
    func = the_func(module)
    assert [(tuple(t.get_shape()), dtype_name(t.element_type)) for t in func.function_type.outputs.data] == [
        expected[i] for i in prog.returns]
    outs = run(module, random_inputs(prog, seed))
    assert len(outs) == len(prog.returns)
    for i, out in zip(prog.returns, outs):
        shape, dt = expected[i]
        assert out.shape == shape, f"value {i}: {out.shape} != {shape}\n{prog.text}"
        assert out.dtype == NP_DTYPE[dt], f"value {i}: {out.dtype} != {dt}\n{prog.text}"


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def numpy_op(op: Op, ins: list[np.ndarray], out: Val) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """An independent float64 numpy evaluation of one op: (value, magnitude for the tolerance, exact?)."""
    name = op.name.split(".", 1)[1]
    a = op.attrs
    isint = out.dtype in INTS
    x = [np.asarray(v).astype(np.int64 if v.dtype.kind in "iu" else np.float64) for v in ins]
    if name in ("transpose", "reshape", "broadcast_to", "concat", "slice", "gather", "iota"):
        v = {
            "transpose": lambda: np.transpose(x[0], a["perm"]),
            "reshape": lambda: x[0].reshape(out.shape),
            "broadcast_to": lambda: np.broadcast_to(x[0], out.shape),
            "concat": lambda: np.concatenate(x, axis=a["axis"]),
            "slice": lambda: x[0][tuple(slice(s, l, t) for s, l, t in zip(a["start"], a["limit"], a["stride"]))],
            "gather": lambda: np.take(x[0], x[1], axis=a["axis"]),
            "iota": lambda: np.indices(out.shape)[a["axis"]],
        }[name]()
        return v, None, True
    if name == "scatter_add":
        ax = a["axis"] % len(out.shape)
        total, mag = np.zeros(out.shape), np.zeros(out.shape)
        np.add.at(np.moveaxis(total, ax, 0), x[1], np.moveaxis(x[0], ax, 0))
        np.add.at(np.moveaxis(mag, ax, 0), x[1], np.moveaxis(np.abs(x[0]), ax, 0))
        return total, mag, isint
    if name == "constant":
        return np.broadcast_to(np.array(a["value"], dtype=np.float64), out.shape), None, True
    if name == "fill":
        return np.full(out.shape, a["value"], dtype=np.float64), None, True
    if name == "cast":
        return x[0], None, True
    if name in _Gen.UNARY:
        (v,) = x
        if name == "gelu":
            if a["approximate"] == "tanh":
                r = 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))
            else:
                r = 0.5 * v * (1 + _erf(v / math.sqrt(2)))
        else:
            r = {"neg": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt,
                 "rsqrt": lambda t: 1 / np.sqrt(t), "tanh": np.tanh, "relu": lambda t: np.maximum(t, 0),
                 "sigmoid": lambda t: 1 / (1 + np.exp(-t)), "erf": _erf}[name](v)
        return r, None, isint
    if name in ("greater", "equal"):  # exact: the operands' values compare the same in float64
        return (np.greater if name == "greater" else np.equal)(x[0], x[1]), None, True
    if name in _Gen.BINARY:
        fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum,
              "min": np.minimum, "pow": np.power}[name]
        return fn(x[0], x[1]), None, isint
    if name == "matmul":
        l, r = x
        if a["transpose_a"]:
            l = np.swapaxes(l, -1, -2)
        if a["transpose_b"]:
            r = np.swapaxes(r, -1, -2)
        if isint:
            return np.matmul(l, r), None, True
        return np.matmul(l, r), np.matmul(np.abs(l), np.abs(r)), False
    if name.startswith("reduce_"):
        axes, keep = tuple(a["axes"]), a["keepdims"]
        (v,) = x
        if name == "reduce_max":
            return np.max(v, axis=axes, keepdims=keep), None, isint
        s = np.sum(v, axis=axes, keepdims=keep)
        scale = np.sum(np.abs(v), axis=axes, keepdims=keep)
        if name == "reduce_mean":
            n = v.size // s.size
            return s / n, scale / n, False
        return s, scale, isint
    if name == "softmax":
        (v,) = x
        e = np.exp(v - np.max(v, axis=a["axis"], keepdims=True))
        return e / np.sum(e, axis=a["axis"], keepdims=True), None, False
    if name == "layernorm":
        v, g, b = x
        axes = tuple(sorted(ax % v.ndim for ax in a["axes"]))
        mean = np.mean(v, axis=axes, keepdims=True)
        c = v - mean
        denom = np.sqrt(np.mean(c * c, axis=axes, keepdims=True) + a["eps"])
        big = np.max(np.abs(v), axis=axes, keepdims=True)
        # f32 rounding of x - mean is amplified by 1/sqrt(var + eps): scale the tolerance with it.
        return c / denom * g + b, np.abs(g) * (np.abs(c) + big) / denom + np.abs(b), False
    if name == "cross_entropy":
        v, labels = x
        m = np.max(v, axis=-1, keepdims=True)
        lse = np.log(np.sum(np.exp(v - m), axis=-1)) + m[..., 0]
        picked = np.take_along_axis(v, labels[..., None].astype(np.intp), axis=-1)[..., 0]
        losses, mag = lse - picked, np.abs(lse) + np.abs(picked)
        if a["reduction"] == "none":
            return losses, mag, False
        if a["reduction"] == "sum":
            return np.sum(losses), np.sum(mag), False
        return np.mean(losses), np.mean(mag), False
    raise AssertionError(name)


def assert_close(got: np.ndarray, want: np.ndarray, scale: np.ndarray | None, exact: bool, dt: str, what: str):
    with np.errstate(all="ignore"):
        want_c = np.asarray(want).astype(NP_DTYPE[dt])  # round to the result dtype, like the op does
    if exact:
        assert np.array_equal(got, want_c, equal_nan=dt in FLOATS), f"{what}: got\n{got}\nwant\n{want_c}"
        return
    g = got.astype(np.float64)
    w = want_c.astype(np.float64)
    rtol, atol = TOLERANCE[dt]
    mag = np.abs(w) if scale is None else np.maximum(np.abs(w), np.asarray(scale, dtype=np.float64))
    with np.errstate(all="ignore"):
        ok = (np.isnan(g) & np.isnan(w)) | (g == w) | (np.abs(g - w) <= atol + rtol * mag)
    assert np.all(ok), f"{what}: got\n{got}\nwant\n{want_c}\nmismatch at {np.argwhere(~ok)[:5].tolist()}"


@settings(max_examples=150, **SETTINGS)
@given(programs(return_all=True), st.integers(0, 2**32 - 1))
def test_each_op_agrees_with_numpy(prog: Program, seed: int):
    """Every op's value (the function returns them all) equals a direct numpy evaluation on the interpreter's
    own operand values, within fir.dialects.dtypes.TOLERANCE (exactly for layout ops, integers, constants and casts)."""
    module = parse_source(prog.text, "<random>")
    inputs = random_inputs(prog, seed)
    outs = run(module, inputs)
    arrays: dict[int, np.ndarray] = dict(enumerate(inputs))
    arrays.update(zip(prog.returns, outs))
    for op in prog.ops:
        ins = [arrays[i] for i in op.operands]
        if any(v.dtype.kind == "f" or v.dtype == NP_DTYPE["bf16"] for v in ins) and not all(
                np.all(np.isfinite(v.astype(np.float64))) for v in ins):
            continue  # nan / inf operands: the formulas legitimately differ in how they propagate
        out = prog.values[op.result]
        with np.errstate(all="ignore"):
            want, scale, exact = numpy_op(op, ins, out)
        assert_close(arrays[op.result], want, scale, exact, out.dtype, f"{op.name} (value {op.result})\n{prog.text}")


# Elementwise chains: an end-to-end numpy evaluation of the whole function, op for op in numpy's own
# float32 / float16 / bfloat16 arithmetic with broadcasting, compared with the function's result.
_CHAIN_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum, "min": np.minimum,
                 "div": np.divide}
_CHAIN_UNARY = {"neg": np.negative, "relu": lambda t: np.maximum(t, t.dtype.type(0)), "tanh": np.tanh,
                "exp": np.exp}


@st.composite
def elementwise_chains(draw):
    """(text, args' shapes, a numpy function computing the result)."""
    n_args = draw(st.integers(1, 4))
    out_shape = tuple(draw(st.lists(st.integers(1, 5), max_size=4)))
    shapes = []
    for _ in range(n_args):  # each argument broadcasts to out_shape: a suffix, each dim d or 1
        k = draw(st.integers(0, len(out_shape)))
        shapes.append(tuple(d if draw(st.booleans()) else 1 for d in out_shape[len(out_shape) - k:]))
    names = [f"%x{i}" for i in range(n_args)]
    env: list[tuple[str, tuple[int, ...], str]] = [(n, s, "f32") for n, s in zip(names, shapes)]
    lines: list[str] = []
    steps: list[tuple] = []
    for k in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["binary", "binary", "unary", "cast"]))
        i = draw(st.integers(0, len(env) - 1))
        name, shape, dt = env[i]
        new = f"%e{k}"
        if kind == "binary":
            js = [j for j, e in enumerate(env) if e[2] == dt]
            j = draw(st.sampled_from(js))
            op = draw(st.sampled_from(sorted(_CHAIN_BINARY)))
            shape = tuple(np.broadcast_shapes(shape, env[j][1]))
            line = f"  {new} = flow.{op} {name}, {env[j][0]}"
            steps.append(("binary", op, i, j))
        elif kind == "unary":
            op = draw(st.sampled_from(["neg", "relu", "tanh", "exp"]))
            line = f"  {new} = flow.{op} {name}"
            steps.append(("unary", op, i))
        else:
            dt = draw(st.sampled_from([d for d in FLOATS if d != dt]))
            line = f"  {new} = flow.cast {name}"
            steps.append(("cast", dt, i))
        if kind == "cast" or draw(st.booleans()):
            line += f" : {type_text(shape, dt)}"
        lines.append(line)
        env.append((new, shape, dt))
    res = env[-1]
    params = ", ".join(f"{n}: {type_text(s, 'f32')}" for n, s in zip(names, shapes))
    header = f"func.func @chain({params})"
    text = header + " {\n" + "\n".join(lines) + f"\n  func.return {res[0]}\n}}\n"

    def evaluate(inputs: list[np.ndarray]) -> np.ndarray:
        vals = list(inputs)
        for s in steps:
            if s[0] == "binary":
                vals.append(_CHAIN_BINARY[s[1]](vals[s[2]], vals[s[3]]))
            elif s[0] == "unary":
                vals.append(_CHAIN_UNARY[s[1]](vals[s[2]]))
            else:
                vals.append(vals[s[2]].astype(NP_DTYPE[s[1]]))
        return vals[-1]

    return text, shapes, res[1], res[2], evaluate


@settings(max_examples=150, **SETTINGS)
@given(elementwise_chains(), st.integers(0, 2**32 - 1))
def test_elementwise_chains_agree_with_numpy(chain, seed: int):
    text, shapes, out_shape, out_dt, evaluate = chain
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    module = parse_source(text, "<chain>")
    (got,) = run(module, inputs)
    with np.errstate(all="ignore"):
        want = np.asarray(evaluate(inputs))
    assert got.shape == want.shape == out_shape
    assert got.dtype == want.dtype == NP_DTYPE[out_dt]
    assert_close(got, want, None, False, out_dt, f"chain\n{text}")


# ----------------------------------------------------------------------------------------------- passes
def _apply_passes(module, names: list[str]) -> None:
    from xdsl.transforms.canonicalize import CanonicalizePass
    from xdsl.transforms.common_subexpression_elimination import CommonSubexpressionElimination
    from xdsl.transforms.dead_code_elimination import DeadCodeElimination

    from fir.passes.fuse import FusePass

    classes = {"cse": CommonSubexpressionElimination, "dce": DeadCodeElimination, "canonicalize": CanonicalizePass,
               "fuse": FusePass}
    ctx = make_context()
    for n in names:
        classes[n]().apply(ctx, module)
        verify_module(module)


def assert_same_results(before: list[np.ndarray], after: list[np.ndarray], what: str) -> None:
    assert len(before) == len(after)
    for i, (b, a) in enumerate(zip(before, after)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"result {i}: {what}"
        assert np.array_equal(a, b, equal_nan=b.dtype.kind == "f" or b.dtype == NP_DTYPE["bf16"]), (
            f"result {i} changed: {what}\nbefore\n{b}\nafter\n{a}")


@settings(max_examples=150, **SETTINGS)
@given(programs(for_passes=True), st.lists(st.sampled_from(["cse", "dce", "canonicalize", "fuse"]), min_size=1,
                                           max_size=4),
       st.integers(0, 2**32 - 1))
def test_passes_keep_results(prog: Program, passes: list[str], seed: int):
    module = parse_source(prog.text, "<random>")
    inputs = random_inputs(prog, seed)
    before = run(module, inputs)
    n_ops = len(list(the_func(module).body.blocks.first.ops))
    _apply_passes(module, passes)
    after = run(module, inputs)
    what = f"passes {passes}\n{prog.text}\nafter:\n{print_fir(module)}"
    assert_same_results(before, after, what)
    assert len(list(the_func(module).body.blocks.first.ops)) <= n_ops
    # The optimised program still prints, reads back and runs the same.
    again = parse_source(print_fir(module), "<optimised>")
    assert_same_results(before, run(again, inputs), what)


@settings(max_examples=15, **SETTINGS)
@given(programs(for_passes=True), st.integers(0, 2**32 - 1))
def test_fir_opt_pipeline_keeps_results(prog: Program, seed: int):
    """The same through the fir-opt entry point: -p cse,dce,canonicalize, written to a file."""
    from fir_tools.fir_opt import main as fir_opt_main

    module = parse_source(prog.text, "<random>")
    inputs = random_inputs(prog, seed)
    before = run(module, inputs)
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "p.fir"), os.path.join(d, "out.fir")
        with open(src, "w") as f:
            f.write(prog.text)
        assert fir_opt_main([src, "-p", "cse,canonicalize,dce", "-o", dst]) == 0
        with open(dst) as f:
            optimised = f.read()
    after = run(parse_source(optimised, "<out>"), inputs)
    assert_same_results(before, after, f"{prog.text}\nafter:\n{optimised}")


# ----------------------------------------------------------------------------------------------- the generator
def test_generator_reaches_every_op_kind():
    """Sanity check of the strategy itself: across 200 programs (a fixed seed) every flow op appears."""
    from fir.dialects.flow import FLOW_OPS

    seen: set[str] = set()

    @settings(max_examples=200, database=None, derandomize=True, **SETTINGS)
    @given(programs(max_ops=15))
    def collect(prog: Program):
        seen.update(op.name for op in prog.ops)

    collect()
    missing = {op.name for op in FLOW_OPS} - seen
    assert not missing, f"the generator never produced {sorted(missing)}"


# ----------------------------------------------------------------------------------------------- regressions
def test_unnamed_module_keeps_its_first_function():
    """Found by the generator: `module {` (no name) used to drop the module's first function silently."""
    module = parse_source("module {\nfunc.func @main(%a: tensor<f32>) {\n  func.return %a\n}\n}\n", "<m>")
    assert [f.sym_name.data for f in module.ops] == ["main"]


def test_underscore_number_name_prints_back():
    """Found by the generator: `%_0` used to lose its whole name hint and print as `%`, which does not parse."""
    module = parse_source("func.func @f(%_1: tensor<f32>) {\n  %_0 = flow.neg %_1\n  func.return %_0\n}\n", "<u>")
    printed = print_fir(module)
    assert print_fir(parse_source(printed, "<printed>")) == printed

"""numpy reference semantics of every flow op: the single source of truth for what each op computes.

Backends are checked against `evaluate`. Precision rules, shared by all kernels:

* f16 and bf16 operands are widened to float32, the op is computed in float32, and the result is rounded
  to the low-precision dtype once at the end (as GPU kernels that accumulate in f32 do).
* f32 computes in float32. Sums (reduce_sum, reduce_mean, the normalisers of softmax / layernorm and the
  cross-entropy reductions) accumulate in float32 with numpy's pairwise summation: the reduced axes are
  moved last and made contiguous first, so pairwise summation applies whatever the axes. matmul uses the
  float32 BLAS (sgemm) accumulation. The erf in exact gelu is evaluated in float64 (see `erf`).
* f64 computes in float64 (matmul: dgemm).
* Integers compute in their own dtype and wrap on overflow like numpy.

Only numpy (and ml_dtypes, for bf16 arrays) is used: fir must not need scipy at run time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

Kernel = Callable[[list[np.ndarray], dict[str, Any], tuple[int, ...], np.dtype], np.ndarray]

_F32 = np.dtype(np.float32)


class KernelError(Exception):
    """Input data that an op cannot compute on (an out-of-range index or label, an unknown op)."""


# ----------------------------------------------------------------------------------------------- helpers
def _low_precision(dt: np.dtype) -> bool:
    """f16 and bf16 (ml_dtypes' bfloat16, matched by name so that ml_dtypes loads only when bf16 is used)."""
    return dt == np.float16 or dt.name == "bfloat16"


def _work(x: np.ndarray) -> np.ndarray:
    """The array in its compute dtype: f16/bf16 widen to f32, everything else is unchanged."""
    return x.astype(_F32) if _low_precision(x.dtype) else x


def _round(y: Any, dtype: np.dtype) -> np.ndarray:
    """Round a result computed in the work dtype to `dtype` (the single rounding of low-precision ops)."""
    return np.asarray(y).astype(dtype, copy=False)


def _norm_axes(axes: list[int] | tuple[int, ...], rank: int) -> tuple[int, ...]:
    return tuple(sorted(a % rank for a in axes)) if rank else ()


def _sum(x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    """Sum over normalised `axes` in x's dtype, pairwise whatever the axes (they are moved last first)."""
    rank = x.ndim
    kept = [a for a in range(rank) if a not in axes]
    # numpy sums pairwise only along a contiguous inner loop; for other axes it accumulates serially.
    moved = np.ascontiguousarray(np.transpose(x, kept + list(axes)))
    flat = moved.reshape(tuple(x.shape[a] for a in kept) + (_count(x.shape, axes),))
    s = np.sum(flat, axis=-1, dtype=x.dtype)
    out_shape = tuple(1 if a in axes else d for a, d in enumerate(x.shape)) if keepdims else s.shape
    return np.asarray(s).reshape(out_shape)


def _count(shape: tuple[int, ...], axes: tuple[int, ...]) -> int:
    return math.prod(shape[a] for a in axes)


def _logsumexp_last(x: np.ndarray) -> np.ndarray:
    """log(sum(exp(x))) over the last axis, max-shifted so it neither overflows nor underflows to -inf."""
    m = np.max(x, axis=-1, keepdims=True)
    # A row of infinities would give inf - inf = nan in the shift; shift such rows by 0 instead.
    m = np.where(np.isfinite(m), m, np.zeros((), x.dtype))
    s = _sum(np.exp(x - m), (x.ndim - 1,), keepdims=False)
    return np.log(s) + m[..., 0]


# ----------------------------------------------------------------------------------------------- erf
# W. J. Cody-style rational approximations as used by fdlibm's s_erf.c (Sun Microsystems, 1993):
# |error| < 1 ulp of float64 on each interval.
_ERX = 8.45062911510467529297e-01
_EFX = 1.28379167095512586316e-01
_PP = (1.28379167095512558561e-01, -3.25042107247001499370e-01, -2.84817495755985104766e-02,
       -5.77027029648944159157e-03, -2.37630166566501626084e-05)
_QQ = (1.0, 3.97917223959155352819e-01, 6.50222499887672944485e-02, 5.08130628187576562776e-03,
       1.32494738004321644526e-04, -3.96022827877536812320e-06)
_PA = (-2.36211856075265944077e-03, 4.14856118683748331666e-01, -3.72207876035701323847e-01,
       3.18346619901161753674e-01, -1.10894694282396677476e-01, 3.54783043256182359371e-02,
       -2.16637559486879084300e-03)
_QA = (1.0, 1.06420880400844228286e-01, 5.40397917702171048937e-01, 7.18286544141962662868e-02,
       1.26171219808761642112e-01, 1.36370839120290507362e-02, 1.19844998467991074170e-02)
_RA = (-9.86494403484714822705e-03, -6.93858572707181764372e-01, -1.05586262253232909814e+01,
       -6.23753324503260060396e+01, -1.62396669462573470355e+02, -1.84605092906711035994e+02,
       -8.12874355063065934246e+01, -9.81432934416914548592e+00)
_SA = (1.0, 1.96512716674392571292e+01, 1.37657754143519042600e+02, 4.34565877475229228821e+02,
       6.45387271733267880336e+02, 4.29008140027567833386e+02, 1.08635005541779435134e+02,
       6.57024977031928170135e+00, -6.04244152148580987438e-02)
_RB = (-9.86494292470009928597e-03, -7.99283237680523006574e-01, -1.77579549177547519889e+01,
       -1.60636384855821916062e+02, -6.37566443368389627722e+02, -1.02509513161107724954e+03,
       -4.83519191608651397019e+02)
_SB = (1.0, 3.03380607434824582924e+01, 3.25792512996573918826e+02, 1.53672958608443695994e+03,
       3.19985821950859553908e+03, 2.55305040643316442583e+03, 4.74528541206955367215e+02,
       -2.24409524465858183362e+01)


def _poly(coeffs: tuple[float, ...], z: np.ndarray) -> np.ndarray:
    """Horner evaluation of coeffs[0] + coeffs[1] z + ... (in place on one temporary)."""
    acc = z * coeffs[-1]
    for c in reversed(coeffs[1:-1]):
        acc += c
        acc *= z
    acc += coeffs[0]
    return acc


def erf(x: np.ndarray) -> np.ndarray:
    """The error function in float64, vectorised (fdlibm's rational approximations, |error| < 1e-15)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x).ravel()
    out = np.ones_like(a)  # a >= 6: erfc(6) < 2.2e-17, so 1 is the nearest double
    out[np.isnan(a)] = np.nan
    # Each interval is evaluated only on its own elements, so no branch sees inputs it would overflow on.
    region = np.searchsorted(np.array([0.84375, 1.25, 1 / 0.35, 6.0]), a, side="right")
    idx = np.flatnonzero(region == 0)
    v = a[idx]
    z = v * v
    out[idx] = v + v * (_poly(_PP, z) / _poly(_QQ, z))
    idx = np.flatnonzero(region == 1)
    s = a[idx] - 1.0
    out[idx] = _ERX + _poly(_PA, s) / _poly(_QA, s)
    for k, r, t in ((2, _RA, _SA), (3, _RB, _SB)):
        idx = np.flatnonzero(region == k)
        v = a[idx]
        w = 1.0 / (v * v)
        out[idx] = 1.0 - np.exp(-v * v - 0.5625 + _poly(r, w) / _poly(t, w)) / v
    return np.copysign(out.reshape(x.shape), x)


# ----------------------------------------------------------------------------------------------- unary
def _unary(fn: Callable[[np.ndarray], np.ndarray], doc: str) -> Kernel:
    def kernel(ins, attrs, shape, dtype):
        (x,) = ins
        return _round(fn(_work(x)), x.dtype)

    kernel.__doc__ = doc
    return kernel


_neg = _unary(np.negative, "-x (integers wrap).")
_exp = _unary(np.exp, "e^x.")
_log = _unary(np.log, "Natural logarithm.")
_sqrt = _unary(np.sqrt, "Square root.")
_rsqrt = _unary(lambda w: np.reciprocal(np.sqrt(w)), "1 / sqrt(x).")
_tanh = _unary(np.tanh, "Hyperbolic tangent.")


def _relu(ins, attrs, shape, dtype):
    """max(x, 0), integers included."""
    (x,) = ins
    w = _work(x)
    return _round(np.maximum(w, np.zeros((), w.dtype)), x.dtype)


def _sigmoid(ins, attrs, shape, dtype):
    """1 / (1 + e^-x), evaluated through e^-|x| so that no |x| overflows."""
    (x,) = ins
    w = _work(x)
    e = np.exp(-np.abs(w))  # in (0, 1]: never overflows
    one = np.ones((), w.dtype)
    return _round(np.where(w >= 0, one / (one + e), e / (one + e)), x.dtype)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu(ins, attrs, shape, dtype):
    """x * Phi(x): "none" is 0.5 x (1 + erf(x / sqrt 2)), "tanh" is 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    (x,) = ins
    w = _work(x)
    if attrs["approximate"] == "tanh":
        c = w.dtype.type(_SQRT_2_OVER_PI)
        k = w.dtype.type(0.044715)
        half, one = w.dtype.type(0.5), w.dtype.type(1.0)
        return _round(half * w * (one + np.tanh(c * (w + k * w * w * w))), x.dtype)
    if attrs["approximate"] != "none":
        raise KernelError(f"flow.gelu: unknown approximate = {attrs['approximate']!r}")
    # erf is a float64 algorithm; the product is formed in float64 too and rounded once.
    w64 = w.astype(np.float64)
    return _round(0.5 * w64 * (1.0 + erf(w64 / math.sqrt(2.0))), x.dtype)


def _cast(ins, attrs, shape, dtype):
    """Convert to the result dtype: floats to ints truncate toward zero, anything to i1 is x != 0."""
    (x,) = ins
    if dtype == np.bool_:
        return x != 0
    # Widening f16/bf16 to f32 is exact, so this is still a single rounding.
    return _round(_work(x), dtype)


# ----------------------------------------------------------------------------------------------- binary
def _erf(ins, attrs, shape, dtype):
    """The error function, evaluated in float64 and rounded once to the result dtype."""
    (x,) = ins
    return erf(x).astype(x.dtype)


def _compare(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], doc: str) -> Kernel:
    def kernel(ins, attrs, shape, dtype):
        a, b = ins
        return np.asarray(fn(_work(a), _work(b)), dtype=np.bool_)

    kernel.__doc__ = doc
    return kernel


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], doc: str) -> Kernel:
    def kernel(ins, attrs, shape, dtype):
        a, b = ins
        return _round(fn(_work(a), _work(b)), a.dtype)

    kernel.__doc__ = doc
    return kernel


# ----------------------------------------------------------------------------------------------- matmul
def _matmul(ins, attrs, shape, dtype):
    """np.matmul after transposing the last two axes of lhs / rhs when transpose_a / transpose_b."""
    a, b = (_work(v) for v in ins)
    if attrs["transpose_a"]:
        a = np.swapaxes(a, -1, -2)
    if attrs["transpose_b"]:
        b = np.swapaxes(b, -1, -2)
    return _round(np.matmul(a, b), ins[0].dtype)


# ----------------------------------------------------------------------------------------------- reductions
def _reduce_sum(ins, attrs, shape, dtype):
    """Sum over axes (pairwise, in the work dtype; integers wrap)."""
    (x,) = ins
    axes = _norm_axes(attrs["axes"], x.ndim)
    return _round(_sum(_work(x), axes, attrs["keepdims"]), x.dtype)


def _reduce_mean(ins, attrs, shape, dtype):
    """Sum over axes divided by the number of reduced elements."""
    (x,) = ins
    w = _work(x)
    axes = _norm_axes(attrs["axes"], x.ndim)
    n = _count(x.shape, axes)
    if n == 0:
        raise KernelError(f"flow.reduce_mean: the reduced axes {attrs['axes']} of shape {x.shape} hold no elements")
    return _round(_sum(w, axes, attrs["keepdims"]) / w.dtype.type(n), x.dtype)


def _reduce_max(ins, attrs, shape, dtype):
    """Maximum over axes; an empty reduction gives the dtype's identity (-inf, or the integer minimum)."""
    (x,) = ins
    w = _work(x)
    axes = _norm_axes(attrs["axes"], x.ndim)
    lowest = -np.inf if np.issubdtype(w.dtype, np.floating) else np.iinfo(w.dtype).min
    return _round(np.max(w, axis=axes, keepdims=attrs["keepdims"], initial=lowest), x.dtype)


# ----------------------------------------------------------------------------------------------- normalisation
def _softmax(ins, attrs, shape, dtype):
    """exp(x - max) / sum(exp(x - max)) along axis."""
    (x,) = ins
    w = _work(x)
    ax = attrs["axis"] % x.ndim
    m = np.max(w, axis=ax, keepdims=True)
    m = np.where(np.isfinite(m), m, np.zeros((), w.dtype))
    e = np.exp(w - m)
    return _round(e / _sum(e, (ax,), keepdims=True), x.dtype)


def _layernorm(ins, attrs, shape, dtype):
    """(x - mean) / sqrt(var + eps) * gamma + beta over the trailing axes, with the biased variance."""
    x, gamma, beta = ins
    w, g, b = _work(x), _work(gamma), _work(beta)
    axes = _norm_axes(attrs["axes"], x.ndim)
    n = w.dtype.type(_count(x.shape, axes))
    mean = _sum(w, axes, keepdims=True) / n
    centred = w - mean
    var = _sum(centred * centred, axes, keepdims=True) / n
    eps = w.dtype.type(attrs["eps"])
    return _round(centred / np.sqrt(var + eps) * g + b, x.dtype)


# ----------------------------------------------------------------------------------------------- layout
def _transpose(ins, attrs, shape, dtype):
    """Result axis i is input axis perm[i]."""
    (x,) = ins
    return np.transpose(x, attrs["perm"])


def _reshape(ins, attrs, shape, dtype):
    """The same elements in row-major order with the result shape."""
    (x,) = ins
    return np.reshape(x, shape)


def _broadcast_to(ins, attrs, shape, dtype):
    """numpy broadcasting to the result shape."""
    (x,) = ins
    return np.broadcast_to(x, shape)


def _concat(ins, attrs, shape, dtype):
    """All operands joined along axis."""
    return np.concatenate(ins, axis=attrs["axis"])


def _slice(ins, attrs, shape, dtype):
    """x[start:limit:stride] on every axis."""
    (x,) = ins
    return x[tuple(slice(s, l, st) for s, l, st in zip(attrs["start"], attrs["limit"], attrs["stride"]))]


def _gather(ins, attrs, shape, dtype):
    """np.take(table, indices, axis); an index outside [0, size) raises KernelError."""
    table, indices = ins
    ax = attrs["axis"] % table.ndim
    size = table.shape[ax]
    bad = (indices < 0) | (indices >= size)
    if np.any(bad):
        first = int(indices[bad].flat[0])
        raise KernelError(f"flow.gather: index {first} is out of range for axis {ax} of size {size}")
    return np.take(table, indices, axis=ax)


def _scatter_add(ins, attrs, shape, dtype):
    """Zeros of the result shape with every update added at its index along axis (np.add.at: repeated indices
    accumulate, in index order); an index outside [0, size) raises KernelError."""
    updates, indices = ins
    ax = attrs["axis"] % len(shape)
    size = shape[ax]
    bad = (indices < 0) | (indices >= size)
    if np.any(bad):
        first = int(indices[bad].flat[0])
        raise KernelError(f"flow.scatter_add: index {first} is out of range for axis {ax} of size {size}")
    w = _work(updates)
    out = np.zeros(shape, dtype=w.dtype)
    # Move the scattered axes to the front so that np.add.at sees one index array on axis 0.
    k = indices.ndim
    moved = np.moveaxis(w, list(range(ax, ax + k)), list(range(k))) if k else w[None]
    flat_idx = indices.reshape(-1).astype(np.intp)
    target = np.moveaxis(out, ax, 0)  # a view
    np.add.at(target, flat_idx, moved.reshape((flat_idx.size,) + target.shape[1:]))
    return _round(out, updates.dtype)


# ----------------------------------------------------------------------------------------------- sources
def _constant(ins, attrs, shape, dtype):
    """The literal value, cast to the result dtype."""
    value = np.asarray(attrs["value"])
    return value != 0 if dtype == np.bool_ else value.astype(dtype)


def _fill(ins, attrs, shape, dtype):
    """Every element equal to value."""
    return np.full(shape, attrs["value"], dtype=dtype)


def _iota(ins, attrs, shape, dtype):
    """Element (i0, i1, ...) is i_axis."""
    ax = attrs["axis"] % len(shape)
    counter = np.arange(shape[ax], dtype=np.int64).astype(dtype)
    return np.broadcast_to(counter.reshape([-1 if a == ax else 1 for a in range(len(shape))]), shape)


# ----------------------------------------------------------------------------------------------- loss
def _cross_entropy(ins, attrs, shape, dtype):
    """logsumexp(logits_i) - logits_i[label_i] per label, then mean, sum or none over all labels."""
    logits, labels = ins
    w = _work(logits)
    classes = logits.shape[-1]
    bad = (labels < 0) | (labels >= classes)
    if np.any(bad):
        first = int(labels[bad].flat[0])
        raise KernelError(f"flow.cross_entropy: label {first} is out of range for {classes} classes")
    picked = np.take_along_axis(w, labels[..., None].astype(np.intp), axis=-1)[..., 0]
    losses = _logsumexp_last(w) - picked
    reduction = attrs["reduction"]
    if reduction == "none":
        return _round(losses, logits.dtype)
    all_axes = tuple(range(losses.ndim))
    total = _sum(losses, all_axes, keepdims=False)
    if reduction == "sum":
        return _round(total, logits.dtype)
    if reduction == "mean":
        if losses.size == 0:
            raise KernelError("flow.cross_entropy: the mean over zero labels is undefined")
        return _round(total / w.dtype.type(losses.size), logits.dtype)
    raise KernelError(f"flow.cross_entropy: unknown reduction {reduction!r}")


# ----------------------------------------------------------------------------------------------- registry
KERNELS: dict[str, Kernel] = {
    "flow.neg": _neg,
    "flow.exp": _exp,
    "flow.log": _log,
    "flow.sqrt": _sqrt,
    "flow.rsqrt": _rsqrt,
    "flow.tanh": _tanh,
    "flow.relu": _relu,
    "flow.sigmoid": _sigmoid,
    "flow.erf": _erf,
    "flow.gelu": _gelu,
    "flow.cast": _cast,
    "flow.add": _binary(np.add, "a + b with broadcasting (integers wrap)."),
    "flow.sub": _binary(np.subtract, "a - b with broadcasting (integers wrap)."),
    "flow.mul": _binary(np.multiply, "a * b with broadcasting (integers wrap)."),
    "flow.div": _binary(np.divide, "a / b with broadcasting."),
    "flow.max": _binary(np.maximum, "np.maximum(a, b) with broadcasting (NaN propagates)."),
    "flow.min": _binary(np.minimum, "np.minimum(a, b) with broadcasting (NaN propagates)."),
    "flow.pow": _binary(np.power, "a ** b with broadcasting."),
    "flow.greater": _compare(np.greater, "a > b with broadcasting (false with a NaN)."),
    "flow.equal": _compare(np.equal, "a == b with broadcasting (false with a NaN)."),
    "flow.matmul": _matmul,
    "flow.reduce_sum": _reduce_sum,
    "flow.reduce_mean": _reduce_mean,
    "flow.reduce_max": _reduce_max,
    "flow.softmax": _softmax,
    "flow.layernorm": _layernorm,
    "flow.transpose": _transpose,
    "flow.reshape": _reshape,
    "flow.broadcast_to": _broadcast_to,
    "flow.concat": _concat,
    "flow.slice": _slice,
    "flow.gather": _gather,
    "flow.scatter_add": _scatter_add,
    "flow.constant": _constant,
    "flow.fill": _fill,
    "flow.iota": _iota,
    "flow.cross_entropy": _cross_entropy,
}


def evaluate(
    op_name: str, inputs: list[np.ndarray], attrs: dict[str, Any], out_shape: tuple[int, ...], out_dtype: np.dtype
) -> np.ndarray:
    """Compute one flow op on numpy inputs: a fresh C-contiguous array of exactly out_shape and out_dtype."""
    kernel = KERNELS.get(op_name)
    if kernel is None:
        raise KernelError(f"no reference kernel for {op_name}")
    ins = [np.asarray(x) for x in inputs]
    out_shape = tuple(out_shape)
    out_dtype = np.dtype(out_dtype)
    with np.errstate(all="ignore"):  # inf and nan are results like any other (a fully masked softmax row)
        result = np.asarray(kernel(ins, attrs, out_shape, out_dtype))
    # Raised explicitly (not `assert`) so that python -O keeps the check: a mismatch means fir's shape
    # rules and its reference semantics disagree.
    if result.shape != out_shape:
        raise AssertionError(f"{op_name}: the reference computed shape {result.shape}, but fir expects {out_shape}")
    if result.dtype != out_dtype:
        raise AssertionError(f"{op_name}: the reference computed dtype {result.dtype}, but fir expects {out_dtype}")
    # Layout ops return views (of an input, or with zero strides); callers get an array they may write.
    if (not result.flags.c_contiguous or not result.flags.writeable
            or any(np.may_share_memory(result, x) for x in ins)):
        result = result.copy(order="C")
    return result


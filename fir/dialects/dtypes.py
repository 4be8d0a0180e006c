"""Element types of fir tensors: names in the .fir syntax, xDSL types and numpy dtypes."""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any

from xdsl.dialects.builtin import (
    BFloat16Type,
    Float16Type,
    Float32Type,
    Float64Type,
    IntegerType,
    TensorType,
    bf16,
    f16,
    f32,
    f64,
    i1,
    i32,
    i64,
)
from xdsl.ir import Attribute

DTYPE_NAMES = ("f32", "f16", "bf16", "f64", "i32", "i64", "i1")

# Largest tensor fir accepts (2^48 elements): far beyond any device, and safe from integer overflow anywhere.
MAX_ELEMENTS = 2**48
# Highest tensor rank fir accepts: numpy's limit, and far beyond any model.
MAX_RANK = 64

if TYPE_CHECKING:
    import numpy as np

_BY_NAME: dict[str, Attribute] = {"f32": f32, "f16": f16, "bf16": bf16, "f64": f64, "i32": i32, "i64": i64, "i1": i1}

# numpy dtypes by name, filled on first use: numpy is not needed to read and print programs (the tools start
# faster), and bf16's comes from ml_dtypes, which takes most of a second to import.
_NUMPY: dict[str, np.dtype] = {}
_NUMPY_NAMES = {"f32": "float32", "f16": "float16", "f64": "float64", "i32": "int32", "i64": "int64", "i1": "bool"}

# Bytes per element (i1 takes one byte).
ITEMSIZE: dict[str, int] = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8, "i32": 4, "i64": 8, "i1": 1}

# Comparison tolerances (rtol, atol) used when a result is checked against the reference.
TOLERANCE: dict[str, tuple[float, float]] = {
    "f32": (1e-4, 1e-5),
    "f16": (1e-2, 1e-3),
    "bf16": (5e-2, 1e-2),
    "f64": (1e-9, 1e-11),
    "i32": (0.0, 0.0),
    "i64": (0.0, 0.0),
    "i1": (0.0, 0.0),
}
# f16 and bf16 results may also differ by two units of rounding (this spacing at 1.0, machine epsilon) of their
# largest magnitude: a partial sum is rounded before the reduction across devices (fir.runtime.compare).
LOW_PRECISION_EPS: dict[str, float] = {"bf16": 2.0**-7, "f16": 2.0**-10}


def element_type(name: str) -> Attribute:
    """The xDSL element type for a dtype name such as 'f32'."""
    return _BY_NAME[name]


def dtype_name(t: Attribute) -> str:
    """The dtype name ('f32', 'i1', ...) of an xDSL element type; raises KeyError if unsupported."""
    if isinstance(t, Float32Type):
        return "f32"
    if isinstance(t, Float16Type):
        return "f16"
    if isinstance(t, BFloat16Type):
        return "bf16"
    if isinstance(t, Float64Type):
        return "f64"
    if isinstance(t, IntegerType) and t.width.data in (1, 32, 64):
        return {1: "i1", 32: "i32", 64: "i64"}[t.width.data]
    raise KeyError(str(t))


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype that holds values of a fir dtype."""
    if name not in _NUMPY:
        import numpy as np

        if name == "bf16":
            import ml_dtypes

            _NUMPY[name] = np.dtype(ml_dtypes.bfloat16)
        else:
            _NUMPY[name] = np.dtype(_NUMPY_NAMES[name])
    return _NUMPY[name]


def dtype_of_numpy(dt: np.dtype) -> str | None:
    """The fir dtype name of a numpy dtype, or None if fir has no such dtype."""
    if dt.name == "bfloat16":
        return "bf16"
    for name in _NUMPY_NAMES:
        if numpy_dtype(name) == dt:
            return name
    return None


def is_numpy(v: Any, kind: str = "ndarray") -> bool:
    """Whether `v` is a numpy array (or, with kind="generic", a numpy scalar), without importing numpy: when it
    is not loaded yet, nothing can be one."""
    np = sys.modules.get("numpy")
    return np is not None and isinstance(v, getattr(np, kind))


def is_low_precision(dt: np.dtype) -> bool:
    """True for f16 and bf16 arrays, which kernels compute in f32 and round back."""
    return dt.name in ("float16", "bfloat16")


def is_float(name: str) -> bool:
    """True for floating-point dtypes."""
    return name in ("f32", "f16", "bf16", "f64")


def is_int(name: str) -> bool:
    """True for integer dtypes (i1 excluded)."""
    return name in ("i32", "i64")


def tensor_type(shape: tuple[int, ...] | list[int], dtype: str) -> TensorType:
    """Build a ranked tensor type from a shape and a dtype name."""
    return _tensor_type(tuple(shape), dtype)


@functools.lru_cache(maxsize=4096)
def _tensor_type(shape: tuple[int, ...], dtype: str) -> TensorType:
    # Attributes are immutable, and building one runs its verifier: share them.
    return TensorType(element_type(dtype), list(shape))


def shape_of(t: TensorType) -> tuple[int, ...]:
    """The static shape of a tensor type as a tuple."""
    return tuple(t.get_shape())


def format_type(t: Attribute) -> str:
    """Print a tensor type in .fir syntax: tensor<2x3xf32>, tensor<f32> for rank 0."""
    if isinstance(t, TensorType):
        try:
            dt = dtype_name(t.element_type)
        except KeyError:
            dt = str(t.element_type)
        dims = "".join(f"{d}x" for d in t.get_shape())
        return f"tensor<{dims}{dt}>"
    return str(t)


def nbytes(t: TensorType) -> int:
    """Bytes a tensor of this type occupies (i1 takes one byte)."""
    n = 1
    for d in t.get_shape():
        n *= d
    return n * ITEMSIZE[dtype_name(t.element_type)]

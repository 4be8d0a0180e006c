"""Checking results against the single-device reference, within each dtype's tolerance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fir.dialects import dtypes


@dataclass(frozen=True)
class Comparison:
    """How one result compares with the reference."""

    max_abs_error: float
    ok: bool


def compare(got: np.ndarray, want: np.ndarray, dtype: str) -> Comparison:
    """Compare a result with the single-device reference within the dtype's tolerance (fir.dialects.dtypes.TOLERANCE)."""
    if got.shape != want.shape:
        return Comparison(float("inf"), False)
    rtol, atol = dtypes.TOLERANCE[dtype]
    g, w = got.astype(np.float64), want.astype(np.float64)
    finite = np.isfinite(w) & np.isfinite(g)
    same_special = np.array_equal(np.isnan(g), np.isnan(w)) and np.array_equal(g[np.isinf(w)], w[np.isinf(w)])
    err = float(np.max(np.abs(g[finite] - w[finite]), initial=0.0))
    if dtype in dtypes.LOW_PRECISION_EPS:
        # A sum split over devices (a P layout) rounds each partial sum to the dtype before adding them, as NCCL
        # does; where partial sums cancel, that error is relative to them, not to the small result. Allow two
        # units of rounding of the tensor's largest magnitude, which bounds the partial sums' rounding.
        eps = dtypes.LOW_PRECISION_EPS[dtype]
        atol = max(atol, 2 * eps * float(np.max(np.abs(w[finite]), initial=0.0)))
    ok = same_special and bool(np.allclose(g[finite], w[finite], rtol=rtol, atol=atol))
    return Comparison(err, ok)



def compare_all(got: Sequence[np.ndarray], want: Sequence[np.ndarray], types: Sequence[str]) -> list[Comparison]:
    """Compare every result."""
    return [compare(g, w, t) for g, w, t in zip(got, want, types)]

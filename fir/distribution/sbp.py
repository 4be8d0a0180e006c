"""SBP values and device meshes as plain Python: what passes, rules and runtimes compute with.

An SBP says how one logical tensor lives on the devices of one mesh axis: split along a tensor axis `S(i)`
(contiguous pieces, like numpy.array_split), broadcast `B` (every device holds all of it), or partial `P`
(the logical value is the sum, or `P(max)` the maximum, of the devices' values). An nd-SBP gives one per
mesh axis; on a 2-D mesh, splits nest in mesh-axis order (axis 0 splits first, axis 1 splits its pieces).
The xDSL attributes that store them in IR live in fir.dialects.sbp.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

from fir.dialects.attr_schema import Call, Ident, describe


@dataclass(frozen=True)
class Split:
    """S(axis): contiguous pieces along a tensor axis, piece k on the device with index k on the mesh axis."""

    axis: int

    def __str__(self) -> str:
        return f"S({self.axis})"


@dataclass(frozen=True)
class Broadcast:
    """B: every device holds the whole tensor."""

    def __str__(self) -> str:
        return "B"


@dataclass(frozen=True)
class Partial:
    """P / P(max): the logical tensor is the sum (or max) over the devices of the mesh axis."""

    op: str = "sum"

    def __str__(self) -> str:
        return "P" if self.op == "sum" else f"P({self.op})"


Sbp = Split | Broadcast | Partial
NdSbp = tuple[Sbp, ...]

B = Broadcast()
P = Partial("sum")
PMAX = Partial("max")
PARTIAL_OPS = ("sum", "max")


def S(axis: int) -> Split:
    """Shorthand for Split(axis)."""
    return Split(axis)


def format_nd(nd: NdSbp) -> str:
    """The .fir text of an nd-SBP, e.g. `[S(0), B]`."""
    return "[" + ", ".join(str(s) for s in nd) + "]"


class SbpSyntaxError(ValueError):
    """A literal that is not an SBP."""


def sbp_from_literal(lit: Any) -> Sbp:
    """One SBP from a parsed .fir literal: S(i), B, P, P(sum) or P(max)."""
    if isinstance(lit, Ident) and lit.name == "B":
        return B
    if isinstance(lit, Ident) and lit.name == "P":
        return P
    if isinstance(lit, Call) and lit.name == "S":
        if len(lit.args) != 1 or isinstance(lit.args[0], bool) or not isinstance(lit.args[0], int):
            raise SbpSyntaxError("S(...) takes one integer tensor axis, e.g. S(0)")
        if lit.args[0] < 0:
            raise SbpSyntaxError(f"S({lit.args[0]}): the split axis must be non-negative")
        return Split(lit.args[0])
    if isinstance(lit, Call) and lit.name == "P":
        if len(lit.args) == 1 and isinstance(lit.args[0], Ident) and lit.args[0].name in PARTIAL_OPS:
            return Partial(lit.args[0].name)
        raise SbpSyntaxError("P(...) takes sum or max, e.g. P(max)")
    raise SbpSyntaxError(f"expected an SBP (S(axis), B, P or P(max)), got {describe(lit)}")


def nd_from_literal(lit: Any) -> NdSbp:
    """An nd-SBP from a parsed .fir list literal such as [S(0), B]."""
    if not isinstance(lit, list) or not lit:
        raise SbpSyntaxError(f"expected a list with one SBP per mesh axis, such as [S(0)] or [S(0), B], got {describe(lit)}")
    return tuple(sbp_from_literal(x) for x in lit)


@dataclass(frozen=True)
class Mesh:
    """A named device mesh: its shape and the device ids it covers, in row-major order."""

    name: str
    shape: tuple[int, ...]
    devices: tuple[int, ...]

    @property
    def size(self) -> int:
        """Number of devices."""
        return len(self.devices)

    @functools.cached_property
    def _index(self) -> dict[int, int]:
        return {d: i for i, d in enumerate(self.devices)}

    def __contains__(self, device: object) -> bool:
        return device in self._index

    def coord(self, device: int) -> tuple[int, ...]:
        """The mesh coordinate of a device id."""
        idx = self._index[device]
        out = []
        for d in reversed(self.shape):
            out.append(idx % d)
            idx //= d
        return tuple(reversed(out))

    def device_at(self, coord: tuple[int, ...]) -> int:
        """The device id at a mesh coordinate."""
        idx = 0
        for c, d in zip(coord, self.shape):
            idx = idx * d + c
        return self.devices[idx]

    def coords(self) -> list[tuple[int, ...]]:
        """All coordinates, in device order."""
        return list(itertools.product(*(range(d) for d in self.shape)))

    def group(self, device: int, axis: int) -> list[int]:
        """The devices that differ from `device` only along mesh axis `axis`, in axis order."""
        c = list(self.coord(device))
        out = []
        for k in range(self.shape[axis]):
            c[axis] = k
            out.append(self.device_at(tuple(c)))
        return out

    def __str__(self) -> str:
        return f"@{self.name}"


def changed_axis(src: NdSbp, dst: NdSbp) -> int | None:
    """The one mesh axis where two nd-SBPs differ, or None when they differ on none or several."""
    if len(src) != len(dst):
        return None
    diff = [a for a, (x, y) in enumerate(zip(src, dst)) if x != y]
    return diff[0] if len(diff) == 1 else None

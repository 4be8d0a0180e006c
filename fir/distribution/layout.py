"""Where each element of a logical tensor lives under an nd-SBP: local blocks, local shapes, scatter and gather.

Splits follow numpy.array_split (the first `n % p` pieces are one longer) and nest in mesh-axis order. These
functions are the single definition of the layout that the partition pass, the boxing runtime and the tests use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fir.distribution.sbp import Broadcast, Mesh, NdSbp, Partial, Split

if TYPE_CHECKING:  # numpy is imported where it is used: reading and printing programs need none of it
    import numpy as np

Shape = tuple[int, ...]
# Per tensor dimension: (offset into the logical dimension, size).
Block = tuple[tuple[int, int], ...]


def piece(n: int, parts: int, k: int) -> tuple[int, int]:
    """(offset, size) of piece k when n elements are split into `parts` pieces like numpy.array_split."""
    base, extra = divmod(n, parts)
    return k * base + min(k, extra), base + (1 if k < extra else 0)


def split_cuts(shape: Shape, nd: NdSbp, mesh_shape: Sequence[int],
               extra: tuple[int, int] | None = None) -> list[set[int]]:
    """Per mesh axis, the coordinates at which some piece of the tensor along that axis gets one element shorter
    (array_split: pieces from n % p on are shorter). Between two cuts every device's pieces have one size and
    one offset, an affine function of the coordinate. Splits nest in mesh-axis order, so an inner axis cuts
    every size the outer ones can leave. `extra` = (mesh axis, tensor axis): also a further B -> S split of
    the local piece along that axis (a comm.slice)."""
    cuts: list[set[int]] = [set() for _ in mesh_shape]
    sizes = [{n} for n in shape]
    for k, (s, p) in enumerate(zip(nd, mesh_shape)):
        if isinstance(s, Split):
            cuts[k].update(n % p for n in sizes[s.axis] if n % p)
            sizes[s.axis] = {n // p + (1 if i else 0) for n in sizes[s.axis] for i in range(1 + bool(n % p))}
    if extra is not None:
        k, axis = extra
        cuts[k].update(n % mesh_shape[k] for n in sizes[axis] if n % mesh_shape[k])
    return cuts


def split_parts(shape: Shape, nd: NdSbp, mesh_shape: Sequence[int]) -> list[int]:
    """How many pieces each tensor dimension is cut into (the product of the mesh axes splitting it)."""
    parts = [1] * len(shape)
    for s, p in zip(nd, mesh_shape):
        if isinstance(s, Split):
            parts[s.axis] *= p
    return parts


def check_nd(shape: Shape, nd: NdSbp, mesh_shape: Sequence[int]) -> str | None:
    """Why `nd` cannot lay out a tensor of `shape` on a mesh of `mesh_shape`, or None when it can."""
    if len(nd) != len(mesh_shape):
        return f"it has {len(nd)} entries but the mesh has {len(mesh_shape)} axes"
    if len({s.op for s in nd if isinstance(s, Partial)}) > 1:
        return "it mixes P and P(max), whose order of reduction would matter"
    for s in nd:
        if isinstance(s, Split) and s.axis >= len(shape):
            return f"{s} names axis {s.axis} but the tensor has rank {len(shape)}"
    for axis, parts in enumerate(split_parts(shape, nd, mesh_shape)):
        if parts > 1 and parts > shape[axis]:  # an unsplit axis may be empty: the tensor is then empty everywhere
            return f"axis {axis} has {shape[axis]} elements, fewer than the {parts} pieces it is split into"
    return None


def local_block(shape: Shape, nd: NdSbp, mesh_shape: Sequence[int], coord: Sequence[int]) -> Block:
    """The part of the logical tensor held by the device at `coord` (splits nest in mesh-axis order)."""
    block = [(0, d) for d in shape]
    for s, p, c in zip(nd, mesh_shape, coord):
        if isinstance(s, Split):
            off, size = block[s.axis]
            o, n = piece(size, p, c)
            block[s.axis] = (off + o, n)
    return tuple(block)


def local_shape(shape: Shape, nd: NdSbp, mesh_shape: Sequence[int], coord: Sequence[int]) -> Shape:
    """The shape of the device's local tensor."""
    return tuple(n for _, n in local_block(shape, nd, mesh_shape, coord))


def max_local_elements(shape: Shape, nd: NdSbp, mesh_shape: Sequence[int]) -> int:
    """The largest local tensor over the mesh, in elements (the first device's piece: array_split is front-heavy)."""
    n = 1
    for d in local_shape(shape, nd, mesh_shape, (0,) * len(mesh_shape)):
        n *= d
    return n


def _index(block: Block) -> tuple[slice, ...]:
    return tuple(slice(o, o + n) for o, n in block)


def identity(op: str, dtype: np.dtype):
    """The neutral element of a partial reduction: 0 for sum, the lowest value for max."""
    import numpy as np

    if op == "sum":
        return 0
    if np.issubdtype(dtype, np.integer):
        return np.iinfo(dtype).min
    return -np.inf


def scatter(value: np.ndarray, nd: NdSbp, mesh: Mesh) -> dict[int, np.ndarray]:
    """Each device's local tensor of a logical value: its block, with partial axes holding the value on
    index 0 of the mesh axis and the reduction's identity elsewhere."""
    import numpy as np

    out = {}
    for coord in mesh.coords():
        local = value[_index(local_block(value.shape, nd, mesh.shape, coord))]
        partial_elsewhere = [s.op for s, c in zip(nd, coord) if isinstance(s, Partial) and c != 0]
        if partial_elsewhere:
            local = np.full_like(local, identity(partial_elsewhere[0], local.dtype))
        out[mesh.device_at(coord)] = np.array(local, copy=True)
    return out


def assemble(locals_: dict[int, np.ndarray], nd: NdSbp, mesh: Mesh, shape: Shape, dtype: np.dtype) -> np.ndarray:
    """The logical tensor from every device's local tensor: blocks placed, partial axes reduced, broadcast
    axes read from index 0 (`broadcast_mismatch` checks the other copies)."""
    import numpy as np

    ops = {s.op for s in nd if isinstance(s, Partial)}
    acc: dict[Block, np.ndarray] = {}
    for coord in mesh.coords():
        if any(c != 0 for s, c in zip(nd, coord) if isinstance(s, Broadcast)):
            continue
        block = local_block(shape, nd, mesh.shape, coord)
        local = locals_[mesh.device_at(coord)]
        if local.shape != tuple(n for _, n in block):
            raise ValueError(f"device {mesh.device_at(coord)} holds shape {local.shape}, expected "
                             f"{tuple(n for _, n in block)}")
        # Devices that differ only along partial axes hold the same block: reduce them.
        if block not in acc:
            acc[block] = np.array(local, copy=True)
        elif ops == {"max"}:
            acc[block] = np.maximum(acc[block], local)
        else:
            acc[block] = acc[block] + local
    out = np.empty(shape, dtype=dtype)
    for block, v in acc.items():
        out[_index(block)] = v
    return out


def broadcast_mismatch(locals_: dict[int, np.ndarray], nd: NdSbp, mesh: Mesh) -> int | None:
    """A device whose copy of a broadcast value differs from the copy at index 0, or None when all agree."""
    import numpy as np

    for coord in mesh.coords():
        ref = tuple(0 if isinstance(s, Broadcast) else c for s, c in zip(nd, coord))
        if ref != coord:
            a, b = locals_[mesh.device_at(coord)], locals_[mesh.device_at(ref)]
            if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
                return mesh.device_at(coord)
    return None

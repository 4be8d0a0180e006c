"""Shape rules of the flow ops, on plain (shape, dtype) pairs; each failure raises ShapeError."""

from __future__ import annotations

from collections.abc import Sequence

from xdsl.utils.exceptions import VerifyException

Shape = tuple[int, ...]


class ShapeError(VerifyException):
    """An operand shape, dtype or attribute that an op's rule rejects."""


def fmt_shape(shape: Sequence[int]) -> str:
    """Shape as it appears in a tensor type: 2x3, or a scalar as []."""
    return "x".join(str(d) for d in shape) if shape else "[] (scalar)"


def normalize_axis(axis: int, rank: int, what: str = "axis") -> int:
    """Map a possibly negative axis into [0, rank); reject it if out of range."""
    if not -rank <= axis < rank:
        raise ShapeError(f"{what} {axis} is out of range for a tensor of rank {rank}")
    return axis % rank


def normalize_axes(axes: Sequence[int], rank: int, what: str = "axes") -> list[int]:
    """Normalise a list of axes; reject out-of-range and repeated axes."""
    out = [normalize_axis(a, rank) for a in axes]
    if len(set(out)) != len(out):
        raise ShapeError(f"{what} {list(axes)} name the same axis twice")
    return out


def broadcast_shapes(a: Shape, b: Shape) -> Shape:
    """numpy broadcasting of two shapes."""
    rank = max(len(a), len(b))
    pa = (1,) * (rank - len(a)) + tuple(a)
    pb = (1,) * (rank - len(b)) + tuple(b)
    out = []
    for i, (x, y) in enumerate(zip(pa, pb)):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise ShapeError(
                f"shapes {fmt_shape(a)} and {fmt_shape(b)} do not broadcast: "
                f"dimension {i} of the broadcast shape is {x} in one and {y} in the other"
            )
    return tuple(out)


def check_same_dtype(op: str, dtypes: Sequence[str]) -> str:
    """All operands of an op must share one dtype; return it."""
    first = dtypes[0]
    for i, d in enumerate(dtypes[1:], start=1):
        if d != first:
            raise ShapeError(f"operand {i} has dtype {d} but operand 0 has {first} (convert with flow.cast)")
    return first


def matmul_shape(a: Shape, b: Shape, transpose_a: bool, transpose_b: bool) -> Shape:
    """Result shape of a (batched) matmul with numpy broadcasting of the batch dimensions."""
    if len(a) < 2 or len(b) < 2:
        raise ShapeError(f"matmul operands need rank >= 2, got ranks {len(a)} and {len(b)}")
    m, ka = (a[-1], a[-2]) if transpose_a else (a[-2], a[-1])
    kb, n = (b[-1], b[-2]) if transpose_b else (b[-2], b[-1])
    if ka != kb:
        raise ShapeError(
            f"contracting dimensions differ: lhs {fmt_shape(a)}{' (transposed)' if transpose_a else ''} has K={ka}, "
            f"rhs {fmt_shape(b)}{' (transposed)' if transpose_b else ''} has K={kb}"
        )
    try:
        batch = broadcast_shapes(a[:-2], b[:-2])
    except ShapeError as e:
        raise ShapeError(f"batch dimensions do not broadcast: {e}") from None
    return batch + (m, n)


def reduce_shape(shape: Shape, axes: Sequence[int], keepdims: bool) -> Shape:
    """Result shape of a reduction over `axes`."""
    if not axes:
        raise ShapeError("axes must name at least one axis")
    norm = set(normalize_axes(axes, len(shape)))
    if keepdims:
        return tuple(1 if i in norm else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in norm)


def transpose_shape(shape: Shape, perm: Sequence[int]) -> Shape:
    """Result shape of a transpose; perm must be a permutation of the axes."""
    if sorted(perm) != list(range(len(shape))):
        raise ShapeError(f"perm {list(perm)} is not a permutation of the {len(shape)} axes of {fmt_shape(shape)}")
    return tuple(shape[p] for p in perm)


def numel(shape: Sequence[int]) -> int:
    """Number of elements of a shape."""
    n = 1
    for d in shape:
        n *= d
    return n


def check_reshape(src: Shape, dst: Shape) -> None:
    """A reshape keeps the number of elements."""
    if numel(src) != numel(dst):
        raise ShapeError(
            f"cannot reshape {fmt_shape(src)} ({numel(src)} elements) to {fmt_shape(dst)} ({numel(dst)} elements)"
        )


def check_broadcast_to(src: Shape, dst: Shape) -> None:
    """src must broadcast to exactly dst."""
    if len(src) > len(dst):
        raise ShapeError(f"cannot broadcast {fmt_shape(src)} to the lower-rank shape {fmt_shape(dst)}")
    padded = (1,) * (len(dst) - len(src)) + tuple(src)
    for i, (s, d) in enumerate(zip(padded, dst)):
        if s != d and s != 1:
            raise ShapeError(f"cannot broadcast {fmt_shape(src)} to {fmt_shape(dst)}: dimension {i} is {s}, not 1 or {d}")


def concat_shape(shapes: Sequence[Shape], axis: int) -> Shape:
    """Result shape of concatenating along `axis`."""
    if not shapes:
        raise ShapeError("concat needs at least one operand")
    rank = len(shapes[0])
    if rank == 0:
        raise ShapeError("cannot concatenate scalars")
    ax = normalize_axis(axis, rank)
    for i, s in enumerate(shapes[1:], start=1):
        if len(s) != rank:
            raise ShapeError(f"operand {i} has rank {len(s)} but operand 0 has rank {rank}")
        for d in range(rank):
            if d != ax and s[d] != shapes[0][d]:
                raise ShapeError(
                    f"operand {i} has shape {fmt_shape(s)}, which differs from operand 0 ({fmt_shape(shapes[0])}) "
                    f"in dimension {d}, not only in the concat axis {ax}"
                )
    out = list(shapes[0])
    out[ax] = sum(s[ax] for s in shapes)
    return tuple(out)


def slice_shape(shape: Shape, start: Sequence[int], limit: Sequence[int], stride: Sequence[int]) -> Shape:
    """Result shape of a strided slice [start, limit) per axis; bounds must lie inside the shape."""
    rank = len(shape)
    for name, v in (("start", start), ("limit", limit), ("stride", stride)):
        if len(v) != rank:
            raise ShapeError(f"{name} has {len(v)} entries but the operand has rank {rank}")
    out = []
    for i, (d, s, l, st) in enumerate(zip(shape, start, limit, stride)):
        if st <= 0:
            raise ShapeError(f"stride {st} on axis {i} must be positive")
        if not 0 <= s <= l <= d:
            raise ShapeError(f"axis {i}: need 0 <= start ({s}) <= limit ({l}) <= size ({d})")
        out.append((l - s + st - 1) // st)
    return tuple(out)


def gather_shape(table: Shape, indices: Shape, axis: int) -> Shape:
    """numpy.take shape: table[:axis] + indices + table[axis+1:]."""
    if not table:
        raise ShapeError("cannot gather from a scalar")
    ax = normalize_axis(axis, len(table))
    return tuple(table[:ax]) + tuple(indices) + tuple(table[ax + 1 :])


def layernorm_shapes(x: Shape, gamma: Shape, beta: Shape, axes: Sequence[int]) -> Shape:
    """LayerNorm over trailing `axes`; gamma and beta have the normalised shape."""
    if not axes:
        raise ShapeError("axes must name at least one axis")
    norm = sorted(normalize_axes(axes, len(x)))
    if norm != list(range(len(x) - len(norm), len(x))):
        raise ShapeError(f"axes {list(axes)} must be the trailing axes of the rank-{len(x)} input")
    normalized = tuple(x[len(x) - len(norm) :])
    for name, s in (("gamma", gamma), ("beta", beta)):
        if tuple(s) != normalized:
            raise ShapeError(f"{name} has shape {fmt_shape(s)} but the normalised axes have shape {fmt_shape(normalized)}")
    return tuple(x)


def cross_entropy_shape(logits: Shape, labels: Shape, reduction: str) -> Shape:
    """Softmax cross-entropy over the last axis of logits against integer labels."""
    if len(logits) < 1:
        raise ShapeError("logits need rank >= 1 (the class axis is the last one)")
    if tuple(labels) != tuple(logits[:-1]):
        raise ShapeError(
            f"labels have shape {fmt_shape(labels)} but logits {fmt_shape(logits)} need labels of shape "
            f"{fmt_shape(logits[:-1])}"
        )
    return tuple(labels) if reduction == "none" else ()

"""numpy semantics of the comm collectives: what each member of a group holds after one.

Every function takes the local arrays of one group in group order (mesh-axis order) and returns new arrays,
never views of its inputs. Reductions follow fir.runtime.reference's precision rules: f16 and bf16 accumulate
in float32 and round once at the end; other dtypes reduce in their own dtype (integers wrap), in group order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fir.dialects import dtypes
from fir.distribution.boxing import Step, step_kind
from fir.distribution.layout import piece
from fir.distribution.sbp import Mesh, Sbp

_F32 = np.dtype(np.float32)


def _reduce(arrays: Sequence[np.ndarray], op: str) -> np.ndarray:
    """The elementwise sum or max of the arrays, in group order."""
    if op not in ("sum", "max"):
        raise ValueError(f"unknown reduction {op!r} (expected 'sum' or 'max')")
    dtype = arrays[0].dtype
    work = _F32 if dtypes.is_low_precision(dtype) else dtype
    acc = np.array(arrays[0], dtype=work, copy=True)
    with np.errstate(all="ignore"):  # an overflow to inf is the result, as on the device
        for a in arrays[1:]:
            if op == "sum":
                np.add(acc, a.astype(work, copy=False), out=acc)
            else:
                np.maximum(acc, a.astype(work, copy=False), out=acc)
        return acc.astype(dtype, copy=False)


def all_reduce(arrays: Sequence[np.ndarray], op: str) -> list[np.ndarray]:
    """P -> B: every member gets the reduction of all members' arrays."""
    total = _reduce(arrays, op)
    return [total.copy() for _ in arrays]


def local_slice(array: np.ndarray, axis: int, parts: int, index: int) -> np.ndarray:
    """Piece `index` of `array` cut along `axis` into `parts` pieces like numpy.array_split."""
    off, size = piece(array.shape[axis], parts, index)
    sl = [slice(None)] * array.ndim
    sl[axis] = slice(off, off + size)
    return array[tuple(sl)].copy()


def reduce_scatter(arrays: Sequence[np.ndarray], op: str, axis: int) -> list[np.ndarray]:
    """P -> S(axis): member k gets piece k of the reduction."""
    total = _reduce(arrays, op)
    return [local_slice(total, axis, len(arrays), k) for k in range(len(arrays))]


def all_gather(arrays: Sequence[np.ndarray], axis: int) -> list[np.ndarray]:
    """S(axis) -> B: every member gets the members' arrays joined along `axis` in group order."""
    whole = np.concatenate(arrays, axis=axis)
    return [whole.copy() for _ in arrays]


def all_to_all(arrays: Sequence[np.ndarray], split_axis: int, concat_axis: int) -> list[np.ndarray]:
    """S(concat_axis) -> S(split_axis): member m sends piece k of its array (cut along split_axis) to
    member k, which joins what it receives along concat_axis in member order."""
    p = len(arrays)
    return [np.concatenate([local_slice(a, split_axis, p, k) for a in arrays], axis=concat_axis)
            for k in range(p)]


def transition(src: Sbp, dst: Sbp, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """One group's arrays after moving its mesh axis from `src` to `dst` (one of the boxing transitions)."""
    match step_kind(src, dst):
        case "all_reduce":
            return all_reduce(arrays, src.op)
        case "reduce_scatter":
            return reduce_scatter(arrays, src.op, dst.axis)
        case "all_gather":
            return all_gather(arrays, src.axis)
        case "all_to_all":
            return all_to_all(arrays, dst.axis, src.axis)
        case "slice":
            return [local_slice(a, dst.axis, len(arrays), k) for k, a in enumerate(arrays)]
    raise ValueError(f"no collective moves a mesh axis from {src} to {dst}")


def _run(step: Step, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """One group's arrays after the step."""
    src, dst = step.src[step.axis], step.dst[step.axis]
    if step_kind(src, dst) != step.kind:
        raise ValueError(f"a {step.kind} step cannot move mesh axis {step.axis} from {src} to {dst}")
    return transition(src, dst, arrays)


def apply_step(step: Step, locals_: dict[int, np.ndarray], mesh: Mesh) -> dict[int, np.ndarray]:
    """Every device's local tensor after one boxing step, run on each group of the step's mesh axis."""
    if len(step.src) != len(mesh.shape):
        raise ValueError(f"the step has {len(step.src)} mesh axes but mesh {mesh} has {len(mesh.shape)}")
    out: dict[int, np.ndarray] = {}
    for device in mesh.devices:
        if device in out:  # already computed as part of an earlier device's group
            continue
        group = mesh.group(device, step.axis)
        out.update(zip(group, _run(step, [locals_[d] for d in group])))
    return out


__all__ = ["all_reduce", "reduce_scatter", "all_gather", "all_to_all", "local_slice", "transition", "apply_step"]

"""Program inputs for fir-run: checked loading from .npz, random generation, and output files."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from typing import IO

import numpy as np
from xdsl.dialects.builtin import TensorType
from xdsl.dialects.func import FuncOp
from xdsl.ir import SSAValue, Use

from fir.dialects import dtypes
from fir.syntax.diagnostics import FirError
from fir.dialects import flow, plan
from fir.dialects.base import to_tt
from fir.dialects.shape_inference import numel
from fir.syntax.files import Writer


def arg_names(func: FuncOp) -> list[str]:
    """The input name of each function argument: its %name, or argN when it has none."""
    block = func.body.blocks.first
    assert block is not None
    return [a.name_hint or f"arg{i}" for i, a in enumerate(block.args)]


def result_names(func: FuncOp) -> list[str]:
    """A unique output name per function result: the returned value's %name (in a plan, that of the value
    plan.store copies out), or resultN."""
    block = func.body.blocks.first
    assert block is not None and block.last_op is not None
    names: list[str] = []
    for i, v in enumerate(block.last_op.operands):
        if isinstance(v.owner, plan.StoreOp):
            v = v.owner.input
        name = v.name_hint or f"result{i}"
        if name in names:
            name = f"result{i}"
        names.append(name)
    return names


def _dtype_fits(have: np.dtype, dt: str) -> bool:
    """Whether an array of dtype `have` can be an argument of element type `dt` (see _coerce)."""
    want = dtypes.numpy_dtype(dt)
    return have == want or (dt == "bf16" and have in (np.dtype(np.uint16), np.dtype("V2"), np.dtype(np.float32)))


def _check(name: str, shape: tuple[int, ...], have: np.dtype, t: TensorType) -> None:
    """FirError unless an array of this shape and dtype can be argument %name of type t."""
    want_shape, dt = to_tt(t)
    if tuple(shape) != want_shape:
        raise FirError(f"input '{name}' has shape {tuple(shape)} but %{name} is {dtypes.format_type(t)}")
    if not _dtype_fits(have, dt):
        want = dtypes.numpy_dtype(dt)
        raise FirError(f"input '{name}' has dtype {have} but %{name} is {dt}; save it as {want} (e.g. with .astype)")


def _coerce(name: str, arr: np.ndarray, t: TensorType) -> np.ndarray:
    shape, dt = to_tt(t)
    want = dtypes.numpy_dtype(dt)
    _check(name, arr.shape, arr.dtype, t)
    if dt == "bf16" and arr.dtype in (np.dtype(np.uint16), np.dtype("V2")):
        arr = arr.view(want)  # npz keeps bf16 only as raw 2-byte values
    elif dt == "bf16" and arr.dtype == np.float32:
        if not np.array_equal(arr.astype(want).astype(np.float32), arr, equal_nan=True):
            raise FirError(f"input '{name}' has dtype float32 values that bf16 does not hold exactly, but %{name} "
                           f"is bf16; save it as {want} (e.g. with .astype)")
        arr = arr.astype(want)  # float32 values that bf16 holds exactly (how fir-run writes bf16 arrays)
    return np.ascontiguousarray(arr).reshape(shape)


def _check_names(have: list[str], func: FuncOp, where: str) -> list[str]:
    """The argument names of `func`; FirError when `have` lacks one or has one more."""
    names = arg_names(func)
    missing = [n for n in names if n not in have]
    if missing:
        raise FirError(f"{where} lack {', '.join(repr(m) for m in missing)} "
                       f"(@{func.sym_name.data} takes {', '.join(names)})")
    extra = [k for k in have if k not in names]
    if extra:
        raise FirError(f"{where} have {', '.join(repr(e) for e in extra)}, which @{func.sym_name.data} "
                       f"does not take (it takes {', '.join(names)})")
    return names


def _read_header(stream: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from a .npy header, reading nothing of the data."""
    version = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(stream)
    return tuple(shape), fortran, dtype


def load_inputs(path: str, func: FuncOp) -> list[np.ndarray]:
    """Read an .npz with one array per argument name; every mismatch is a FirError naming the input. Each
    array's header is checked against its argument before any of its data is inflated."""
    where = f"inputs '{path}'"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            raise FirError(f"cannot read {where}: a .npy array, not an .npz archive of named arrays "
                           "(write one with numpy.savez)")
        if not magic.startswith(b"PK"):
            raise FirError(f"cannot read {where}: not an .npz archive of named arrays (write one with "
                           "numpy.savez, or let fir-run --save-inputs write one)")
        with zipfile.ZipFile(path) as zf:
            members = {(i.filename[:-4] if i.filename.endswith(".npy") else i.filename): i for i in zf.infolist()}
            names = _check_names(list(members), func, where)
            block = func.body.blocks.first
            assert block is not None
            out = []
            for name, arg in zip(names, block.args):
                with zf.open(members[name]) as stream:
                    shape, fortran, dtype = _read_header(stream)
                    if dtype.hasobject:
                        raise FirError(f"input '{name}' in {where} holds Python objects, not numbers")
                    _check(name, shape, dtype, arg.type)
                    count = numel(shape)
                    data = np.frombuffer(stream.read(dtype.itemsize * count), dtype)
                if data.size != count:
                    raise FirError(f"cannot read {where}: array '{name}' is cut short")
                arr = data.reshape(shape[::-1]).T if fortran else data.reshape(shape)
                out.append(_coerce(name, arr, arg.type))
            return out
    except FileNotFoundError:
        raise FirError(f"cannot read {where}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise FirError(f"cannot read {where}: not a valid .npz file ({e})") from None


def bind_inputs(data: dict[str, np.ndarray], func: FuncOp, where: str) -> list[np.ndarray]:
    """The arguments of `func` from arrays keyed by argument name, each checked against its type; `where` names
    the arrays' origin in errors."""
    names = _check_names(list(data), func, where)
    block = func.body.blocks.first
    assert block is not None
    return [_coerce(n, np.asarray(data[n]), a.type) for n, a in zip(names, block.args)]


def _uses(v: SSAValue) -> Iterator[Use]:
    """The uses of an argument, seen through the plan.load that copies it to a device in a plan."""
    for use in v.uses:
        if isinstance(use.operation, plan.LoadOp):
            yield from _uses(use.operation.results[0])
        else:
            yield use


def _int_bound(v: SSAValue) -> int | None:
    """The exclusive upper bound an integer input must respect, from how it is used (indices, labels)."""
    bound = None
    for use in _uses(v):
        op = use.operation
        b = None
        if isinstance(op, flow.GatherOp) and use.index == 1:
            b = to_tt(op.table.type)[0][op.attr_values()["axis"] % len(to_tt(op.table.type)[0])]
        elif isinstance(op, flow.ScatterAddOp) and use.index == 1:
            out = to_tt(op.results[0].type)[0]
            b = out[op.attr_values()["axis"] % len(out)]
        elif isinstance(op, flow.CrossEntropyOp) and use.index == 1:
            b = to_tt(op.logits.type)[0][-1]
        if b is not None:
            bound = b if bound is None else min(bound, b)
    return bound


def _float_scale(v: SSAValue) -> float:
    """1/sqrt(K) for a matmul right-hand side (keeps activations near unit scale), else 1."""
    for use in _uses(v):
        op = use.operation
        if isinstance(op, flow.MatmulOp) and use.index == 1:
            shape = to_tt(v.type)[0]
            k = shape[-1] if op.attr_values()["transpose_b"] else shape[-2]
            return 1.0 / np.sqrt(max(k, 1))
    return 1.0


def random_inputs(func: FuncOp, seed: int) -> list[np.ndarray]:
    """Random inputs: floats ~ N(0, 1) (matmul weights scaled by 1/sqrt(K)); integers in the range their uses
    allow (gather and scatter_add indices below the table size, labels below the class count, else [0, 16)); i1 fair coins."""
    rng = np.random.default_rng(seed)
    block = func.body.blocks.first
    assert block is not None
    out = []
    for a in block.args:
        shape, dt = to_tt(a.type)
        npdt = dtypes.numpy_dtype(dt)
        if dtypes.is_float(dt):
            arr = (rng.standard_normal(shape) * _float_scale(a)).astype(np.float32).astype(npdt)
        elif dt == "i1":
            arr = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            bound = _int_bound(a) or 16
            arr = rng.integers(0, bound, size=shape).astype(npdt)
        out.append(np.ascontiguousarray(arr).reshape(shape))  # ascontiguousarray makes 0-d arrays 1-d
    return out


def outputs_writer(names: list[str], values: list[np.ndarray]) -> Writer:
    """What writes outputs as an .npz keyed by name (bf16 results stored as float32, exactly, since .npz has no
    bf16 type)."""
    values = [v.astype(np.float32) if v.dtype.name == "bfloat16" else v for v in values]
    return lambda f: np.savez(f, **dict(zip(names, values)))


"""SBP signature rules of every flow op, as data: which input SBPs give which result SBP.

A `Signature` is one mesh axis' choice: the SBP of each operand and of the result. Rules are written on the
LOGICAL shapes (the ops' own attributes, axes possibly negative). `nd_signatures` combines them per mesh axis
and keeps the combinations that lay out on the mesh (splits nest in mesh-axis order, see fir.distribution.layout).

Unless `needs_local_rewrite` says otherwise, a signature means: every device runs the same op with the same
attributes on its local tensors, and the local results, read with the result's nd-SBP, are the logical result.
Ops that take their result type from the IR (reshape, broadcast_to, cast, fill, iota, constant) then need the
local result type, which every op gets anyway when partitioned, and nothing else.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


from fir.dialects import dtypes
from fir.distribution import layout
from fir.syntax.diagnostics import FirError, loc_of
from fir.distribution.sbp import B, P, PMAX, NdSbp, Partial, S, Sbp, Split, format_nd

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Signature:
    """The SBPs of an op's operands and result on one mesh axis."""

    ins: tuple[Sbp, ...]
    out: Sbp

    def __str__(self) -> str:
        return f"({', '.join(str(s) for s in self.ins)}) -> {self.out}"


@dataclass(frozen=True)
class NdSignature:
    """The nd-SBPs of an op's operands and result on a whole mesh."""

    ins: tuple[NdSbp, ...]
    out: NdSbp

    def __str__(self) -> str:
        return f"({', '.join(format_nd(s) for s in self.ins)}) -> {format_nd(self.out)}"


Rule = Callable[[list[Shape], Shape, dict[str, Any]], list[Signature]]
Note = Callable[[list[Shape], Shape, dict[str, Any]], str]

RULES: dict[str, Rule] = {}
# One sentence per op saying what its rules allow, with its attributes filled in (for error messages).
NOTES: dict[str, Note] = {}

# Ops whose local computation differs, on some signature, from "same op, same attributes, local shapes";
# `needs_local_rewrite` says on which signatures.
NEEDS_LOCAL_REWRITE = frozenset({"flow.reduce_mean", "flow.cross_entropy", "flow.iota", "flow.constant", "flow.slice"})


def _register(name: str, rule: Rule, note: str | Note) -> None:
    RULES[f"flow.{name}"] = rule
    NOTES[f"flow.{name}"] = note if callable(note) else (lambda ins, out, attrs: note)


def _all_b(n: int) -> Signature:
    return Signature((B,) * n, B)


def _axis(axis: int, rank: int) -> int:
    return axis % rank if rank else 0


def _axes(axes: Sequence[int], rank: int) -> list[int]:
    return sorted(_axis(a, rank) for a in axes)


def _aligned(in_shape: Shape, out_shape: Shape, j: int) -> Sbp:
    """The input's SBP when the result splits axis j under numpy broadcasting (inputs align to the trailing
    axes): a split of the matching input axis, or B where the input lacks the axis or stretches a size 1."""
    i = j - (len(out_shape) - len(in_shape))
    return S(i) if i >= 0 and in_shape[i] == out_shape[j] else B


# ----------------------------------------------------------------------------------------------- elementwise
# Partial SBPs a unary op passes through: P for linear ops, P(max) for ops that are monotone non-decreasing
# on every value, -inf included (log and sqrt are not: a partial maximum may be negative, and log(-1) is nan).
_UNARY_PARTIALS: dict[str, tuple[Partial, ...]] = {
    "neg": (P,), "exp": (PMAX,), "log": (), "sqrt": (), "rsqrt": (), "tanh": (PMAX,), "relu": (PMAX,),
    "sigmoid": (PMAX,), "erf": (PMAX,), "gelu": (), "cast": (),
}  # fmt: skip


def _unary(partials: tuple[Partial, ...]) -> Rule:
    def rule(ins: list[Shape], out: Shape, attrs: dict[str, Any]) -> list[Signature]:
        """S(i) -> S(i) on every axis; the op's partials pass through."""
        return [_all_b(1), *(Signature((S(i),), S(i)) for i in range(len(out))),
                *(Signature((p,), p) for p in partials)]

    return rule


for _name, _partials in _UNARY_PARTIALS.items():
    _register(_name, _unary(_partials),
              f"{_name} splits any axis" + (f" and keeps {', '.join(map(str, _partials))}" if _partials else
                                            ", and takes no partial value"))

# Partial signatures of the binary ops: sums of a +/- b, products with one factor whole, a max of maxima.
_BINARY_PARTIALS: dict[str, list[Signature]] = {
    "add": [Signature((P, P), P)],
    "sub": [Signature((P, P), P)],
    "mul": [Signature((P, B), P), Signature((B, P), P)],
    "div": [Signature((P, B), P)],
    "max": [Signature((PMAX, PMAX), PMAX)],
    "min": [],
    "pow": [],
    "greater": [],
    "equal": [],
}


def _binary(partials: list[Signature]) -> Rule:
    def rule(ins: list[Shape], out: Shape, attrs: dict[str, Any]) -> list[Signature]:
        """Result S(j) from each operand's matching axis (B where it broadcasts), plus the op's partials."""
        return [_all_b(2), *(Signature(tuple(_aligned(s, out, j) for s in ins), S(j)) for j in range(len(out))),
                *partials]

    return rule


for _name, _partials in _BINARY_PARTIALS.items():
    _register(_name, _binary(_partials),
              f"{_name} splits any result axis (an operand that broadcasts along it stays B)"
              + (f"; partials: {', '.join(map(str, _partials))}" if _partials else "; it takes no partial value"))


# ----------------------------------------------------------------------------------------------- matmul
def _matmul_axes(ins: list[Shape], attrs: dict[str, Any]) -> tuple[int, int, int, int]:
    """(M axis of a, K axis of a, K axis of b, N axis of b)."""
    ra, rb = len(ins[0]), len(ins[1])
    am, ak = (ra - 1, ra - 2) if attrs.get("transpose_a", False) else (ra - 2, ra - 1)
    bk, bn = (rb - 1, rb - 2) if attrs.get("transpose_b", False) else (rb - 2, rb - 1)
    return am, ak, bk, bn


def _matmul(ins: list[Shape], out: Shape, attrs: dict[str, Any]) -> list[Signature]:
    """OneFlow's five: split M, split N, split K -> P, P x B, B x P; and any batch axis."""
    a, b = ins
    am, ak, bk, bn = _matmul_axes(ins, attrs)
    ro = len(out)
    sigs = [_all_b(2), Signature((S(am), B), S(ro - 2)), Signature((B, S(bn)), S(ro - 1)),
            Signature((S(ak), S(bk)), P), Signature((P, B), P), Signature((B, P), P)]
    batch = out[:-2]
    sigs += [Signature((_aligned(a[:-2], batch, j), _aligned(b[:-2], batch, j)), S(j)) for j in range(ro - 2)]
    return sigs


def _matmul_note(ins: list[Shape], out: Shape, attrs: dict[str, Any]) -> str:
    am, ak, bk, bn = _matmul_axes(ins, attrs)
    return (f"matmul splits M (lhs axis {am}), N (rhs axis {bn}), K (lhs axis {ak} with rhs axis {bk}, giving P) "
            "or a batch axis, and takes P in one operand with the other B")


_register("matmul", _matmul, _matmul_note)


# ----------------------------------------------------------------------------------------------- reductions
def _reduce(partial: Partial) -> Rule:
    def rule(ins: list[Shape], out: Shape, attrs: dict[str, Any]) -> list[Signature]:
        """A kept axis' split moves to its result axis; a reduced axis' split gives the partial."""
        (x,) = ins
        axes = _axes(attrs["axes"], len(x))
        keep = attrs.get("keepdims", False)
        sigs = [_all_b(1)]
        for i in range(len(x)):
            if i in axes:
                sigs.append(Signature((S(i),), partial))
            else:
                sigs.append(Signature((S(i),), S(i if keep else i - sum(a < i for a in axes))))
        return sigs + [Signature((partial,), partial)]

    return rule


def _reduce_note(partial: Partial) -> Note:
    def note(ins: list[Shape], out: Shape, attrs: dict[str, Any]) -> str:
        return (f"reduce splits any axis; a split of a reduced axis {_axes(attrs['axes'], len(ins[0]))} gives "
                f"{partial}, and {partial} stays {partial}")

    return note


for _name, _partial in (("reduce_sum", P), ("reduce_mean", P), ("reduce_max", PMAX)):
    _register(_name, _reduce(_partial), _reduce_note(_partial))


# ----------------------------------------------------------------------------------------------- normalisation
def _softmax(ins: list[Shape], out: Shape, attrs: dict[str, Any]) -> list[Signature]:
    """S(i) -> S(i) for every axis but the softmax axis; no partial."""
    ax = _axis(attrs.get("axis", -1), len(out))
    return [_all_b(1), *(Signature((S(i),), S(i)) for i in range(len(out)) if i != ax)]


_register("softmax", _softmax,
          lambda ins, out, attrs: f"softmax splits any axis but its softmax axis "
                                  f"{_axis(attrs.get('axis', -1), len(out))} and takes no partial value")


def _layernorm(ins: list[Shape], out: Shape, attrs: dict[str, Any]) -> list[Signature]:
    """x S(i) -> S(i) for the axes not normalised, with gamma and beta B; no partial."""
    axes = _axes(attrs.get("axes", [-1]), len(out))
    return [_all_b(3), *(Signature((S(i), B, B), S(i)) for i in range(len(out)) if i not in axes)]


_register("layernorm", _layernorm,
          lambda ins, out, attrs: f"layernorm splits any axis of x but its normalised axes "
                                  f"{_axes(attrs.get('axes', [-1]), len(out))}, with gamma and beta B, "
                                  "and takes no partial value")


# ----------------------------------------------------------------------------------------------- layout
# Pure data movement: a sum or a max of moved pieces is the moved sum or max, so both partials pass through.
def _transpose(ins: list[Shape], out: Shape, attrs: dict[str, Any]) -> list[Signature]:
    """Result S(j) from input S(perm[j]); P and P(max) pass through."""
    perm = attrs["perm"]
    return [_all_b(1), *(Signature((S(perm[j]),), S(j)) for j in range(len(out))),
            Signature((P,), P), Signature((PMAX,), PMAX)]


_register("transpose", _transpose,
          lambda ins, out, attrs: f"transpose moves input S(perm[j]) to result S(j) (perm {list(attrs['perm'])}) "
                                  "and keeps P and P(max)")


def _reshape(ins: list[Shape], out: Shape, attrs: dict[str, Any]) -> list[Signature]:
    """Input S(i) -> result S(j) where as many elements precede both axes (whether the pieces match is checked
    per mesh in nd_signatures); P and P(max) pass through."""
    (x,) = ins
    sigs = [_all_b(1)]
    for i, j in itertools.product(range(len(x)), range(len(out))):
        if math.prod(x[:i]) == math.prod(out[:j]):
            sigs.append(Signature((S(i),), S(j)))
    return sigs + [Signature((P,), P), Signature((PMAX,), PMAX)]


_register("reshape", _reshape,
          "reshape splits an input axis into a result axis only where every device's pieces of the two hold "
          "the same elements in the same order, and keeps P and P(max)")


def _reshape_candidates(x: Shape, out: Shape) -> list[Signature]:
    """Every split pairing: once an outer mesh axis has cut the tensor, a pairing that is not exact on the
    logical shapes may be exact on the pieces (2x4 [S(0), S(1)] is 8 [S(0), S(0)]), so nd_signatures tries
    them all and keeps the exact ones."""
    splits = [Signature((S(i),), S(j)) for i, j in itertools.product(range(len(x)), range(len(out)))]
    return [_all_b(1), *splits, Signature((P,), P), Signature((PMAX,), PMAX)]


def _broadcast_to(ins: list[Shape], out: Shape, attrs: dict[str, Any]) -> list[Signature]:
    """Result S(j) from the aligned input axis (B where the input stretches or lacks it); P and P(max) pass."""
    (x,) = ins
    return [_all_b(1), *(Signature((_aligned(x, out, j),), S(j)) for j in range(len(out))),
            Signature((P,), P), Signature((PMAX,), PMAX)]


_register("broadcast_to", _broadcast_to,
          "broadcast_to splits any result axis (from the input's matching axis, or a B input where it broadcasts) "
          "and keeps P and P(max)")


def _concat(ins: list[Shape], out: Shape, attrs: dict[str, Any]) -> list[Signature]:
    """All operands S(i) -> S(i) for every axis but the concat axis; all P -> P, all P(max) -> P(max)."""
    ax = _axis(attrs["axis"], len(out))
    n = len(ins)
    return [_all_b(n), *(Signature((S(i),) * n, S(i)) for i in range(len(out)) if i != ax),
            Signature((P,) * n, P), Signature((PMAX,) * n, PMAX)]


_register("concat", _concat,
          lambda ins, out, attrs: f"concat splits every operand alike along any axis but its concat axis "
                                  f"{_axis(attrs['axis'], len(out))}, and keeps P and P(max)")


def _whole_axes(x: Shape, attrs: dict[str, Any]) -> list[int]:
    stride = attrs.get("stride") or [1] * len(x)
    return [i for i in range(len(x)) if attrs["start"][i] == 0 and attrs["limit"][i] == x[i] and stride[i] == 1]


def _slice(ins: list[Shape], out: Shape, attrs: dict[str, Any]) -> list[Signature]:
    """S(i) -> S(i) on the axes the slice keeps whole; P and P(max) pass through."""
    return [_all_b(1), *(Signature((S(i),), S(i)) for i in _whole_axes(ins[0], attrs)),
            Signature((P,), P), Signature((PMAX,), PMAX)]


_register("slice", _slice,
          lambda ins, out, attrs: f"slice splits only the axes it keeps whole ({_whole_axes(ins[0], attrs)}) "
                                  "and keeps P and P(max)")


def _gather(ins: list[Shape], out: Shape, attrs: dict[str, Any]) -> list[Signature]:
    """Indices S(i) -> S(axis + i); table S(j) off the gather axis -> the matching result axis; table P."""
    table, indices = ins
    ax = _axis(attrs.get("axis", 0), len(table))
    sigs = [_all_b(2), *(Signature((B, S(i)), S(ax + i)) for i in range(len(indices)))]
    sigs += [Signature((S(j), B), S(j if j < ax else j + len(indices) - 1)) for j in range(len(table)) if j != ax]
    return sigs + [Signature((P, B), P), Signature((PMAX, B), PMAX)]


_register("gather", _gather,
          lambda ins, out, attrs: f"gather splits the indices, or the table on any axis but its gather axis "
                                  f"{_axis(attrs.get('axis', 0), len(ins[0]))}, and takes a partial table "
                                  "with B indices")


def _scatter_add(ins: list[Shape], out: Shape, attrs: dict[str, Any]) -> list[Signature]:
    """gather's transpose: updates and indices split alike along an index axis -> P (each device adds its
    rows); updates S off the index axes -> the matching result axis; partial updates -> P."""
    updates, indices = ins
    ax = _axis(attrs.get("axis", 0), len(out))
    k = len(indices)
    sigs = [_all_b(2), *(Signature((S(ax + i), S(i)), P) for i in range(k))]
    sigs += [Signature((S(j if j < ax else j + k - 1), B), S(j)) for j in range(len(out)) if j != ax]
    return sigs + [Signature((P, B), P)]


_register("scatter_add", _scatter_add,
          lambda ins, out, attrs: "scatter_add splits updates with their indices (a partial result), or the "
                                  f"result on any axis but {_axis(attrs.get('axis', 0), len(out))}, and takes "
                                  "partial updates with B indices")


# ----------------------------------------------------------------------------------------------- sources
def _source(ins: list[Shape], out: Shape, attrs: dict[str, Any]) -> list[Signature]:
    """No operands: the result B, or split on any axis."""
    return [_all_b(0), *(Signature((), S(i)) for i in range(len(out)))]


for _name in ("constant", "fill", "iota"):
    _register(_name, _source, f"{_name} gives B or a split of any axis, never a partial value")


# ----------------------------------------------------------------------------------------------- loss
def _cross_entropy(ins: list[Shape], out: Shape, attrs: dict[str, Any]) -> list[Signature]:
    """Logits and labels split alike on a label axis -> that split (reduction none) or P (sum, mean)."""
    logits = ins[0]
    none = attrs.get("reduction", "mean") == "none"
    return [_all_b(2), *(Signature((S(i), S(i)), S(i) if none else P) for i in range(len(logits) - 1))]


_register("cross_entropy", _cross_entropy,
          lambda ins, out, attrs: f"cross_entropy splits logits and labels alike on a label axis (not the class "
                                  f"axis {len(ins[0]) - 1}), giving "
                                  + ("that split" if attrs.get("reduction", "mean") == "none" else "P")
                                  + ", and takes no partial value")


del _name, _partials, _partial


# ----------------------------------------------------------------------------------------------- queries
def require_rule(op: Any) -> None:
    """FirError at `op` unless its kind has SBP signatures (a flow.fused does not: fuse makes it after partition)."""
    if op.name not in RULES:
        hint = ("; the fuse pass makes it after partition, on device programs: write its ops unfused"
                if op.name == "flow.fused" else "")
        raise FirError(f"'{op.name}' has no SBP rule, so it cannot be distributed or micro-batched{hint}",
                       loc_of(op.location))


def signatures_1d(op_name: str, in_shapes: Sequence[Sequence[int]], out_shape: Sequence[int],
                  attrs: dict[str, Any]) -> list[Signature]:
    """The op's signatures on one mesh axis, all-B first, without duplicates."""
    rule = RULES.get(op_name)
    if rule is None:
        raise KeyError(f"no SBP rule for {op_name}")
    return list(dict.fromkeys(rule([tuple(s) for s in in_shapes], tuple(out_shape), attrs)))


def _freeze(v: Any) -> Any:
    """A hashable stand-in for an attribute value (lists become tuples, arrays their bytes)."""
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if dtypes.is_numpy(v):
        return ("ndarray", v.dtype.str, v.shape, v.tobytes())
    if dtypes.is_numpy(v, "generic"):
        return v.item()
    return v


def nd_signatures(op_name: str, in_shapes: Sequence[Sequence[int]], out_shape: Sequence[int],
                  attrs: dict[str, Any], mesh_shape: Sequence[int]) -> list[NdSignature]:
    """The op's signatures on a mesh: per-mesh-axis signatures combined, keeping those whose every tensor lays
    out (layout.check_nd, which also rejects P mixed with P(max)) and, for reshape, whose pieces match."""
    return list(_nd_signatures(op_name, tuple(tuple(s) for s in in_shapes), tuple(out_shape), _freeze(attrs),
                               tuple(mesh_shape)))


def _per_axis(op_name: str, in_shapes: list[Shape], out_shape: Shape, attrs: dict[str, Any]) -> list[Signature]:
    """The one-axis signatures nd_signatures combines (for reshape, every split pairing: see _reshape_candidates)."""
    if op_name == "flow.reshape":
        return _reshape_candidates(in_shapes[0], out_shape)
    return signatures_1d(op_name, in_shapes, out_shape, attrs)


@functools.lru_cache(maxsize=4096)
def _nd_signatures(op_name: str, in_shapes: tuple[Shape, ...], out_shape: Shape, frozen_attrs: Any,
                   mesh_shape: Shape) -> tuple[NdSignature, ...]:
    per_axis = _per_axis(op_name, list(in_shapes), out_shape, dict(frozen_attrs))
    # Grow the combinations one mesh axis at a time: a combination that fails on the first mesh axes fails on
    # all of them (pieces only get smaller, and an exact reshape's pieces are unions of its sub-pieces).
    combos: list[tuple[Signature, ...]] = [()]
    for m in range(len(mesh_shape)):
        prefix = mesh_shape[: m + 1]
        combos = [c + (s,) for c in combos for s in per_axis
                  if _fits_mesh(op_name, _combine(c + (s,), len(in_shapes)), in_shapes, out_shape, prefix)]
    return tuple(_combine(c, len(in_shapes)) for c in combos)


def _fits_mesh(op_name: str, sig: NdSignature, in_shapes: Sequence[Shape], out_shape: Shape,
               mesh_shape: Sequence[int]) -> bool:
    if _lays_out(sig, in_shapes, out_shape, mesh_shape) is not None:
        return False
    return op_name != "flow.reshape" or reshape_exact(in_shapes[0], sig.ins[0], out_shape, sig.out, mesh_shape)


def _combine(per_axis: Sequence[Signature], n_ins: int) -> NdSignature:
    """The nd-signature with the given signature on each mesh axis."""
    return NdSignature(tuple(tuple(s.ins[k] for s in per_axis) for k in range(n_ins)), tuple(s.out for s in per_axis))


def _lays_out(sig: NdSignature, in_shapes: Sequence[Shape], out_shape: Shape, mesh_shape: Sequence[int]) -> str | None:
    """Why a tensor of `sig` cannot be laid out on the mesh, or None."""
    for k, (nd, shape) in enumerate(zip(sig.ins, in_shapes)):
        why = layout.check_nd(shape, nd, mesh_shape)
        if why is not None:
            return f"operand {k} as {format_nd(nd)}: {why}"
    why = layout.check_nd(out_shape, sig.out, mesh_shape)
    return None if why is None else f"the result as {format_nd(sig.out)}: {why}"


# ----------------------------------------------------------------------------------------------- reshape
def _flat_runs(shape: Shape, block: layout.Block) -> list[tuple[int, int, int]]:
    """A canonical form of the row-major flat indices of a block: (size, offset, count) per dimension after
    merging each dimension into the one outside it while that one is a single index or it is whole. Two
    blocks of equally many elements hold the same flat indices iff their forms are equal (after merging, the
    run length, the run stride and then the outer dims are all read off the index set)."""
    dims = [(1, 0, 1)]
    for n, (o, s) in zip(shape, block):
        size, off, count = dims[-1]
        if count == 1 or (o == 0 and s == n):
            dims[-1] = (size * n, off * n + o, (count - 1) * n + s)
        else:
            dims.append((n, o, s))
    return dims


def reshape_exact(in_shape: Shape, in_nd: NdSbp, out_shape: Shape, out_nd: NdSbp, mesh_shape: Sequence[int]) -> bool:
    """Whether every device's input block and result block hold the same elements in the same row-major order,
    so that a local reshape computes the result's block. Between the cuts of either layout (layout.split_cuts)
    the block sizes, and so the merging in _flat_runs, are the same on every device, and the offsets are one
    affine function of the coordinate: two devices per interval and axis (all their combinations) decide for all
    of them, whatever the mesh size."""
    return all(_reshape_exact_at(in_shape, in_nd, out_shape, out_nd, mesh_shape, coord)
               for coord in _deciding_coords(in_shape, in_nd, out_shape, out_nd, mesh_shape))


def _deciding_coords(in_shape: Shape, in_nd: NdSbp, out_shape: Shape, out_nd: NdSbp, mesh_shape: Sequence[int]):
    """The first two coordinates of every interval between cuts, per mesh axis, in every combination."""
    cuts = [a | b for a, b in zip(layout.split_cuts(in_shape, in_nd, mesh_shape),
                                  layout.split_cuts(out_shape, out_nd, mesh_shape))]
    per_axis = []
    for k, p in enumerate(mesh_shape):
        bounds = sorted({0, p} | cuts[k])
        per_axis.append(sorted({c for lo, hi in zip(bounds, bounds[1:]) for c in (lo, lo + 1) if c < hi}))
    return itertools.product(*per_axis)


def _reshape_exact_at(in_shape: Shape, in_nd: NdSbp, out_shape: Shape, out_nd: NdSbp, mesh_shape: Sequence[int],
                      coord: tuple[int, ...]) -> bool:
    """Whether the device at `coord` holds the same elements in its input and result blocks, in order."""
    ib = layout.local_block(in_shape, in_nd, mesh_shape, coord)
    ob = layout.local_block(out_shape, out_nd, mesh_shape, coord)
    if math.prod(s for _, s in ib) != math.prod(s for _, s in ob):
        return False
    # Empty blocks hold the same (no) elements whatever their offsets.
    return not math.prod(s for _, s in ib) or _flat_runs(in_shape, ib) == _flat_runs(out_shape, ob)


# ----------------------------------------------------------------------------------------------- local rewrites
def needs_local_rewrite(op_name: str, in_shapes: Sequence[Sequence[int]], out_shape: Sequence[int],
                        attrs: dict[str, Any], sig: NdSignature | Signature) -> bool:
    """Whether a device must compute something other than the op with its attributes on its local shapes.

    The rewrites: reduce_mean over a split reduced axis is a local reduce_sum times 1 / (global count);
    cross_entropy "mean" over split labels is a local "sum" times 1 / (global label count); iota split on its
    own axis adds the block's offset; a split constant holds its block of the value; a split slice takes its
    whole local axes (limit = local size)."""
    if isinstance(sig, Signature):
        sig = NdSignature(tuple((s,) for s in sig.ins), (sig.out,))
    splits_in = {s.axis for nd in sig.ins[:1] for s in nd if isinstance(s, Split)}
    splits_out = {s.axis for s in sig.out if isinstance(s, Split)}
    if op_name == "flow.reduce_mean":
        return bool(splits_in & set(_axes(attrs["axes"], len(in_shapes[0]))))
    if op_name == "flow.cross_entropy":
        return attrs.get("reduction", "mean") == "mean" and bool(splits_in)
    if op_name == "flow.iota":
        return _axis(attrs.get("axis", 0), len(out_shape)) in splits_out
    if op_name in ("flow.constant", "flow.slice"):
        return bool(splits_out)
    return False


# ----------------------------------------------------------------------------------------------- diagnostics
def _listing(nds: Sequence[NdSbp], limit: int = 12) -> str:
    unique = list(dict.fromkeys(nds))
    if not unique:
        return "none"
    more = f" and {len(unique) - limit} more" if len(unique) > limit else ""
    return ", ".join(format_nd(nd) for nd in unique[:limit]) + more


def why_invalid(op_name: str, in_shapes: Sequence[Sequence[int]], out_shape: Sequence[int], attrs: dict[str, Any],
                mesh_shape: Sequence[int], wanted_out: NdSbp | None, wanted_ins: Sequence[NdSbp | None]) -> str | None:
    """A sentence saying why no signature of the op gives `wanted_out` from `wanted_ins` (None entries are free),
    e.g. "softmax splits any axis but its softmax axis 1 ...; results it can give: [B], [S(0)]"; None when one does."""
    in_shapes = [tuple(s) for s in in_shapes]
    out_shape = tuple(out_shape)
    wanted_ins = list(wanted_ins) + [None] * (len(in_shapes) - len(wanted_ins))
    for k, nd in enumerate(wanted_ins):
        if nd is not None and (why := layout.check_nd(in_shapes[k], nd, mesh_shape)) is not None:
            return f"operand {k} cannot be {format_nd(nd)}: {why}"
    if wanted_out is not None and (why := layout.check_nd(out_shape, wanted_out, mesh_shape)) is not None:
        return f"the result cannot be {format_nd(wanted_out)}: {why}"

    sigs = nd_signatures(op_name, in_shapes, out_shape, attrs, mesh_shape)
    from_ins = [s for s in sigs if all(w is None or s.ins[k] == w for k, w in enumerate(wanted_ins))]
    if any(wanted_out is None or s.out == wanted_out for s in from_ins):
        return None

    note = NOTES[op_name](in_shapes, out_shape, attrs)

    def fits(s: Signature, m: int) -> bool:
        return ((wanted_out is None or s.out == wanted_out[m])
                and all(w is None or s.ins[k] == w[m] for k, w in enumerate(wanted_ins)))

    per_axis = _per_axis(op_name, in_shapes, out_shape, attrs)
    choices = [[s for s in per_axis if fits(s, m)] for m in range(len(mesh_shape))]
    if not all(choices):
        # Some mesh axis asks for what no one-axis signature gives: the op's rule itself says why.
        m = next(m for m, c in enumerate(choices) if not c)
        reason = note if len(mesh_shape) == 1 else f"{note} (nothing fits on mesh axis {m})"
    else:
        # Each axis alone fits, so the combination fails: show it on the first one.
        combo = next(iter(itertools.product(*choices)))
        sig = _combine(combo, len(in_shapes))
        lays = _lays_out(sig, in_shapes, out_shape, mesh_shape)
        if lays is not None:
            reason = f"{note}; its signature {sig} would need {lays}"
        else:
            reason = (f"{note}; on the mesh {list(mesh_shape)} the pieces of {format_nd(sig.ins[0])} and "
                      f"{format_nd(sig.out)} hold different elements")
    if wanted_out is None or not from_ins:
        # The operands themselves are the problem: say what each constrained operand could be.
        options = "; ".join(f"operand {k} can be {_listing([s.ins[k] for s in sigs])}"
                            for k, w in enumerate(wanted_ins) if w is not None)
        return f"{reason}; {options}" if options else reason
    given = " from those operands" if any(w is not None for w in wanted_ins) else ""
    return f"{reason}; results it can give{given}: {_listing([s.out for s in from_ins])}"

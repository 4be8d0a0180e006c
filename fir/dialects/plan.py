"""The `plan` dialect: the static execution plan of one device.

After `schedule`, a device program is a list of instructions in issue order. Every instruction names the
`stream` it runs on; flow and comm ops are instructions too (they gain `stream`, `micro` and, after
`plan-memory`, `offset`). The ops of this dialect are the rest of the plan:

| op            | stream      | what it does                                                                 |
| ------------- | ----------- | ---------------------------------------------------------------------------- |
| `plan.load`   | `h2d`       | copy a host input (a function argument, or a box of it) into the arena       |
| `plan.store`  | `d2h`       | copy a device tensor out to the host (a function result)                     |
| `plan.record` | any         | record event `event` on the stream, after the instructions issued before it  |
| `plan.wait`   | any         | hold the stream's later instructions until `event` has been recorded         |

Semantics (CUDA's): each stream runs its instructions one at a time in issue order; `plan.wait` is the only
way one stream of a device waits for another. SSA use-def edges say which buffer an instruction reads, not
when: a plan whose events do not order a producer before its consumer is wrong, and the numpy backend, which
runs streams in any order the events allow, shows it. Devices synchronise with each other only through
collectives and send/recv pairs.
"""

from __future__ import annotations

from typing import Any, ClassVar

from xdsl.dialects.builtin import I64, ArrayAttr, DenseArrayBase, IntegerAttr, SymbolRefAttr, TensorType, i64
from xdsl.ir import Attribute, Dialect
from xdsl.irdl import irdl_op_definition, operand_def, opt_prop_def, prop_def, result_def
from xdsl.utils.exceptions import VerifyException

from fir.dialects.attr_schema import OPTIONAL, AttrError, AttrSpec, IntListSpec, IntSpec, StrSpec
from fir.dialects.base import TT, FirOp, fmt_tt, to_tt
from fir.dialects.sbp import NdSbpSpec, SymbolSpec
from fir.distribution.sbp import Broadcast, Split, changed_axis, format_nd
from fir.dialects.shape_inference import ShapeError

# The streams of a device: compute kernels, collectives, device-to-device copies (send, recv), host copies.
STREAMS: tuple[str, ...] = ("compute", "comm", "send", "recv", "h2d", "d2h")

STREAM, OFFSET, MICRO = "stream", "offset", "micro"


class _NonNegative(IntSpec):
    """A non-negative integer."""

    def kind(self) -> str:
        return "a non-negative integer"

    def to_attr(self, value: Any) -> Attribute:
        attr = super().to_attr(value)
        if value < 0:
            raise AttrError(f"expects a non-negative integer, got {value}")
        return attr


# Attributes any instruction (flow, comm or plan op) of a plan carries, in the order they are printed.
INSTR_ATTRS: dict[str, AttrSpec] = {
    MICRO: _NonNegative(doc="the micro-batch the instruction belongs to (microbatch pass)"),
    STREAM: StrSpec(choices=STREAMS, doc="the stream the instruction runs on (schedule pass)"),
    OFFSET: _NonNegative(doc="byte offset of the result in the device's arena (plan-memory pass)"),
}

# Argument attributes: `microbatch = i` splits the argument into micro-batches along axis i.
MICROBATCH = "microbatch"
ARG_ATTRS: dict[str, AttrSpec] = {MICROBATCH: _NonNegative(doc="split into micro-batches along this axis")}

# Function attributes of a plan: the ordering the schedule used, and the arena's size in bytes.
SCHEDULE, ARENA_SIZE = "schedule", "arena_size"
ORDERS: tuple[str, ...] = ("gpipe", "1f1b")
FUNC_ATTRS: dict[str, AttrSpec] = {
    SCHEDULE: StrSpec(choices=ORDERS, doc="a plan: the pipeline ordering the schedule pass used"),
    ARENA_SIZE: _NonNegative(doc="a plan: the size of the device's arena in bytes (plan-memory pass)"),
}

_INT = IntegerAttr[I64]


class PlanOp(FirOp):
    """Base of the plan ops: every one is an instruction and must name its stream."""

    DISCARDABLE: ClassVar[frozenset[str]] = frozenset(INSTR_ATTRS)

    def verify_(self) -> None:
        self._verify_attrs()
        if STREAM not in self.attributes:
            raise VerifyException(f"needs a stream ({', '.join(STREAMS)})")
        declared = to_tt(self.results[0].type) if self.results else None
        out = self.infer(self.operand_tts(), self.attr_values(), declared)
        if self.results and to_tt(self.results[0].type) != out:
            raise ShapeError(f"result type {fmt_tt(to_tt(self.results[0].type))} does not match the inferred "
                             f"type {fmt_tt(out)}")


@irdl_op_definition
class LoadOp(PlanOp):
    """Copy a host input into the device's arena: the whole argument, the box [start, limit) of it, or (in an
    SPMD plan) the running device's piece of it under a B -> S step on one mesh axis (`mesh`, `from`, `to`, as
    the comm.slice it loads in one go)."""

    name = "plan.load"
    input = operand_def(TensorType)
    result = result_def(TensorType)
    start = opt_prop_def(DenseArrayBase.constr(i64))
    limit = opt_prop_def(DenseArrayBase.constr(i64))
    mesh = opt_prop_def(SymbolRefAttr)
    from_ = opt_prop_def(ArrayAttr, prop_name="from")
    to = opt_prop_def(ArrayAttr)
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {
        "start": IntListSpec(default=OPTIONAL, doc="first index of the box along each axis"),
        "limit": IntListSpec(default=OPTIONAL, doc="one past the last index of the box along each axis"),
        "mesh": SymbolSpec(default=OPTIONAL, doc="SPMD plans: the mesh of the piece loaded"),
        "from": NdSbpSpec(default=OPTIONAL, doc="SPMD plans: the argument's nd-SBP"),
        "to": NdSbpSpec(default=OPTIONAL, doc="SPMD plans: the piece's nd-SBP (B -> S on one mesh axis)"),
    }

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        shape, dt = ins[0]
        if ("start" in attrs) != ("limit" in attrs):
            raise ShapeError("plan.load needs both start and limit, or neither")
        piece = [k for k in ("mesh", "from", "to") if k in attrs]
        if piece:
            if len(piece) != 3 or "start" in attrs:
                raise ShapeError("a piece load names mesh, from and to, and no box")
            return _piece_type(shape, dt, attrs["from"], attrs["to"], declared)
        if "start" not in attrs:
            return shape, dt
        start, limit = attrs["start"], attrs["limit"]
        if len(start) != len(shape) or len(limit) != len(shape):
            raise ShapeError(f"start and limit need {len(shape)} entries, one per axis")
        for ax, (s, e, n) in enumerate(zip(start, limit, shape)):
            if not 0 <= s <= e <= n:
                raise ShapeError(f"axis {ax}: the box [{s}, {e}) is not inside [0, {n})")
        return tuple(e - s for s, e in zip(start, limit)), dt


def _piece_type(shape: tuple[int, ...], dt: str, src, dst, declared: TT | None) -> TT:
    """The type of an SPMD piece load: declared (the piece differs between devices), B -> S(i) on one mesh axis."""
    axis = changed_axis(src, dst)
    if axis is None or not isinstance(src[axis], Broadcast) or not isinstance(dst[axis], Split) \
            or dst[axis].axis >= len(shape):
        raise ShapeError(f"a piece load moves B -> S(i) on one mesh axis of the argument, not {format_nd(src)} -> "
                         f"{format_nd(dst)}")
    if declared is None:
        raise ShapeError("a piece load needs its result type (the running device's piece)")
    want = list(shape)
    if declared[1] != dt or len(declared[0]) != len(shape) or any(
            d != n for k, (d, n) in enumerate(zip(declared[0], want)) if k != dst[axis].axis):
        raise ShapeError(f"the piece {fmt_tt(declared)} must keep the argument's dtype and every axis but "
                         f"{dst[axis].axis} ({fmt_tt((shape, dt))})")
    return declared


@irdl_op_definition
class StoreOp(PlanOp):
    """Copy a device tensor to the host; the result is the host copy a function returns."""

    name = "plan.store"
    input = operand_def(TensorType)
    result = result_def(TensorType)

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        return ins[0]


class _EventOp(PlanOp):
    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> None:
        return None


@irdl_op_definition
class RecordOp(_EventOp):
    """Record an event on the stream: it fires once every instruction issued before it on the stream is done."""

    name = "plan.record"
    event = prop_def(_INT)
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {"event": _NonNegative(doc="the event's number on this device")}


@irdl_op_definition
class WaitOp(_EventOp):
    """Make the stream's later instructions wait until the event has fired."""

    name = "plan.wait"
    event = prop_def(_INT)
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {"event": _NonNegative(doc="the event to wait for")}


PLAN_OPS: tuple[type[PlanOp], ...] = (LoadOp, StoreOp, RecordOp, WaitOp)
Plan = Dialect("plan", list(PLAN_OPS), [])

__all__ = ["Plan", "PlanOp", "LoadOp", "StoreOp", "RecordOp", "WaitOp", "PLAN_OPS", "STREAMS", "INSTR_ATTRS",
           "ARG_ATTRS", "FUNC_ATTRS", "STREAM", "OFFSET", "MICRO", "MICROBATCH", "SCHEDULE", "ARENA_SIZE",
           "ORDERS"]

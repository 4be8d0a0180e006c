"""Reading and editing execution plans: instructions in issue order, their streams, and the happens-before
relation that stream order and events give (fir/dialects/plan.py states the semantics)."""

from __future__ import annotations

import functools

from xdsl.dialects.builtin import IntegerAttr, ModuleOp, StringAttr, TensorType, i64
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Attribute, BlockArgument, Operation, SSAValue

from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.comm import AllReduceOp, CollectiveOp, RecvOp, SendOp
from fir.dialects.flow import ELEMENTWISE_BINARY, ELEMENTWISE_UNARY, CastOp, FlowOp, ReshapeOp
from fir.dialects.plan import OFFSET, SCHEDULE, STREAM, STREAMS, LoadOp, RecordOp, StoreOp, WaitOp
from fir.dialects.dtypes import nbytes
from fir.dialects.sbp import PositionOp
from fir.distribution.placement import DEVICE, DEVICES, OF, program_devices, symbol_name


def is_plan(func: FuncOp) -> bool:
    """True for a function the schedule pass turned into a plan."""
    return SCHEDULE in func.attributes


def entry_plans(module: ModuleOp, entry: str) -> tuple[dict[int, FuncOp], bool]:
    """The plans of logical function @entry by device, and whether they are its device programs (`@entry.devK`, or
    the SPMD plans of its classes of devices, each device mapped to its class's plan) rather than @entry itself
    planned as one device (device 0); FirError when there are none."""
    entry = entry.lstrip("@")
    funcs = [op for op in module.ops if isinstance(op, FuncOp)]
    pieces = [f for f in funcs if symbol_name(f.attributes.get(OF)) == entry]
    if not pieces:
        whole = next((f for f in funcs if f.sym_name.data == entry), None)
        if whole is None:
            raise FirError(f"no function @{entry} in the program")
        if not is_plan(whole):
            raise FirError(f"@{entry} is not a plan (run the schedule and plan-memory passes)", loc_of(whole.location))
        return {0: whole}, False
    by_device: dict[int, FuncOp] = {}
    for f in pieces:
        if not is_plan(f):
            raise FirError(f"@{f.sym_name.data} is not a plan yet (run the schedule and plan-memory passes)",
                           loc_of(f.location))
        if DEVICE not in f.attributes and DEVICES not in f.attributes:
            raise FirError(f"@{f.sym_name.data} is a program of @{entry} but names no device", loc_of(f.location))
        for d in program_devices(f):
            if d in by_device:
                raise FirError(f"@{by_device[d].sym_name.data} and @{f.sym_name.data} are both device {d}'s program "
                               f"of @{entry}", loc_of(f.location))
            by_device[d] = f
    return dict(sorted(by_device.items())), True


def instructions(func: FuncOp) -> list[Operation]:
    """The plan's instructions in issue order (func.return excluded)."""
    return [op for op in func.body.ops if not isinstance(op, ReturnOp)]


@functools.cache
def stream_attr(stream: str) -> StringAttr:
    """The `stream` attribute naming a stream (attributes are immutable: one per stream is shared, as building
    and verifying one per instruction is a measurable part of scheduling a large plan)."""
    return StringAttr(stream)


def stream_of(op: Operation) -> str:
    """The stream an instruction runs on."""
    attr = op.attributes.get(STREAM)
    if not isinstance(attr, StringAttr):
        raise FirError(f"'{op.name}' in a plan has no stream", loc_of(op.location))
    return attr.data


def event_of(op: RecordOp | WaitOp) -> int:
    """The event a plan.record or plan.wait names."""
    return op.event.value.data


class HappensBefore:
    """Which instructions of one device's plan are complete before another starts, by vector clocks over
    its streams. Cross-device order (collectives, send/recv) is not counted, so the answer is safe: "no"
    may mean "not guaranteed". Adding events only adds order, so an instance made before an edit stays
    safe to use after it."""

    def __init__(self, func: FuncOp):
        ops = instructions(func)
        self.streams = sorted({stream_of(op) for op in ops}, key=STREAMS.index)
        col = {s: i for i, s in enumerate(self.streams)}
        n = len(self.streams)
        current = {s: (0,) * n for s in self.streams}  # what is complete before the next instruction on s starts
        issued = dict.fromkeys(self.streams, 0)
        fired: dict[int, tuple[int, ...]] = {}
        self.position: dict[Operation, int] = {}
        self.start: dict[Operation, tuple[int, ...]] = {}
        self.index: dict[Operation, int] = {}  # 1-based index within its stream
        for pos, op in enumerate(ops):
            s = stream_of(op)
            clock = current[s]
            if isinstance(op, WaitOp) and event_of(op) in fired:
                clock = tuple(max(a, b) for a, b in zip(clock, fired[event_of(op)]))
            self.position[op] = pos
            self.start[op] = clock
            issued[s] += 1
            self.index[op] = issued[s]
            done = clock[:col[s]] + (issued[s],) + clock[col[s] + 1:]
            if isinstance(op, RecordOp):
                fired[event_of(op)] = done
            current[s] = done
        self._col = col

    def before(self, a: Operation, b: Operation) -> bool:
        """True when `a` is guaranteed complete before `b` starts."""
        col = self._col.get(stream_of(a))
        return col is not None and b in self.start and self.start[b][col] >= self.index[a]


def next_event(func: FuncOp) -> int:
    """An event number not used in the function."""
    used = [event_of(op) for op in func.body.ops if isinstance(op, (RecordOp, WaitOp))]
    return max(used, default=-1) + 1


def record_after(op: Operation, event: int) -> RecordOp:
    """Insert `plan.record {event}` on op's stream right after op."""
    rec = RecordOp.create(properties={"event": IntegerAttr(event, i64)}, attributes={STREAM: stream_attr(stream_of(op))})
    rec.location = op.location
    op.parent_block().insert_op_after(rec, op)  # type: ignore[union-attr]
    return rec


def wait_before(op: Operation, event: int, stream: str | None = None) -> WaitOp:
    """Insert `plan.wait {event}` on op's stream (or `stream`) right before op."""
    wait = WaitOp.create(properties={"event": IntegerAttr(event, i64)},
                         attributes={STREAM: stream_attr(stream or stream_of(op))})
    wait.location = op.location
    op.parent_block().insert_op_before(wait, op)  # type: ignore[union-attr]
    return wait


def stream_for(op: Operation) -> str:
    """The stream an instruction of this kind runs on: kernels on compute, collectives on comm, sends and
    receives on send and recv, host copies on h2d and d2h."""
    if isinstance(op, CollectiveOp):
        return "compute" if op.KIND == "slice" else "comm"  # a B -> S slice is a local copy
    if isinstance(op, SendOp):
        return "send"
    if isinstance(op, RecvOp):
        return "recv"
    if isinstance(op, LoadOp):
        return "h2d"
    if isinstance(op, StoreOp):
        return "d2h"
    if isinstance(op, (FlowOp, PositionOp)):
        return "compute"
    raise FirError(f"'{op.name}' cannot be scheduled (a plan runs flow, comm and plan ops)", loc_of(op.location))


def is_host_value(v: SSAValue) -> bool:
    """A tensor on the host: a function argument, or the copy plan.store made."""
    return isinstance(v, BlockArgument) or isinstance(v.owner, StoreOp)


def _name(v: SSAValue) -> str:
    return f"%{v.name_hint}" if v.name_hint else "a value"


def verify_plan(func: FuncOp) -> None:
    """Raise FirError unless every instruction is on the stream of its kind, reads device values (plan.load: host
    tensors), and has an `offset` only when it defines a device buffer; every wait follows the one record of its
    event, issued on another stream; and the function returns host tensors."""
    recorded: dict[int, str] = {}
    for op in instructions(func):
        stream = stream_of(op)
        if not isinstance(op, (RecordOp, WaitOp)) and stream != stream_for(op):
            raise FirError(f"'{op.name}' runs on the {stream_for(op)} stream, not \"{stream}\"", loc_of(op.location))
        for v in op.operands:
            if isinstance(op, LoadOp) and not is_host_value(v):
                raise FirError(f"plan.load copies a host tensor (an argument or a plan.store result) to the device, "
                               f"but {_name(v)} is already on the device", loc_of(op.location))
            if not isinstance(op, LoadOp) and is_host_value(v):
                raise FirError(f"'{op.name}' reads the host tensor {_name(v)}: copy it to the device with plan.load",
                               loc_of(op.location))
        if OFFSET in op.attributes and (not op.results or isinstance(op, StoreOp)):
            raise FirError(f"'{op.name}' has an offset but defines no device buffer", loc_of(op.location))
        if isinstance(op, RecordOp):
            e = event_of(op)
            if e in recorded:
                raise FirError(f"event {e} is recorded twice", loc_of(op.location))
            recorded[e] = stream
        elif isinstance(op, WaitOp):
            e = event_of(op)
            if e not in recorded:
                raise FirError(f"plan.wait on event {e}, which no earlier plan.record records", loc_of(op.location))
            if recorded[e] == stream:
                raise FirError(f"plan.wait on event {e} recorded on its own stream \"{stream}\" (a stream already "
                               "runs in order)", loc_of(op.location))
    ret = func.body.blocks.first.last_op  # type: ignore[union-attr]
    for v in ret.operands if isinstance(ret, ReturnOp) else ():
        if not is_host_value(v):
            raise FirError(f"a plan returns host tensors, but {_name(v)} is on the device: copy it out with "
                           "plan.store", loc_of(ret.location))


def overwritable_operands(op: Operation) -> list[int]:
    """Indices of the operands `op` may write its result over: an elementwise op (result element i made from
    operand element i only, so a kernel reads each element before it writes it), for an operand of exactly the
    result's type. Unary math ops, same-dtype casts, reshape (a row-major copy) and binary ops (either operand
    that is not broadcast; the other may be) qualify, and so does all_reduce (NCCL's in-place all-reduce);
    softmax, layernorm, reductions, matmul, transpose, slice, concat, gather and the other collectives read other
    elements than the one they write, so they never do."""
    kind = _ELEMENTWISE.get(op.name)
    if kind is None:
        return []
    out = op.results[0].type
    if kind == "unary":
        return [0] if _same_bytes(op.operands[0].type, out) else []
    return [i for i, v in enumerate(op.operands) if v.type == out]


# Ops that may overwrite an operand: "unary" ones (one operand, same element type and byte count as the
# result) and "exact" ones (any operand whose type is the result's).
_ELEMENTWISE: dict[str, str] = {
    **{c.name: "unary" for c in ELEMENTWISE_UNARY if c is not CastOp}, ReshapeOp.name: "unary",
    CastOp.name: "exact", **{c.name: "exact" for c in ELEMENTWISE_BINARY}, AllReduceOp.name: "exact",
}


def _same_bytes(a: Attribute, b: Attribute) -> bool:
    return isinstance(a, TensorType) and isinstance(b, TensorType) and a.element_type == b.element_type \
        and nbytes(a) == nbytes(b)

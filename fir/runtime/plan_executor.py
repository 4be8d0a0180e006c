"""Execute execution plans (`schedule` + `plan-memory` output) on the numpy backend, with real arenas.

A device runs its own plan, or the SPMD plan of its class with its own coordinates (its `sbp.position`, the box
of its piece in a local comm.slice or a piece load, its group in a collective, its peers in a send or receive,
from the meshes). Each device has one arena: a byte buffer of the plan's `arena_size`, filled with a poison pattern (0xFF bytes:
NaN for floats, -1 for integers), and every device value is a view of it at the value's `offset`. Each
(device, stream) runs its instructions in issue order; nothing else orders them but events (`plan.record` /
`plan.wait`), collectives (every member at the head of its stream), and send/recv (a receive waits for its
send). SSA use-def edges never order anything: a plan whose events or offsets are wrong reads poison or another
value's bytes and gives wrong numbers.

Which runnable stream head goes next is the `interleaving`:
- "in-order": the lowest device, then the earliest-issued head;
- "random": uniformly among the runnable heads (seeded);
- "adversarial": one legal interleaving meant to break plans with missing synchronisation or overlapping
  buffers. It first prefers a head that would read bytes not holding its operand (the producer has not run, or
  something overwrote it) or that would overwrite a value a not-yet-run instruction still reads; then a head
  whose stream, run on without waiting (up to LOOKAHEAD instructions), reaches such a write. Otherwise it delays
  *racy* heads: those touching bytes that a later-issued instruction on another stream of the device also
  touches (one of them writing) while no event, collective or send/recv orders the two (happens-before by
  vector clocks, from a dry run of the plan's synchronisation only). Then the latest-issued head goes first
  (delaying producers); ties are broken by the seed.

Logical inputs are scattered to the devices and results gathered back by their SBP exactly as on the virtual
devices of fir.runtime.virtual_devices. `PlanOrder` exposes the happens-before relation the executor computes,
cross-device order included.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import BlockArgument, Operation, SSAValue

from fir import progress
from fir.dialects import dtypes
from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.base import to_tt
from fir.dialects.comm import CollectiveOp, RecvOp, SendOp
from fir.dialects.flow import FlowOp
from fir.dialects.plan import ARENA_SIZE, MICRO, OFFSET, LoadOp, RecordOp, StoreOp, WaitOp
from fir.dialects.sbp import PositionOp, meshes_of
from fir.distribution.expansion import (collective_group, coordinate, is_local_slice, load_box, recv_source,
                                        send_targets, slice_box)
from fir.distribution.sbp import Mesh
from fir.distribution.placement import int_value
from fir.planning.plan_ir import entry_plans, event_of, instructions, overwritable_operands, stream_of, verify_plan
from fir.runtime.interpreter import evaluate_op
from fir.runtime.reference import KernelError
from fir.runtime.virtual_devices import (check_programs, complete_collective, devices_needed, gather_results,
                                         on_device, scatter_inputs)
from fir.planning.trace import TraceEvent

INTERLEAVINGS: tuple[str, ...] = ("in-order", "random", "adversarial")
POISON = 0xFF
# How far ahead on a stream the adversary looks for a write over a value still to be read.
LOOKAHEAD = 16


@dataclass
class PlanRun:
    """What one execution of a program's plans produced."""

    outputs: list[np.ndarray]
    events: list[TraceEvent] = field(default_factory=list)  # one per instruction and device, when traced
    arena_size: dict[int, int] = field(default_factory=dict)  # device -> bytes of its arena
    order: list[tuple[int, str, int]] = field(default_factory=list)  # (device, stream, issue position) as run


# ----------------------------------------------------------------------------------------------- plans
# ----------------------------------------------------------------------------------------------- instructions
@dataclass(eq=False)
class _Slot:
    """Where one device value lives in its arena."""

    value: SSAValue
    lo: int
    hi: int
    view: np.ndarray  # writable view of the arena
    readonly: np.ndarray  # the same bytes, for readers


@dataclass(eq=False)
class _Instr:
    op: Operation
    device: int
    stream: str
    pos: int  # issue position in the device's plan
    reads: list[_Slot]
    write: _Slot | None
    # Set when it runs: its 1-based index on its stream, and the vector clock of what is complete before it starts
    # (the same in every interleaving; the adversary reads them from a dry run).
    index: int = 0
    start: tuple[int, ...] = ()
    racy: list[_Instr] = field(default_factory=list)  # later instructions it races with (adversarial)
    key: tuple | None = None  # what it meets on other devices: ("collective", id, group) or ("p2p", id, src, dst)
    sends: list[tuple] = field(default_factory=list)  # a send's messages: ("p2p", id, src, dst) for each receiver
    # An SPMD plan's op with the device's own constant: an sbp.position's coordinate, the box (start, limit) of the
    # device's piece in a comm.slice or a piece load.
    local: Any = None
    clobbers: list[_Slot] = field(default_factory=list)  # other values its write overlaps (adversarial)
    # Its result overlaps an operand, and not as an elementwise op overwriting that operand exactly: a kernel
    # would read bytes it has already written, so they read as poison here.
    self_clobber: bool = False


def _name(v: SSAValue) -> str:
    if v.name_hint:
        return "%" + v.name_hint
    if isinstance(v, BlockArgument):
        return f"%arg{v.index}"
    return "%<unnamed>"


class _Device:
    """One device: its plan's instructions by stream, its arena and the views into it, its host tensors. An SPMD
    plan is shared by the devices of its class: each reads its own coordinates from `meshes`."""

    def __init__(self, device: int, func: FuncOp, args: Sequence[np.ndarray] | None, meshes: dict[str, Mesh]):
        self.id = device
        self.func = func
        self.meshes = meshes
        ops = instructions(func)
        size = int_value(func, ARENA_SIZE)
        if size is None:
            defining = next((op for op in ops if op.results and not isinstance(op, StoreOp)), None)
            if defining is not None:
                raise FirError(f"@{func.sym_name.data} has no arena_size (run the plan-memory pass)",
                               loc_of(func.location))
            size = 0
        self.arena = np.full(size, POISON, dtype=np.uint8)  # numpy aligns the buffer for every dtype
        self.host: dict[SSAValue, np.ndarray] = {}
        block = func.body.blocks.first
        assert block is not None
        if args is None:  # synchronisation only: poison stands in for the inputs
            args = [_poisoned(*_shape_dtype(a)) for a in block.args]
        if len(args) != len(block.args):
            raise FirError(f"@{func.sym_name.data} takes {len(block.args)} arguments, got {len(args)}",
                           loc_of(func.location))
        for a, x in zip(block.args, args):
            if (tuple(x.shape), dtypes.dtype_of_numpy(x.dtype)) != to_tt(a.type):
                raise FirError(f"argument {_name(a)} of @{func.sym_name.data} has type {a.type}, but the input is "
                               f"{x.shape} {x.dtype}", loc_of(func.location))
            self.host[a] = x
        self.slots: dict[SSAValue, _Slot] = {}
        self.instrs: list[_Instr] = []
        for pos, op in enumerate(ops):
            self.instrs.append(self._instr(pos, op))
        ret = block.last_op
        assert isinstance(ret, ReturnOp)
        self.returned = list(ret.operands)
        for v in self.returned:
            if v not in self.host and not isinstance(v.owner, StoreOp):
                raise FirError(f"@{func.sym_name.data} returns the device value {_name(v)}: results are host "
                               "copies made by plan.store", loc_of(ret.location))
        self.queues: dict[str, list[_Instr]] = {}
        for ins in self.instrs:
            self.queues.setdefault(ins.stream, []).append(ins)

    def _instr(self, pos: int, op: Operation) -> _Instr:
        stream = stream_of(op)
        if not isinstance(op, (FlowOp, CollectiveOp, SendOp, RecvOp, LoadOp, StoreOp, RecordOp, WaitOp, PositionOp)):
            raise FirError(f"'{op.name}' cannot run in a plan", loc_of(op.location))
        reads: list[_Slot] = []
        for v in op.operands:
            if isinstance(op, LoadOp):
                if v not in self.host:
                    raise FirError(f"plan.load reads {_name(v)}, which is not a host tensor (an argument or a "
                                   "plan.store result)", loc_of(op.location))
                continue
            if v not in self.slots:
                what = "a host tensor (load it with plan.load)" if v in self.host else "not a device value"
                raise FirError(f"'{op.name}' reads {_name(v)}, {what}", loc_of(op.location))
            reads.append(self.slots[v])
        write = None
        if op.results and not isinstance(op, StoreOp):
            write = self._slot(op, op.results[0])
            self.slots[op.results[0]] = write
        elif isinstance(op, StoreOp):
            # Poison until the store runs (a load of a store's host copy must wait for it).
            self.host[op.results[0]] = _poisoned(*_shape_dtype(op.results[0]))
        ins = _Instr(op, self.id, stream, pos, reads, write)
        self._meet(ins)
        if write is not None and write.hi > write.lo:
            exact = {k for k in overwritable_operands(op) if (reads[k].lo, reads[k].hi) == (write.lo, write.hi)}
            ins.self_clobber = any(r.lo < write.hi and write.lo < r.hi and k not in exact
                                   for k, r in enumerate(reads))
        return ins

    def _meet(self, ins: _Instr) -> None:
        """Set what the instruction meets on other devices (its key, a send's messages), and an SPMD op's local
        constant."""
        op = ins.op
        mine = functools.partial(on_device, op=op, meshes=self.meshes, device=self.id)
        if isinstance(op, PositionOp):
            ins.local = mine(coordinate)
        elif isinstance(op, LoadOp) and "mesh" in op.properties:
            ins.local = mine(load_box)
        elif is_local_slice(op):
            ins.local = mine(slice_box)
        elif isinstance(op, CollectiveOp):
            ins.key = ("collective", op.attr_values()["id"], mine(collective_group))
        elif isinstance(op, SendOp):
            ins.sends = [("p2p", op.attr_values()["id"], self.id, t) for t in mine(send_targets)]
        elif isinstance(op, RecvOp):
            ins.key = ("p2p", op.attr_values()["id"], mine(recv_source), self.id)

    def _slot(self, op: Operation, v: SSAValue) -> _Slot:
        shape, dtype = _shape_dtype(v)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        offset = int_value(op, OFFSET)
        where = f"device {self.id}: '{op.name}' defining {_name(v)}"
        if offset is None:
            raise FirError(f"{where} has no offset (run the plan-memory pass)", loc_of(op.location))
        if offset + nbytes > len(self.arena):
            raise FirError(f"{where} at offset {offset} needs {nbytes} bytes, past the end of the arena of "
                           f"{len(self.arena)} bytes", loc_of(op.location))
        if offset % dtype.itemsize:
            raise FirError(f"{where}: offset {offset} is not aligned for {dtypes.dtype_of_numpy(dtype)} "
                           f"({dtype.itemsize} bytes)", loc_of(op.location))
        view = self.arena[offset:offset + nbytes].view(dtype).reshape(shape)
        readonly = view.view()
        readonly.flags.writeable = False
        return _Slot(v, offset, offset + nbytes, view, readonly)


def _shape_dtype(v: SSAValue) -> tuple[tuple[int, ...], np.dtype]:
    shape, dt = to_tt(v.type)
    return shape, dtypes.numpy_dtype(dt)


def _poisoned(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A host array of the poison pattern."""
    n = int(np.prod(shape, dtype=np.int64))
    return np.full(n * dtype.itemsize, POISON, np.uint8).view(dtype).reshape(shape)


# ----------------------------------------------------------------------------------------------- engine
class _Engine:
    """The streams of every device, the events, mailboxes and rendezvous; `data=False` runs the
    synchronisation only (the dry run that computes vector clocks)."""

    def __init__(self, devices: dict[int, _Device], data: bool):
        self.devices = devices
        self.data = data
        self.heads: dict[tuple[int, str], int] = {(d, s): 0 for d, dev in devices.items() for s in dev.queues}
        self.columns = {k: i for i, k in enumerate(sorted(self.heads))}
        self.clock: dict[tuple[int, str], list[int]] = {k: [0] * len(self.columns) for k in self.heads}
        self.fired: dict[tuple[int, int], list[int]] = {}  # (device, event) -> the clock when it fired
        self.mailbox: dict[tuple, Any] = {}
        # Per (sender, receiver): the ids sent and not yet received, in the order they were sent. A receive takes
        # only the oldest, as NCCL pairs point-to-point transfers between two devices in issue order.
        self.channels: dict[tuple[int, int], deque[int]] = defaultdict(deque)
        self.senders: dict[tuple, Operation] = {}
        self.remaining = sum(len(dev.instrs) for dev in devices.values())
        # The runnable heads, kept up to date stream by stream (rescanning every stream for every instruction
        # would make a run quadratic in the devices): a stream's head alone, or waiting in a collective.
        self.streams_of: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for k in self.heads:
            self.streams_of[k[0]].append(k)
        self.single: dict[tuple[int, str], _Instr] = {}
        self.meeting: dict[tuple, dict[tuple[int, str], _Instr]] = defaultdict(dict)
        self.in_meeting: dict[tuple[int, str], tuple] = {}
        self.dirty: set[tuple[int, str]] = set(self.heads)

    def head(self, k: tuple[int, str]) -> _Instr | None:
        """The next instruction of stream k, or None when it is done."""
        queue = self.devices[k[0]].queues[k[1]]
        i = self.heads[k]
        return queue[i] if i < len(queue) else None

    def passable(self, ins: _Instr) -> bool:
        """Could `ins` run as soon as it reaches the head of its stream, as things stand (no unfired event, no
        missing message, no other device to meet)?"""
        op = ins.op
        if isinstance(op, WaitOp):
            return (ins.device, event_of(op)) in self.fired
        if isinstance(op, RecvOp):
            return self._deliverable(ins)
        return not isinstance(op, CollectiveOp) or ins.local is not None

    def _deliverable(self, ins: _Instr) -> bool:
        """Has the receive's message arrived, as the oldest one from its sender?"""
        assert ins.key is not None
        _, ident, src, dst = ins.key
        queue = self.channels.get((src, dst))
        return bool(queue) and queue[0] == ident

    def _refresh(self, k: tuple[int, str]) -> None:
        """Re-read whether stream k's head can run (alone, or as a member of a collective)."""
        self.single.pop(k, None)
        key = self.in_meeting.pop(k, None)
        if key is not None:
            del self.meeting[key][k]
            if not self.meeting[key]:
                del self.meeting[key]
        ins = self.head(k)
        if ins is None:
            return
        op = ins.op
        if isinstance(op, CollectiveOp) and ins.local is None:
            self.meeting[ins.key][k] = ins  # type: ignore[index]
            self.in_meeting[k] = ins.key  # type: ignore[assignment]
        elif self.passable(ins):
            self.single[k] = ins

    def candidates(self) -> list[tuple[_Instr, ...]]:
        """The runnable heads (a collective: all its members' heads together), sorted by device and position."""
        for k in self.dirty:
            self._refresh(k)
        self.dirty.clear()
        out: list[tuple[_Instr, ...]] = [(ins,) for ins in self.single.values()]
        for key, members in self.meeting.items():
            group = key[2]
            if len(members) == len(group) and sorted(m.device for m in members.values()) == sorted(group):
                out.append(tuple(sorted(members.values(), key=lambda m: group.index(m.device))))
        out.sort(key=lambda c: min((m.device, m.pos) for m in c) if len(c) > 1 else (c[0].device, c[0].pos))
        return out

    def run(self, chosen: tuple[_Instr, ...]) -> None:
        """Run one candidate: move its data, advance its streams and their clocks, fire events, post sends."""
        first = chosen[0]
        op = first.op
        # What is complete before each member starts: its stream's clock, joined with what it waited for.
        starts = [self.clock[(m.device, m.stream)] for m in chosen]
        received = None
        if isinstance(op, WaitOp):
            starts = [_join(starts[0], self.fired[(first.device, event_of(op))])]
        elif isinstance(op, RecvOp):
            received, sent = self.mailbox.pop(first.key)
            self.channels[(first.key[2], first.key[3])].popleft()
            starts = [_join(starts[0], sent)]
        elif isinstance(op, CollectiveOp) and first.local is None:
            starts = [_join(*starts)] * len(chosen)
        if self.data:
            self._compute(chosen, received)
        for m, start in zip(chosen, starts):
            k = (m.device, m.stream)
            # What can change: the heads of its device's streams (they advanced, or an event fired) and of the
            # devices it sends to.
            self.dirty.update(self.streams_of[m.device])
            for key in m.sends:
                self.dirty.update(self.streams_of[key[3]])
            self.heads[k] += 1
            m.start, m.index = tuple(start), self.heads[k]
            done = list(start)
            done[self.columns[k]] = m.index
            self.clock[k] = done
            if isinstance(m.op, RecordOp):
                self.fired[(m.device, event_of(m.op))] = done
            for key in m.sends:
                if key in self.mailbox:
                    raise FirError(f"device {m.device} sends a second value with id {key[1]} to device {key[3]} "
                                   "before the first is received", loc_of(m.op.location))
                payload = np.array(m.reads[0].view, copy=True) if self.data else None
                self.mailbox[key] = (payload, done)
                self.channels[(key[2], key[3])].append(key[1])
                self.senders[key] = m.op
        self.remaining -= len(chosen)

    def _compute(self, chosen: tuple[_Instr, ...], received: np.ndarray | None) -> None:
        first = chosen[0]
        op = first.op
        dev = self.devices[first.device]
        for m in chosen:
            if m.self_clobber:
                assert m.write is not None
                self.devices[m.device].arena[m.write.lo:m.write.hi] = POISON
        if isinstance(op, PositionOp):
            _write(first, np.array(first.local, dtype=first.write.view.dtype))  # type: ignore[union-attr]
        elif isinstance(op, CollectiveOp) and first.local is not None:  # B -> S: the device keeps its piece
            _write(first, np.array(_boxed(first.reads[0].readonly, first.local)))
        elif isinstance(op, CollectiveOp):
            members: list[CollectiveOp] = [m.op for m in chosen]  # type: ignore[misc]
            outs = complete_collective(members, [m.reads[0].readonly for m in chosen], first.key[2])  # type: ignore
            for m, out in zip(chosen, outs):
                _write(m, out)
        elif isinstance(op, FlowOp):
            assert first.write is not None
            try:
                out = evaluate_op(op, [r.readonly for r in first.reads])
            except KernelError as e:
                raise FirError(f"device {first.device}: {e}", loc_of(op.location)) from None
            _write(first, out)
        elif isinstance(op, LoadOp):
            x = dev.host[op.operands[0]]
            vals = op.attr_values()
            if first.local is not None:
                x = _boxed(x, first.local)
            elif "start" in vals:
                x = _boxed(x, (vals["start"], vals["limit"]))
            _write(first, x)
        elif isinstance(op, StoreOp):
            dev.host[op.results[0]] = np.array(first.reads[0].view, copy=True)
        elif isinstance(op, RecvOp):
            assert received is not None
            _write(first, received)

    def stuck(self) -> FirError:
        """The deadlock error: every stream head that cannot run."""
        parts, first = [], None
        for (d, s) in sorted(self.heads):
            ins = self.head((d, s))
            if ins is None:
                continue
            first = first or ins
            op = ins.op
            what = op.name
            if isinstance(op, WaitOp):
                what += f" (event {event_of(op)}, not recorded)"
            elif isinstance(op, RecvOp):
                what += f" (id {ins.key[1]} from device {ins.key[2]}"  # type: ignore[index]
                queue = self.channels.get((ins.key[2], d))  # type: ignore[index]
                if queue and ins.key in self.mailbox:
                    what += f", behind id {queue[0]}, which device {ins.key[2]} sent first: transfers between two " \
                            "devices pair in the order they are issued"  # type: ignore[index]
                what += ")"
            elif isinstance(op, CollectiveOp):
                what += f" (id {ins.key[1]}, group {list(ins.key[2])})"  # type: ignore[index]
            parts.append(f"device {d} stream {s} at {what}")
        assert first is not None
        return FirError("deadlock: " + "; ".join(parts), loc_of(first.op.location))

    def finish(self) -> None:
        """Raise for a send nobody received."""
        if self.mailbox:
            key = next(iter(self.mailbox))
            raise FirError(f"device {key[2]} sent a value (id {key[1]}) to device {key[3]} that never received it",
                           loc_of(self.senders[key].location))


def _boxed(x: np.ndarray, box: tuple[Sequence[int], Sequence[int]]) -> np.ndarray:
    """The part of x in the box (start, limit)."""
    return x[tuple(slice(a, b) for a, b in zip(*box))]


def _join(*clocks: Sequence[int]) -> list[int]:
    """The elementwise maximum of vector clocks."""
    return [max(col) for col in zip(*clocks)]


def _write(ins: _Instr, out: np.ndarray) -> None:
    """Copy an instruction's result into its view of the arena."""
    slot = ins.write
    assert slot is not None
    if tuple(out.shape) != slot.view.shape or out.dtype != slot.view.dtype:
        raise FirError(f"device {ins.device}: '{ins.op.name}' produced {tuple(out.shape)} {out.dtype}, but its type "
                       f"is {slot.value.type}", loc_of(ins.op.location))
    np.copyto(slot.view, out)  # a fresh array (evaluate, collectives, copies): safe even in place


# ----------------------------------------------------------------------------------------------- choosing
class _Adversary:
    """Chooses the head most likely to expose missing synchronisation (see the module docstring)."""

    def __init__(self, devices: dict[int, _Device], columns: dict[tuple[int, str], int], rng: np.random.Generator):
        self.rng = rng
        self.done: set[_Instr] = set()
        self.valid: set[_Slot] = set()  # values whose bytes hold them now
        self.pending_reads: dict[_Slot, int] = {}  # reads not run yet, by value (0 for a value nothing reads)
        for dev in devices.values():
            self.pending_reads.update(dict.fromkeys(dev.slots.values(), 0))
            for ins in dev.instrs:
                for r in ins.reads:
                    self.pending_reads[r] += 1
            self._analyse(dev, columns)

    @staticmethod
    def _analyse(dev: _Device, columns: dict[tuple[int, str], int]) -> None:
        """Static races (by the dry run's clocks) and overlaps of each instruction of one device (vectorised over
        the other instructions: plans have thousands)."""
        instrs = dev.instrs
        n = len(instrs)
        slots = list(dev.slots.values())
        slo = np.array([x.lo for x in slots], dtype=np.int64)
        shi = np.array([x.hi for x in slots], dtype=np.int64)
        # Each instruction's written range ([0, 0) when none) and every read as (lo, hi, reader).
        wlo = np.array([i.write.lo if i.write else 0 for i in instrs], dtype=np.int64)
        whi = np.array([i.write.hi if i.write else 0 for i in instrs], dtype=np.int64)
        reads = [(r.lo, r.hi, k) for k, i in enumerate(instrs) for r in i.reads if r.hi > r.lo]
        rlo, rhi, rown = (np.array(col, dtype=np.int64) for col in zip(*reads)) if reads else \
            (np.zeros(0, dtype=np.int64),) * 3
        stream_id = {s: k for k, s in enumerate(sorted(dev.queues))}
        stream = np.array([stream_id[i.stream] for i in instrs], dtype=np.int64)
        start = np.array([i.start for i in instrs], dtype=np.int64).reshape(n, len(columns))  # n may be 0
        for k, a in enumerate(instrs):
            if a.write is not None:
                hit = np.flatnonzero((slo < a.write.hi) & (a.write.lo < shi) & (slo < shi))
                a.clobbers = [slots[j] for j in hit.tolist() if slots[j] is not a.write]
            touch = np.zeros(n, dtype=bool)
            if a.write is not None and a.write.hi > a.write.lo:
                lo, hi = a.write.lo, a.write.hi
                touch |= (wlo < hi) & (lo < whi)  # write after write
                touch[rown[(rlo < hi) & (lo < rhi)]] = True  # read after write
            for r in a.reads:
                touch |= (wlo < r.hi) & (r.lo < whi)  # write after read
            touch[:k + 1] = False  # later-issued only
            # Not ordered: b started before a completed (the dry run's clocks), on another stream.
            touch &= (stream != stream[k]) & (start[:, columns[(a.device, a.stream)]] < a.index)
            a.racy = [instrs[j] for j in np.flatnonzero(touch).tolist()]

    def harmful(self, cand: tuple[_Instr, ...]) -> bool:
        """Would running it now read bytes not holding an operand, or destroy a value still to be read?"""
        for ins in cand:
            if any(r not in self.valid for r in ins.reads):
                return True
            for s in ins.clobbers:
                if s in self.valid and self.pending_reads[s] > 0:
                    mine = sum(1 for m in cand for r in m.reads if r is s)  # an in-place op reads it itself
                    if self.pending_reads[s] > mine:
                        return True
        return False

    def leads_to_harm(self, engine: _Engine, ins: _Instr) -> bool:
        """Would running ins's stream on, without waiting for anything, soon reach a write over a value still to
        be read? Delaying producers (below) never exposes such a write, so its stream is hurried instead."""
        queue = engine.devices[ins.device].queues[ins.stream]
        start = engine.heads[(ins.device, ins.stream)]
        reads: dict[_Slot, int] = {}  # the reads the stream itself makes on its way
        for x in queue[start:start + LOOKAHEAD]:
            if x is not ins and not engine.passable(x):
                return False
            for s in x.clobbers:
                if s in self.valid and self.pending_reads[s] > reads.get(s, 0) + sum(r is s for r in x.reads):
                    return True
            for r in x.reads:
                reads[r] = reads.get(r, 0) + 1
        return False

    def choose(self, cands: list[tuple[_Instr, ...]], engine: _Engine) -> tuple[_Instr, ...]:
        """The candidate to run next."""
        best, best_key = cands[0], None
        noise = self.rng.random(len(cands))
        for c, r in zip(cands, noise):
            racy = any(b not in self.done for m in c for b in m.racy)
            soon = len(c) == 1 and self.leads_to_harm(engine, c[0])
            key = (self.harmful(c), soon, not racy, max(m.pos for m in c), r)
            if best_key is None or key > best_key:
                best, best_key = c, key
        return best

    def ran(self, cand: tuple[_Instr, ...]) -> None:
        """Update what the bytes hold after a candidate ran."""
        for ins in cand:
            self.done.add(ins)
            for r in ins.reads:
                self.pending_reads[r] -= 1
            if ins.write is not None:
                self.valid.difference_update(ins.clobbers)
                self.valid.add(ins.write)


def _synchronise(devices: dict[int, _Device]) -> dict[tuple[int, str], int]:
    """Run the plans' synchronisation alone (no data, in order), which sets every instruction's vector clock;
    returns the clocks' columns."""
    engine = _Engine(devices, data=False)
    while engine.remaining:
        cands = engine.candidates()
        if not cands:
            raise engine.stuck()
        engine.run(cands[0])
    return engine.columns


class PlanOrder:
    """Happens-before over all the device plans of one program: stream order, events, and (unlike
    fir.planning.plan_ir.HappensBefore, which sees one device) the order collectives and send/recv pairs give."""

    def __init__(self, module: ModuleOp, entry: str):
        plans, _ = entry_plans(module, entry)
        devices = _devices(module, plans, None)
        self._columns = _synchronise(devices)
        self._instrs = {(d, ins.op): ins for d, dev in devices.items() for ins in dev.instrs}
        self._first = {f: d for d, f in reversed(list(plans.items()))}

    def before(self, a: Operation, b: Operation, a_device: int | None = None, b_device: int | None = None) -> bool:
        """True when instruction `a` (on `a_device`) is complete before instruction `b` (on `b_device`) starts, in
        every legal interleaving; a device left out is the first that runs the instruction's plan."""
        x = self._instrs[(self._device(a, a_device), a)]
        y = self._instrs[(self._device(b, b_device), b)]
        return y.start[self._columns[(x.device, x.stream)]] >= x.index

    def _device(self, op: Operation, device: int | None) -> int:
        if device is not None:
            return device
        func = op.parent_op()
        assert isinstance(func, FuncOp)
        return self._first[func]


# ----------------------------------------------------------------------------------------------- entry point
def _devices(module: ModuleOp, plans: dict[int, FuncOp], args: dict[int, list[np.ndarray]] | None
             ) -> dict[int, _Device]:
    """Every device of the plans (each distinct plan verified once), with its arguments (poison when None)."""
    for f in set(plans.values()):
        verify_plan(f)
    meshes = meshes_of(module)
    return {d: _Device(d, f, None if args is None else args[d], meshes) for d, f in plans.items()}


def device_inputs(module: ModuleOp, entry: str, inputs: Sequence[np.ndarray], n_devices: int | None = None
                  ) -> tuple[dict[int, FuncOp], bool, dict[int, list[np.ndarray]]]:
    """The plans of logical function @entry by device, whether they are device programs, and each device's
    arguments: the logical inputs scattered by their SBP (a single-device plan takes them as they are)."""
    plans, partitioned = entry_plans(module, entry)
    if not partitioned:
        return plans, False, {0: list(inputs)}
    programs = list(plans.items())
    name = entry.lstrip("@")
    check_programs(module, programs, name, n_devices if n_devices is not None else devices_needed(module))
    return plans, True, scatter_inputs(module, programs, inputs)


def logical_outputs(module: ModuleOp, entry: str, plans: dict[int, FuncOp], partitioned: bool,
                    outs: dict[int, list[np.ndarray]]) -> list[np.ndarray]:
    """The logical results of @entry from each device's results (gathered by their SBP)."""
    if not partitioned:
        return outs[0]
    return gather_results(module, entry.lstrip("@"), list(plans.items()), outs)


def execute_plan(module: ModuleOp, entry: str, inputs: Sequence[np.ndarray], n_devices: int | None = None,
                 interleaving: str = "adversarial", seed: int = 0, trace: bool = False) -> PlanRun:
    """Run the plans of logical function @entry on numpy arenas in the given interleaving; returns the logical
    results (and a wall-clock trace when asked)."""
    if interleaving not in INTERLEAVINGS:
        raise FirError(f"unknown interleaving \"{interleaving}\" (choose {', '.join(INTERLEAVINGS)})")
    plans, partitioned, device_args = device_inputs(module, entry, inputs, n_devices)
    devices = _devices(module, plans, device_args)
    rng = np.random.default_rng(seed)
    adversary = None
    if interleaving == "adversarial":
        adversary = _Adversary(devices, _synchronise(devices), rng)
    engine = _Engine(devices, data=True)
    result = PlanRun(outputs=[], arena_size={d: len(dev.arena) for d, dev in devices.items()})
    t0 = time.perf_counter()
    with progress.task("run", total=engine.remaining) as step:
        while engine.remaining:
            cands = engine.candidates()
            if not cands:
                raise engine.stuck()
            if adversary is not None:
                chosen = adversary.choose(cands, engine)
            elif interleaving == "random":
                chosen = cands[int(rng.integers(len(cands)))]
            else:
                chosen = cands[0]
            start = time.perf_counter() - t0
            engine.run(chosen)
            end = time.perf_counter() - t0
            if adversary is not None:
                adversary.ran(chosen)
            for m in chosen:
                result.order.append((m.device, m.stream, m.pos))
                if trace:
                    result.events.append(_trace_event(m, start, end))
            step(len(chosen))
    engine.finish()
    outs = {d: [dev.host[v] for v in dev.returned] for d, dev in devices.items()}
    result.outputs = logical_outputs(module, entry, plans, partitioned, outs)
    return result


def _trace_event(ins: _Instr, start: float, end: float) -> TraceEvent:
    op = ins.op
    if isinstance(op, (RecordOp, WaitOp)):
        name = f"{op.name} event {event_of(op)}"
    elif op.results:
        name = f"{op.name} {_name(op.results[0])}"
    else:
        name = op.name
    args: dict[str, Any] = {}
    for key in (MICRO, OFFSET):
        value = int_value(op, key)
        if value is not None:
            args[key] = value
    return TraceEvent(ins.device, ins.stream, name, start, end, args)


__all__ = ["PlanRun", "PlanOrder", "execute_plan", "INTERLEAVINGS", "POISON"]

"""Lower the plans of a program to what a GPU runtime issues: kernel launches, host copies, box copies and
group reductions on streams, and events. Virtual devices sharing one GPU synchronise through these events.

Each device's plan keeps its streams and events. What the plan leaves to the runtime becomes explicit:
- a collective runs on its group leader's (first member's) comm stream, after an event from every other
  member's comm stream, as a group reduction into the leader's result (all_reduce; reduce_scatter reduces
  into a scratch buffer) and box copies between the members' buffers; every member's comm stream then waits
  for the leader's "done" event, so a collective completes on all members together;
- a send records "ready" on the sender's send stream; the matching receive waits for it, copies the
  sender's buffer into its own on the receiver's recv stream and records "done", which the sender's send
  stream waits for, so the sender keeps its buffer until the copy has read it, as the plan assumes.

`lower` returns the actions in one host issue order: every event is recorded before it is waited on, which
CUDA needs (a wait on an event not recorded yet waits for nothing). The actions are issued per (device, stream)
in plan order; a wait is issued once its record is, a collective once all members reach it, a receive once its
send is issued. fir.runtime.cuda_backend issues them through pycuda; `run_actions` executes them with numpy in
any order the streams and events allow, so the lowering is tested where there is no GPU.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from xdsl.dialects.func import FuncOp
from xdsl.ir import BlockArgument, Operation, SSAValue

from fir.dialects import dtypes
from fir.codegen.cuda_program import DeviceCode, Launch, device_code, is_launched, offset_of
from fir.codegen.kernel_ir import Kernel
from fir.codegen.transfer import box_copy_kernel, group_reduce_kernel
from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.base import to_tt
from fir.dialects.comm import CollectiveOp, RecvOp, SendOp
from fir.dialects.plan import LoadOp, RecordOp, StoreOp, WaitOp
from fir.dialects.sbp import PositionOp
from fir.distribution.expansion import collective_group, is_local_slice, load_box, recv_source, send_targets
from fir.distribution.layout import piece
from fir.planning.plan_ir import event_of, instructions, stream_of
from fir.runtime import collectives
from fir.runtime.virtual_devices import check_members
from fir.runtime.interpreter import evaluate_op
from fir.distribution.sbp import Mesh, Partial, Split

Stream = tuple[int, str]  # (device, stream name)


@dataclass(frozen=True)
class Buf:
    """A tensor in device memory: an arena (`space` = device id) or a scratch buffer (`space` = -1 - index)."""

    space: int
    offset: int
    shape: tuple[int, ...]
    dtype: str

    def nbytes(self) -> int:
        """Bytes of the tensor."""
        return int(np.prod(self.shape, dtype=np.int64)) * dtypes.numpy_dtype(self.dtype).itemsize


@dataclass(frozen=True)
class LaunchOp:
    """A flow instruction's kernel: out, then the operands, then the device's scalar arguments (SPMD plans)."""

    stream: Stream
    op: Operation
    launch: Launch
    bufs: tuple[Buf, ...]
    values: tuple[int, ...] = ()


@dataclass(frozen=True)
class HostToDevice:
    """Copy (a box of) host argument `arg` of a device into `dst`."""

    stream: Stream
    dst: Buf
    arg: int
    box: tuple[tuple[int, int], ...] | None


@dataclass(frozen=True)
class DeviceToHost:
    """Copy `src` out as the host value `value` of a device."""

    stream: Stream
    src: Buf
    value: SSAValue


@dataclass(frozen=True)
class BoxCopy:
    """dst[dst_start + c] = src[src_start + c] over the box."""

    stream: Stream
    src: Buf
    src_start: tuple[int, ...]
    dst: Buf
    dst_start: tuple[int, ...]
    box: tuple[int, ...]

    def kernel(self, name: str) -> Kernel:
        """The CUDA kernel of the copy."""
        return box_copy_kernel(name, self.src.dtype, self.src.shape, self.src_start, self.dst.shape, self.dst_start,
                               self.box)


@dataclass(frozen=True)
class GroupReduce:
    """out = ins[0] op ins[1] op ... (sum or max), in group order."""

    stream: Stream
    out: Buf
    ins: tuple[Buf, ...]
    op: str

    def kernel(self, name: str) -> Kernel:
        """The CUDA kernel of the reduction."""
        n = int(np.prod(self.out.shape, dtype=np.int64))
        return group_reduce_kernel(name, self.out.dtype, n, len(self.ins), self.op)


@dataclass(frozen=True)
class Record:
    stream: Stream
    event: int


@dataclass(frozen=True)
class Wait:
    stream: Stream
    event: int


Action = LaunchOp | HostToDevice | DeviceToHost | BoxCopy | GroupReduce | Record | Wait


@dataclass
class Lowered:
    """A program's actions in issue order, with what executing them needs."""

    actions: list[Action] = field(default_factory=list)
    codes: dict[int, DeviceCode] = field(default_factory=dict)
    scratch: list[int] = field(default_factory=list)  # bytes of each scratch buffer
    events: int = 0  # event ids are 0 .. events - 1
    returned: dict[int, list[SSAValue]] = field(default_factory=dict)  # host values each device returns


def _buf(v: SSAValue, device: int) -> Buf:
    shape, dt = to_tt(v.type)
    return Buf(device, offset_of(v), shape, dt)


class _Lowering:
    def __init__(self, plans: dict[int, FuncOp], meshes: dict[str, Mesh]):
        self.out = Lowered()
        self.meshes = meshes
        self.event_ids: dict[tuple[int, int], int] = {}
        self.queues: dict[Stream, deque[Operation]] = {}
        self.arg_index: dict[tuple[int, SSAValue], int] = {}
        codes: dict[FuncOp, DeviceCode] = {}  # an SPMD plan's code serves every device of its class
        for d, func in plans.items():
            if func not in codes:
                codes[func] = device_code(func)
            self.out.codes[d] = codes[func]
            self.arg_index.update({(d, a): i for i, a in enumerate(func.body.block.args)})
            for op in instructions(func):
                self.queues.setdefault((d, stream_of(op)), deque()).append(op)
            ret = func.body.block.last_op
            self.out.returned[d] = list(ret.operands) if ret is not None else []
        self.recorded: set[int] = set()
        self.sent: dict[tuple[int, int, int], tuple[SendOp, int]] = {}  # (id, from, to) -> (send, ready event)
        self.blocked: dict[Stream, int] = {}  # send streams waiting for their receives: how many are left

    def event(self, device: int, plan_event: int) -> int:
        key = (device, plan_event)
        if key not in self.event_ids:
            self.event_ids[key] = self.new_event()
        return self.event_ids[key]

    def new_event(self) -> int:
        self.out.events += 1
        return self.out.events - 1

    def emit(self, action: Action) -> None:
        self.out.actions.append(action)
        if isinstance(action, Record):
            self.recorded.add(action.event)

    def run(self) -> Lowered:
        while any(self.queues.values()):
            progress = False
            for key in sorted(self.queues):
                q = self.queues[key]
                while q and key not in self.blocked and self.try_issue(key, q[0]):
                    q.popleft()
                    progress = True
            if not progress:
                heads = [f"device {d} stream {s} at {q[0].name}" for (d, s), q in sorted(self.queues.items()) if q]
                first = next(q[0] for q in self.queues.values() if q)
                raise FirError("the plans cannot be issued (they would deadlock): " + "; ".join(heads),
                               loc_of(first.location))
        return self.out

    def try_issue(self, key: Stream, op: Operation) -> bool:
        d, stream = key
        if isinstance(op, RecordOp):
            self.emit(Record(key, self.event(d, event_of(op))))
        elif isinstance(op, WaitOp):
            e = self.event(d, event_of(op))
            if e not in self.recorded:
                return False
            self.emit(Wait(key, e))
        elif is_launched(op):
            launch = self.out.codes[d].launches[op]
            if not launch.skip:
                bufs = (_buf(op.results[0], d), *(_buf(v, d) for v in op.operands))
                values = tuple(r.value(self.meshes, d) for r in launch.rank_args)
                self.emit(LaunchOp(key, op, launch, bufs, values))
        elif isinstance(op, LoadOp):
            vals = op.attr_values()
            box = tuple(zip(vals["start"], vals["limit"])) if "start" in vals else None
            if "mesh" in vals:  # an SPMD plan's load of the device's piece
                box = tuple(zip(*load_box(op, self.meshes, d)))
            self.emit(HostToDevice(key, _buf(op.results[0], d), self.arg_index[(d, op.operands[0])], box))
        elif isinstance(op, StoreOp):
            self.emit(DeviceToHost(key, _buf(op.operands[0], d), op.results[0]))
        elif isinstance(op, SendOp):
            vals = op.attr_values()
            peers = send_targets(op, self.meshes, d)
            ready = self.new_event()
            self.emit(Record(key, ready))
            for peer in peers:
                self.sent[(vals["id"], d, peer)] = (op, ready)
            if peers:
                self.blocked[key] = len(peers)
        elif isinstance(op, RecvOp):
            return self.receive(key, op)
        elif isinstance(op, CollectiveOp):
            return self.collective(key, op)
        else:
            raise FirError(f"'{op.name}' cannot run on the GPU backend", loc_of(op.location))
        return True

    def receive(self, key: Stream, op: RecvOp) -> bool:
        d = key[0]
        vals = op.attr_values()
        sk = (vals["id"], recv_source(op, self.meshes, d), d)
        if sk not in self.sent:
            return False
        send, ready = self.sent.pop(sk)
        if send.operands[0].type != op.results[0].type:
            raise FirError(f"device {d} receives {op.results[0].type} (id {sk[0]}) but device {sk[1]} sends "
                           f"{send.operands[0].type}", loc_of(op.location))
        src, dst = _buf(send.operands[0], sk[1]), _buf(op.results[0], d)
        zeros = (0,) * len(dst.shape)
        done = self.new_event()
        self.emit(Wait(key, ready))
        self.emit(BoxCopy(key, src, zeros, dst, zeros, dst.shape))
        self.emit(Record(key, done))
        send_stream = (sk[1], "send")
        self.emit(Wait(send_stream, done))  # the send completes with its receives
        self.blocked[send_stream] -= 1
        if not self.blocked[send_stream]:
            del self.blocked[send_stream]
        return True

    def collective(self, key: Stream, op: CollectiveOp) -> bool:
        d = key[0]
        group = collective_group(op, self.meshes, d)
        ident = op.attr_values()["id"]
        members: list[CollectiveOp] = []
        for m in group:
            q = self.queues.get((m, "comm"))
            head = q[0] if q else None
            if not isinstance(head, CollectiveOp) or head.attr_values().get("id") != ident:
                return False
            members.append(head)
        leader = (group[0], "comm")
        for m in group[1:]:
            e = self.new_event()
            self.emit(Record((m, "comm"), e))
            self.emit(Wait(leader, e))
        ins = [_buf(o.operands[0], m) for o, m in zip(members, group)]
        outs = [_buf(o.results[0], m) for o, m in zip(members, group)]
        # Members of another group with this id, or mismatched pieces, would copy out of bounds on the GPU.
        for o, m in zip(members, group):
            theirs = collective_group(o, self.meshes, m)
            if theirs != group:
                raise FirError(f"the members of collective id {ident} name different groups: device {d} "
                               f"{list(group)}, device {m} {list(theirs)}", loc_of(o.location))
        check_members(members, [(b.shape, dtypes.numpy_dtype(b.dtype)) for b in ins], group)
        self.transfer(leader, op, ins, outs)
        done = self.new_event()
        self.emit(Record(leader, done))
        for m in group[1:]:
            self.emit(Wait((m, "comm"), done))
        for m in group:
            if m != d:  # the caller pops this member's own head
                self.queues[(m, "comm")].popleft()
        return True

    def scratch(self, like: Buf) -> Buf:
        self.out.scratch.append(like.nbytes())
        return Buf(-len(self.out.scratch), 0, like.shape, like.dtype)

    def transfer(self, stream: Stream, op: CollectiveOp, ins: list[Buf], outs: list[Buf]) -> None:
        """The collective as reductions and box copies on one stream (fir.runtime.collectives' semantics)."""
        _, src, dst = op.transition()
        p = len(ins)
        zeros = (0,) * len(ins[0].shape)
        kind = type(op).KIND
        if kind == "all_reduce":
            assert isinstance(src, Partial)
            self.emit(GroupReduce(stream, outs[0], tuple(ins), src.op))
            for o in outs[1:]:
                self.emit(BoxCopy(stream, outs[0], zeros, o, zeros, o.shape))
        elif kind == "reduce_scatter":
            assert isinstance(src, Partial) and isinstance(dst, Split)
            total = self.scratch(ins[0])
            self.emit(GroupReduce(stream, total, tuple(ins), src.op))
            for k, o in enumerate(outs):
                start = list(zeros)
                start[dst.axis] = piece(total.shape[dst.axis], p, k)[0]
                self.emit(BoxCopy(stream, total, tuple(start), o, zeros, o.shape))
        elif kind == "all_gather":
            assert isinstance(src, Split)
            for o in outs:
                at = 0
                for i in ins:
                    start = list(zeros)
                    start[src.axis] = at
                    self.emit(BoxCopy(stream, i, zeros, o, tuple(start), i.shape))
                    at += i.shape[src.axis]
        elif kind == "all_to_all":
            assert isinstance(src, Split) and isinstance(dst, Split)
            for k, o in enumerate(outs):
                at = 0
                for i in ins:
                    off, size = piece(i.shape[dst.axis], p, k)
                    s_start, d_start, box = list(zeros), list(zeros), list(i.shape)
                    s_start[dst.axis], box[dst.axis] = off, size
                    d_start[src.axis] = at
                    self.emit(BoxCopy(stream, i, tuple(s_start), o, tuple(d_start), tuple(box)))
                    at += box[src.axis]
        elif kind == "slice":
            assert isinstance(dst, Split)
            for k, (i, o) in enumerate(zip(ins, outs)):
                start = list(zeros)
                start[dst.axis] = piece(i.shape[dst.axis], p, k)[0]
                self.emit(BoxCopy(stream, i, tuple(start), o, zeros, o.shape))
        else:
            raise FirError(f"the GPU backend has no lowering of '{op.name}'", loc_of(op.location))


def lower(plans: dict[int, FuncOp], meshes: dict[str, Mesh] | None = None) -> Lowered:
    """The actions of the plans of one program (device -> plan; an SPMD plan maps from each device of its class,
    whose coordinates come from `meshes`), in a host issue order."""
    return _Lowering(plans, meshes or {}).run()


# ----------------------------------------------------------------------------------------------- numpy execution
class _Memory:
    """Arenas and scratch buffers as numpy byte arrays, poisoned like the numpy plan executor's."""

    def __init__(self, lowered: Lowered):
        self.spaces: dict[int, np.ndarray] = {}
        for d, code in lowered.codes.items():
            self.spaces[d] = np.full(max(1, code.arena_size), 0xFF, np.uint8)
        for k, n in enumerate(lowered.scratch):
            self.spaces[-1 - k] = np.full(max(1, n), 0xFF, np.uint8)

    def view(self, b: Buf) -> np.ndarray:
        """The tensor's bytes as an array of its dtype and shape."""
        n = b.nbytes()
        return self.spaces[b.space][b.offset:b.offset + n].view(dtypes.numpy_dtype(b.dtype)).reshape(b.shape)


def _box(start: Sequence[int], box: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(s, s + n) for s, n in zip(start, box))


ORDERS = ("issue", "random", "latest")


def run_actions(lowered: Lowered, inputs: dict[int, list[np.ndarray]], order: str = "issue", seed: int = 0
                ) -> dict[int, list[np.ndarray]]:
    """Execute the actions with numpy: each stream in issue order, a wait only after its event's record has
    run. Among the ready streams, `order` picks the earliest-issued head ("issue"), a seeded random one, or the
    latest-issued one ("latest", which delays producers as long as the events allow: a missing event shows
    as poison or stale bytes). Returns each device's returned host values."""
    mem = _Memory(lowered)
    host: dict[tuple[int, SSAValue], np.ndarray] = {}
    streams: dict[Stream, deque[tuple[int, Action]]] = {}
    for i, a in enumerate(lowered.actions):
        streams.setdefault(a.stream, deque()).append((i, a))
    done_events: set[int] = set()
    rng = np.random.default_rng(seed)
    while any(streams.values()):
        ready = [q[0] for q in streams.values()
                 if q and (not isinstance(q[0][1], Wait) or q[0][1].event in done_events)]
        if not ready:
            raise FirError("the lowered actions deadlock (a wait whose event is never recorded)")
        ready.sort(key=lambda ia: ia[0])
        pick = {"issue": 0, "latest": len(ready) - 1}.get(order)
        _, a = ready[pick if pick is not None else int(rng.integers(len(ready)))]
        streams[a.stream].popleft()
        if isinstance(a, Record):
            done_events.add(a.event)
        elif isinstance(a, LaunchOp):
            np.copyto(mem.view(a.bufs[0]), launched(a.op, [np.array(mem.view(b)) for b in a.bufs[1:]], a.values))
        elif isinstance(a, HostToDevice):
            x = inputs[a.stream[0]][a.arg]
            if a.box is not None:
                x = x[tuple(slice(s, e) for s, e in a.box)]
            np.copyto(mem.view(a.dst), x)
        elif isinstance(a, DeviceToHost):
            host[(a.stream[0], a.value)] = np.array(mem.view(a.src))
        elif isinstance(a, BoxCopy):
            part = np.array(mem.view(a.src)[_box(a.src_start, a.box)])
            mem.view(a.dst)[_box(a.dst_start, a.box)] = part
        elif isinstance(a, GroupReduce):
            total = collectives.all_reduce([np.array(mem.view(b)) for b in a.ins], a.op)[0]
            np.copyto(mem.view(a.out), total)
    return returned_values(lowered, host, inputs)


def launched(op: Operation, ins: list[np.ndarray], values: Sequence[int] = ()) -> np.ndarray:
    """What a kernel launch computes from its operands and the device's scalar arguments, with numpy."""
    shape, dt = to_tt(op.results[0].type)
    if isinstance(op, PositionOp):
        return np.array(values[0], dtype=dtypes.numpy_dtype(dt))
    if is_local_slice(op):  # the device's piece, from its start along the split axis
        axis = op.transition()[2].axis  # type: ignore[attr-defined]
        index = [slice(None)] * ins[0].ndim
        index[axis] = slice(values[0], values[0] + shape[axis])
        return ins[0][tuple(index)]
    return evaluate_op(op, ins)


def returned_values(lowered: Lowered, host: dict[tuple[int, SSAValue], np.ndarray],
                    inputs: dict[int, list[np.ndarray]]) -> dict[int, list[np.ndarray]]:
    """Each device's results: the host copies plan.store made (by device and value: devices of a class share an
    SPMD plan's values), or an argument returned as it is."""
    return {d: [np.array(inputs[d][v.index]) if isinstance(v, BlockArgument) else host[(d, v)] for v in vs]
            for d, vs in lowered.returned.items()}


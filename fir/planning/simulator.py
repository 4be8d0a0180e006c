"""Replay the execution plans of one program on a hardware model and time them.

Every device plan (`schedule` made it; fir/dialects/plan.py states the semantics) is a set of in-order
streams. An SPMD plan (one per class of devices) is replayed once, for its class's first device: a collective
starts when every program of its mesh that runs it has reached it (their groups run in lockstep), and a
receive pairs with the send of the program holding its first device's peer; every device of the class gets
the statistics of the first. The replay gives each instruction a start and an end: a stream runs one instruction at a time in
issue order; `plan.wait` holds its stream until the event's `plan.record` is reached; a collective starts
when every member of its group has reached it and all members end together; `comm.send` starts when its
stream is free, and the matching `comm.recv` ends no earlier than the send. Times only ever take maxima and
sums of earlier times, so the replay resolves instructions as soon as what they wait for is known, in any
order, and reaches the same times an event queue would. docs/simulator.md describes the model and its
limits.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Operation, SSAValue

from fir import progress
from fir.planning import cost_model
from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.comm import CollectiveOp, RecvOp, SendOp
from fir.dialects.plan import ARENA_SIZE, MICRO, OFFSET, STREAMS, LoadOp, RecordOp, StoreOp, WaitOp
from fir.dialects.dtypes import nbytes
from fir.dialects.sbp import meshes_of
from fir.distribution.placement import DEVICES, OF, device_count, program_devices, symbol_name
from fir.planning.hardware import Hardware, load_hardware
from fir.planning.plan_ir import entry_plans, event_of, instructions, is_plan, stream_of, verify_plan
from fir.planning.trace import TraceEvent

Durations = Callable[[Operation, int], float]

SERIAL = "serial"  # the one queue of a device when serial=True


@dataclass
class DeviceStats:
    """What the replay measured on one device (times in seconds, sizes in bytes)."""

    device: int
    busy: dict[str, float]  # stream -> time spent executing instructions
    compute_idle_fraction: float  # 1 - compute busy / step time
    end_time: float  # when the device's last instruction ends
    arena_size: int | None  # the plan's `arena_size` (plan-memory), when present
    peak_live_bytes: int  # the largest total of device buffers live at one simulated instant
    max_micro_in_flight: int  # the most micro-batches in flight at one instant (0 without micro tags)


@dataclass
class SimResult:
    """The replay of all device plans of one logical function."""

    entry: str
    step_time: float  # seconds from the first instruction's start to the last one's end
    serial: bool
    devices: dict[int, DeviceStats]
    bubble_fraction: float | None  # pipeline plans: mean over devices of idle compute time / step time
    events: list[TraceEvent] = field(default_factory=list)
    hardware: str | None = None

    @property
    def peak_memory(self) -> dict[int, int]:
        """Per device: the arena size when planned, else the peak of live buffer bytes."""
        return {d: s.arena_size if s.arena_size is not None else s.peak_live_bytes for d, s in self.devices.items()}

    def trace_metadata(self) -> dict[str, Any]:
        """What write_trace should record about this simulation."""
        return {"simulated": True, "entry": self.entry, "hardware": self.hardware, "serial": self.serial,
                "step_time_s": self.step_time}


@dataclass
class _Spmd:
    """How the SPMD plans (by first device) meet: the programs of each collective, the sending program of each
    receive, the receiving programs of each send."""

    members: dict[int, tuple[int, ...]]  # collective id -> the first devices of the programs that run it
    source: dict[tuple[int, int], int]  # (transfer id, receiving program) -> sending program
    sinks: dict[tuple[int, int], list[int]]  # (transfer id, sending program) -> receiving programs

    @staticmethod
    def of(plans: dict[int, FuncOp], meshes: dict) -> _Spmd:
        """The meetings of SPMD plans keyed by their first devices."""
        from fir.distribution.expansion import source

        owner = {d: first for first, f in plans.items() for d in program_devices(f)}
        members: dict[int, set[int]] = defaultdict(set)
        src: dict[tuple[int, int], int] = {}
        sinks: dict[tuple[int, int], list[int]] = defaultdict(list)
        for first, f in plans.items():
            for op in instructions(f):
                if isinstance(op, CollectiveOp) and op.KIND != "slice":
                    members[op.attr_values()["id"]].add(first)
                elif isinstance(op, RecvOp):
                    v = op.attr_values()
                    peer = source(meshes[v["mesh"].name], meshes[v["to_mesh"].name], first)
                    if peer not in owner:
                        raise FirError(f"device {first} receives from device {peer}, which runs no plan",
                                       loc_of(op.location))
                    src[(v["id"], first)] = owner[peer]
                    sinks[(v["id"], owner[peer])].append(first)
        return _Spmd({k: tuple(sorted(v)) for k, v in members.items()}, src, sinks)


@dataclass(eq=False)
class _Instr:
    op: Operation
    device: int
    stream: str  # the stream the plan names
    duration: float
    key: tuple | None = None  # collectives and send/recv: what matches it on other devices
    also: tuple[tuple, ...] = ()  # an SPMD send: the keys of its other receiving programs
    ready: float = math.nan  # when it reached the front of its queue
    start: float = math.nan
    end: float = math.nan
    busy_from: float = math.nan  # where its busy time starts (a recv waiting for its send is idle)


@dataclass
class _Queue:
    device: int
    name: str
    instrs: list[_Instr] = field(default_factory=list)
    next: int = 0
    free: float = 0.0

    def head(self) -> _Instr | None:
        return self.instrs[self.next] if self.next < len(self.instrs) else None

    def finish(self, ins: _Instr, start: float, end: float, busy_from: float | None = None) -> None:
        ins.ready, ins.start, ins.end = self.free, start, end
        ins.busy_from = start if busy_from is None else min(max(busy_from, start), end)
        self.free = end
        self.next += 1


def _cost_durations(hw: Hardware) -> Durations:
    """Instruction times from the cost model on hardware `hw`."""
    return lambda op, device: cost_model.instruction_time(op, hw, device)


def _attr_int(op: Operation, name: str) -> int:
    return op.attr_values()[name]  # type: ignore[attr-defined]


def _build(plans: dict[int, FuncOp], serial: bool, durations: Durations,
           spmd: _Spmd | None = None) -> dict[int, dict[str, _Queue]]:
    """One queue per (device, stream), or per device when serial; instructions keyed for matching (SPMD plans:
    by their first devices, as `spmd` says)."""
    queues: dict[int, dict[str, _Queue]] = {}
    for dev, func in plans.items():
        verify_plan(func)
        seen: dict[tuple, int] = defaultdict(int)  # the n-th op with one key matches the n-th on the peers
        queues[dev] = {}
        for op in instructions(func):
            stream = stream_of(op)
            try:
                t = float(durations(op, dev))
            except FirError as e:
                e.loc = e.loc or loc_of(op.location)  # e.g. a device the hardware model lacks: point at the op
                raise
            if not math.isfinite(t) or t < 0:
                raise FirError(f"device {dev}: '{op.name}' has duration {t} (expected a finite time >= 0)",
                               loc_of(op.location))
            ins = _Instr(op, dev, stream, t)
            extra: list[tuple] = []
            if spmd is not None and isinstance(op, (CollectiveOp, SendOp, RecvOp)):
                ident = op.attr_values()["id"]
                if isinstance(op, CollectiveOp):
                    base = ("coll", ident, spmd.members[ident]) if op.KIND != "slice" else None
                elif isinstance(op, RecvOp):
                    base = ("p2p", ident, spmd.source[(ident, dev)], dev)
                else:
                    keys = [("p2p", ident, dev, q) for q in spmd.sinks.get((ident, dev), [])]
                    base, extra = (keys[0], keys[1:]) if keys else (None, [])
            elif isinstance(op, CollectiveOp):
                vals = op.attr_values()
                group = op.group_for(dev)
                missing = [d for d in group if d not in plans]
                if missing:
                    raise FirError(f"device {dev}: '{op.name}' runs with devices {missing}, which have no plan",
                                   loc_of(op.location))
                base = ("coll", vals["id"], group)
            elif isinstance(op, SendOp):
                base = ("p2p", _attr_int(op, "id"), dev, _attr_int(op, "to_device"))
            elif isinstance(op, RecvOp):
                base = ("p2p", _attr_int(op, "id"), _attr_int(op, "from_device"), dev)
            else:
                base = None
            if base is not None:
                ins.key = (*base, seen[base])
                seen[base] += 1
            for b in extra:
                ins.also += ((*b, seen[b]),)
                seen[b] += 1
            qname = SERIAL if serial else stream
            queues[dev].setdefault(qname, _Queue(dev, qname)).instrs.append(ins)
    return queues


class _Replay:
    """Resolves every instruction's times; raises FirError on deadlock."""

    def __init__(self, queues: dict[int, dict[str, _Queue]]):
        self.queues = queues
        self.fired: dict[tuple[int, int], float] = {}  # (device, event) -> time
        self.sends: dict[tuple, _Instr] = {}
        self.arrived: dict[tuple, dict[int, tuple[_Queue, _Instr]]] = defaultdict(dict)

    def run(self) -> None:
        """Advance every queue until all are done or none can move."""
        all_queues = [q for qs in self.queues.values() for q in qs.values()]
        moved = True
        with progress.task("simulate", total=sum(len(q.instrs) for q in all_queues)) as step:
            while moved:
                moved = False
                for q in all_queues:
                    while q.head() is not None and self._step(q):
                        moved = True
                        step()
        blocked = [q for q in all_queues if q.head() is not None]
        if blocked:
            raise self._deadlock(blocked)
        if self.sends:  # every matched send is taken out when its recv completes
            send = next(iter(self.sends.values()))
            ident, to = send.key[1], send.key[3]  # type: ignore[index]
            raise FirError(f"device {send.device} sends a value (id {ident}) to device {to}, which never receives it",
                           loc_of(send.op.location))

    def _step(self, q: _Queue) -> bool:
        """Resolve q's front instruction if what it waits for is known; False when it must wait."""
        ins = q.head()
        assert ins is not None
        op, free = ins.op, q.free
        if isinstance(op, RecordOp):
            q.finish(ins, free, free)
            self.fired[(q.device, event_of(op))] = free
        elif isinstance(op, WaitOp):
            at = self.fired.get((q.device, event_of(op)))
            if at is None:
                return False
            q.finish(ins, free, max(free, at), busy_from=math.inf)  # waiting is not work
        elif isinstance(op, SendOp):
            q.finish(ins, free, free + ins.duration)
            for key in (ins.key, *ins.also) if ins.key is not None else ():
                self.sends[key] = ins
        elif isinstance(op, RecvOp):
            send = self.sends.pop(ins.key, None)  # type: ignore[arg-type]
            if send is None:
                return False
            q.finish(ins, free, max(free + ins.duration, send.end), busy_from=send.start)
        elif isinstance(op, CollectiveOp) and ins.key is not None:
            return self._rendezvous(q, ins)
        else:
            q.finish(ins, free, free + ins.duration)
        return True

    def _rendezvous(self, q: _Queue, ins: _Instr) -> bool:
        """Note that q's device reached the collective; run it once every member has."""
        assert ins.key is not None
        members = self.arrived[ins.key]
        members[q.device] = (q, ins)
        group = ins.key[2]
        if len(members) < len(group):
            return False
        names = {m.op.name for _, m in members.values()}
        if len(names) > 1:
            raise FirError(f"the members of collective id {ins.key[1]} (group {list(group)}) run different ops: "
                           f"{', '.join(sorted(names))}", loc_of(ins.op.location))
        start = max(mq.free for mq, _ in members.values())
        end = start + max(m.duration for _, m in members.values())
        for mq, m in members.values():
            mq.finish(m, start, end)
        del self.arrived[ins.key]
        return True

    def _deadlock(self, blocked: list[_Queue]) -> FirError:
        """A located error naming what each stuck stream waits for."""
        notes = []
        for q in blocked:
            ins = q.head()
            assert ins is not None
            op, key = ins.op, ins.key or ()
            if isinstance(op, WaitOp):
                why = f"plan.wait for event {event_of(op)}, whose plan.record is never reached"
            elif isinstance(op, RecvOp):
                why = f"comm.recv id {key[1]} from device {key[2]}, whose comm.send never runs"
            elif isinstance(op, CollectiveOp):
                here = self.arrived.get(key, {})
                absent = [d for d in key[2] if d not in here]
                why = f"'{op.name}' id {key[1]} for devices {absent} of its group {list(key[2])}"
            else:
                why = f"'{op.name}'"
            notes.append(f"device {q.device}, stream {q.name}: waits at {why} (issue position "
                         f"{q.next} of the stream)")
        first = blocked[0].head()
        assert first is not None
        return FirError(f"the plans deadlock: {len(blocked)} stream(s) can never finish", loc_of(first.op.location),
                        notes)


def _peak(intervals: list[tuple[float, float, int]]) -> int:
    """The largest total weight of intervals [start, end] open at one instant (touching ones do not overlap,
    but an instantaneous one counts with those open at its instant)."""
    points: list[tuple[float, int, int]] = []
    for s, e, w in intervals:
        if e > s:
            points += [(s, 1, w), (e, 0, -w)]
        else:
            points += [(s, 1, w), (s, 2, -w)]
    total = best = 0
    for _, _, w in sorted(points):
        total += w
        best = max(best, total)
    return best


def _arena_range(op: Operation, r: SSAValue) -> tuple[int, int] | None:
    """The bytes [offset, offset + size) of a result that plan-memory placed (it writes `offset` on results[0])."""
    attr = op.attributes.get(OFFSET)
    if attr is None or r is not op.results[0]:
        return None
    off = attr.value.data  # type: ignore[attr-defined]
    return off, off + nbytes(r.type)  # type: ignore[arg-type]


def _live_intervals(func: FuncOp, timed: dict[Operation, _Instr], end_time: float) -> list[tuple[float, float, int]]:
    """Each device buffer from its producer's start to the end of its last reader (results of plan.store are
    host copies; a value returned directly stays live to the device's end; an argument read by anything but
    plan.load lives on the device throughout). A buffer that plan-memory let a reader overwrite in place (their
    arena bytes overlap) ends when that reader starts."""
    out = []
    for a in func.body.blocks.first.args:  # type: ignore[union-attr]
        if isinstance(a.type, TensorType) and any(not isinstance(u.operation, LoadOp) for u in a.uses):
            out.append((0.0, end_time, nbytes(a.type)))
    for op, ins in timed.items():
        if isinstance(op, StoreOp):
            continue
        for r in op.results:
            if not isinstance(r.type, TensorType):
                continue
            last, here = ins.end, _arena_range(op, r)
            taken_over = math.inf
            for use in r.uses:
                user = use.operation
                if isinstance(user, ReturnOp):
                    last = end_time
                elif user in timed:
                    last = max(last, timed[user].end)
                    there = _arena_range(user, user.results[0]) if user.results else None
                    if here and there and here[0] < there[1] and there[0] < here[1]:
                        taken_over = min(taken_over, timed[user].start)
            out.append((ins.start, max(ins.end, min(last, taken_over)), nbytes(r.type)))
    return out


def _micro_intervals(instrs: list[_Instr]) -> list[tuple[float, float, int]]:
    """Micro-batch k from the moment its first instruction starts working to the end of its last, weight 1.
    Host copies do not count (the h2d stream loads inputs as early as it can, ahead of the work), nor do events;
    a recv starts working when its data starts to move."""
    span: dict[int, tuple[float, float]] = {}
    for ins in instrs:
        attr = ins.op.attributes.get(MICRO)
        if attr is None or isinstance(ins.op, (RecordOp, WaitOp, LoadOp, StoreOp)):
            continue
        k = attr.value.data  # type: ignore[attr-defined]
        s, e = span.get(k, (math.inf, -math.inf))
        span[k] = (min(s, ins.busy_from), max(e, ins.end))
    return [(s, e, 1) for s, e in span.values()]


def _busy_time(ins: _Instr) -> float:
    return max(ins.end - ins.busy_from, 0.0)


def _trace_event(ins: _Instr, serial: bool) -> TraceEvent | None:
    """The timeline slice of one instruction (records and waits that did not stall leave none)."""
    op = ins.op
    if isinstance(op, RecordOp) or (isinstance(op, WaitOp) and ins.end <= ins.start):
        return None
    hints = [r.name_hint for r in op.results if r.name_hint]
    name = op.name + (f" %{hints[0]}" if hints else "")
    args: dict[str, Any] = {}
    if MICRO in op.attributes:
        args["micro"] = op.attributes[MICRO].value.data  # type: ignore[attr-defined]
    if isinstance(op, WaitOp):
        name = f"plan.wait event {event_of(op)}"
    elif isinstance(op, (CollectiveOp, SendOp, RecvOp)) and ins.key is not None:
        args["id"] = ins.key[1]  # type: ignore[index]
        if isinstance(op, CollectiveOp):
            args["group"] = list(ins.key[2])  # type: ignore[index]
            args["bytes_per_device"] = op.attr_values()["bytes_per_device"]
        elif isinstance(op, SendOp):
            args["to_device"] = ins.key[3]  # type: ignore[index]
        else:
            args["from_device"] = ins.key[2]  # type: ignore[index]
    if ins.start > ins.ready:
        args["waited_us"] = (ins.start - ins.ready) * 1e6
    if isinstance(op, RecvOp) and ins.busy_from > ins.start:
        args["waited_for_send_us"] = (ins.busy_from - ins.start) * 1e6
    if serial:
        args["serialised"] = True
    return TraceEvent(ins.device, ins.stream, name, ins.start, ins.end, args)


def simulate(module: ModuleOp, entry: str, hw: Hardware | str | None = None, serial: bool = False,
             durations: Durations | None = None) -> SimResult:
    """Replay the plans of logical function @entry on hardware `hw` (a fir.planning.hardware.Hardware, a preset name or a
    file path); `durations(op, device)` overrides the cost model; serial=True merges each device's streams into
    one queue in issue order."""
    if isinstance(hw, str):
        hw = load_hardware(hw, device_count(module))
    if durations is None:
        if hw is None:
            raise ValueError("simulate needs a hardware model or a durations callback")
        durations = _cost_durations(hw)
    spmd = _spmd_plans(module, entry)
    if spmd is not None:
        plans = {program_devices(f)[0]: f for f in spmd}
        meet = _Spmd.of(plans, meshes_of(module))
    else:
        plans, _ = entry_plans(module, entry)
        meet = None
    queues = _build(plans, serial, durations, meet)
    _Replay(queues).run()
    per_dev = {dev: [ins for q in qs.values() for ins in q.instrs] for dev, qs in queues.items()}
    step = max((ins.end for instrs in per_dev.values() for ins in instrs), default=0.0)
    stats: dict[int, DeviceStats] = {}
    events: list[TraceEvent] = []
    for dev, instrs in per_dev.items():
        busy: dict[str, float] = {}
        for ins in instrs:
            busy[ins.stream] = busy.get(ins.stream, 0.0) + _busy_time(ins)
            ev = _trace_event(ins, serial)
            if ev is not None:
                events.append(ev)
        end = max((ins.end for ins in instrs), default=0.0)
        arena = plans[dev].attributes.get(ARENA_SIZE)
        timed = {ins.op: ins for ins in instrs}
        stats[dev] = DeviceStats(
            device=dev, busy=busy,
            compute_idle_fraction=1.0 - busy.get("compute", 0.0) / step if step > 0 else 0.0,
            end_time=end,
            arena_size=arena.value.data if arena is not None else None,  # type: ignore[attr-defined]
            peak_live_bytes=_peak(_live_intervals(plans[dev], timed, end)),
            max_micro_in_flight=_peak(_micro_intervals(instrs)))
    pipeline = any(isinstance(op, (SendOp, RecvOp)) for f in plans.values() for op in instructions(f))
    if spmd is not None:  # every device of a class has its first device's statistics
        stats = {d: dataclasses.replace(stats[first], device=d)
                 for first, f in plans.items() for d in program_devices(f)}
    bubble = sum(s.compute_idle_fraction for s in stats.values()) / len(stats) if pipeline else None
    return SimResult(entry, step, serial, stats, bubble, events, getattr(hw, "name", None))


def _spmd_plans(module: ModuleOp, entry: str) -> list[FuncOp] | None:
    """The SPMD plans of @entry (spmd-partition's programs, scheduled), or None when it has none."""
    entry = entry.lstrip("@")
    progs = [f for f in module.ops if isinstance(f, FuncOp) and DEVICES in f.attributes
             and symbol_name(f.attributes.get(OF)) == entry]
    if not progs:
        return None
    for f in progs:
        if not is_plan(f):
            raise FirError(f"@{f.sym_name.data} is not a plan yet (run the schedule and plan-memory passes)",
                           loc_of(f.location))
    return progs


def format_time(seconds: float) -> str:
    """A duration with a readable unit (ns, µs, ms or s)."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3f} {unit}"
    return f"{seconds * 1e9:.1f} ns"


def format_bytes(n: int) -> str:
    """A size in B, KiB, MiB or GiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def format_report(result: SimResult) -> str:
    """A readable summary: step time, per-device stream busy percentages, bubble, micro-batches, memory."""
    mode = "all streams of a device serialised" if result.serial else "streams overlap"
    on = f" on {result.hardware}" if result.hardware else ""
    lines = [f"simulated @{result.entry}{on} ({mode}): step time {format_time(result.step_time)}"]
    streams = [s for s in STREAMS
               if any(s in d.busy for d in result.devices.values())]
    streams += sorted({s for d in result.devices.values() for s in d.busy} - set(streams))
    head = ["device", *(f"{s} busy" for s in streams), "compute idle", "micro in flight", "arena", "peak live"]
    rows = [head]
    step = result.step_time
    for dev, d in result.devices.items():
        pct = [f"{100 * d.busy[s] / step:.1f}%" if s in d.busy and step > 0 else "-" for s in streams]
        rows.append([str(dev), *pct, f"{100 * d.compute_idle_fraction:.1f}%", str(d.max_micro_in_flight or "-"),
                     format_bytes(d.arena_size) if d.arena_size is not None else "-", format_bytes(d.peak_live_bytes)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)).rstrip())
    if result.bubble_fraction is not None:
        lines.append(f"pipeline bubble: {100 * result.bubble_fraction:.1f}% (mean idle compute time / step time)")
    return "\n".join(lines)


__all__ = ["simulate", "SimResult", "DeviceStats", "format_report", "format_time", "format_bytes"]

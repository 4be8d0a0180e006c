"""schedule: turn device programs into execution plans — ordered instructions on streams, synchronised by events.

Every device program (`@f.devK`, partition's output, or `@f.pK`, spmd-partition's program of a class of
devices, which all run the one plan) and every function on no mesh (one device) becomes a plan
(fir/dialects/plan.py). Nothing below depends on which device of a class runs a plan: transfers pair by their
`id`, the devices of a pipeline stage are those that share collectives, and sends are ordered for the peer of
the class's first device. Instructions go on the stream of their kind: flow ops on `compute`, collectives on
`comm`, comm.send / comm.recv on `send` / `recv`, host copies on `h2d` / `d2h`. Arguments are loaded with
`plan.load` (a `flow.slice` of an argument — how `microbatch` cuts micro-batches — becomes a load of just that
box); results are copied out with `plan.store` right after they are computed.

Order. Work is grouped into tasks (phase, micro-batch). The phase of an instruction is the number of
cross-device transfers on the longest path from the inputs to it, raised to its earliest reader's phase (work
that needs no transfer, such as a weight's cast, runs with what reads it; a receive keeps its send's phase plus
one). A pipeline stage's forward phase is the first in which it sends, its backward the last in which it moves
data its work reads. `order=gpipe` runs every micro-batch's forward, then every backward; `order=1f1b` (the
default) runs w = (backward - forward) / 2 forwards ahead (w is the number of stages downstream), then
alternates one forward and one backward, which keeps at most w + 1 micro-batches in flight.

Prefetch. A box load (a `flow.slice` of an argument) and a receive are issued at the start of the task before
the one that reads them (a receive only when its data cannot depend on that task), and wait until every other
stream has done what was issued before them: the next micro-batch's data comes in while the current one
computes, no sooner, and its buffer never overlaps one still in use.

Synchronisation. An instruction that reads a value made on another stream waits for an event recorded right
after the producer — unless stream order and earlier events already guarantee it. Nothing else waits, so
collectives and copies overlap independent compute.
"""

from __future__ import annotations

from collections import defaultdict, deque

from xdsl.dialects.builtin import IntegerAttr, StringAttr, i64
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import BlockArgument, Operation, SSAValue

from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.comm import CollectiveOp, RecvOp, SendOp
from fir.dialects.flow import FlowOp
from fir.dialects.plan import MICRO, SCHEDULE, STREAM, LoadOp, PlanOp, RecordOp, StoreOp, WaitOp
from fir.distribution.expansion import source, targets
from fir.distribution.placement import OF, program_devices, symbol_name
from fir.distribution.sbp import Mesh
from fir.planning.plan_ir import event_of, record_after, stream_attr, stream_for, stream_of, wait_before


def _owners(funcs: list[FuncOp]) -> dict[int, FuncOp]:
    """The program each device runs."""
    return {d: f for f in funcs for d in program_devices(f)}


def _peers(o: SendOp | RecvOp, func: FuncOp, meshes: dict[str, Mesh]) -> list[int]:
    """The devices the program's first device sends to (a send) or receives from (a receive)."""
    v = o.attr_values()
    if "to_mesh" not in v:
        return [v["to_device"]] if isinstance(o, SendOp) else [v["from_device"]]
    src, dst = meshes[v["mesh"].name], meshes[v["to_mesh"].name]
    me = program_devices(func)[0]
    return targets(src, dst, me) if isinstance(o, SendOp) else [source(src, dst, me)]


def _body(func: FuncOp) -> list[Operation]:
    ops = [o for o in func.body.ops if not isinstance(o, ReturnOp)]
    for o in ops:
        if isinstance(o, PlanOp):
            raise FirError(f"'{o.name}' in a function that is not a plan yet", loc_of(o.location))
    return ops


def _tasks(funcs: list[FuncOp]) -> dict[Operation, tuple[int, int]]:
    """(phase, micro-batch) of every op of every device program of one logical function."""
    bodies = {f: _body(f) for f in funcs}
    # The sends of one transfer (one id) run the same program on every sending device: one phase.
    sends: dict[int, list[SendOp]] = defaultdict(list)
    for f, ops in bodies.items():
        for o in ops:
            if isinstance(o, SendOp):
                sends[o.attr_values()["id"]].append(o)
    phase: dict[Operation, int] = {}
    micro: dict[Operation, int] = {}
    # As soon as possible: sweeps in program order until nothing changes. A sweep settles at least one more
    # transfer on every path, so more sweeps than transfers mean the transfers wait for each other in a cycle.
    for sweep in range(len(sends) + 2):
        changed = False
        for f, ops in bodies.items():
            for o in ops:
                p, m = 0, 0
                for src in (v.owner for v in o.operands):
                    if isinstance(src, Operation):
                        p, m = max(p, phase.get(src, 0)), max(m, micro.get(src, 0))
                if isinstance(o, RecvOp) and o.attr_values()["id"] in sends:
                    peers = sends[o.attr_values()["id"]]
                    p = max(phase.get(send, 0) for send in peers) + 1
                    m = max(micro.get(send, 0) for send in peers)
                if MICRO in o.attributes:
                    m = max(m, o.attributes[MICRO].value.data)  # type: ignore[attr-defined]
                if (phase.get(o), micro.get(o)) != (p, m):
                    phase[o], micro[o] = p, m
                    changed = True
        if not changed:
            break
    else:
        f = next(iter(bodies))
        raise FirError(f"the transfers of the device programs of @{symbol_name(f.attributes.get(OF))} wait for "
                       "each other in a cycle", loc_of(f.location))
    # In the phase of its earliest reader: an op that does not need what a transfer brings (a weight's cast, a
    # slice of an input, a collective on a weight) runs with the work that reads it, not with the first phase.
    # Its micro-batch stays: pulling a sum over micro-batches to the last one would keep every micro-batch alive.
    # A receive stays where its send puts it: both ends must see a pair of devices' transfers in one order.
    for ops in bodies.values():
        for o in reversed(ops):
            readers = _readers(o)
            if readers and not isinstance(o, RecvOp):
                phase[o] = max(phase[o], min(phase[r] for r in readers))
    return {o: (phase[o], micro[o]) for o in phase}


def _readers(o: Operation) -> list[Operation]:
    return [u.operation for r in o.results for u in r.uses if not isinstance(u.operation, ReturnOp)]


def task_order(tasks: set[tuple[int, int]], order: str, stage: tuple[int, int] | None = None) -> \
        dict[tuple[int, int], int]:
    """The slot of each of one device's (phase, micro-batch) tasks under GPipe or 1F1B (tasks with one slot run
    together, in program order). `stage`: the forward and backward phases of the device's stage (by default its
    first and last phases); any phase before the forward runs with it."""
    phases = sorted({p for p, _ in tasks})
    micros = sorted({m for _, m in tasks})
    first, last = stage if stage is not None else (phases[0], phases[-1]) if phases else (0, 0)
    slot = {t: (max(t[0], first), t[1]) for t in tasks}  # stray early phases join the forward phase
    used = sorted(set(slot.values()))
    if order == "gpipe" or len({p for p, _ in used}) <= 1:
        sequence = used
    else:
        ahead = max(0, (last - first) // 2)  # the stages downstream of this one
        rest = sorted({p for p, _ in used if p > first})
        sequence = [(first, m) for m in micros[:ahead] if (first, m) in slot.values()]
        for i, m in enumerate(micros):
            if ahead + i < len(micros) and (first, micros[ahead + i]) in slot.values():
                sequence.append((first, micros[ahead + i]))
            sequence.extend((p, m) for p in rest if (p, m) in slot.values())
    rank = {t: i for i, t in enumerate(sequence)}
    return {t: rank[slot[t]] for t in tasks}


def schedule_group(funcs: list[FuncOp], order: str, meshes: dict[str, Mesh] | None = None) -> None:
    """Turn the device programs of one logical function (per-device or SPMD) into plans."""
    tasks = _tasks(funcs)
    stages = _stage_phases(funcs, tasks)
    issues = {f: _issue_order(f, tasks, order, stages.get(f)) for f in funcs}
    _pair_transfers(issues, meshes or {})
    for f, ops in issues.items():
        block = f.body.blocks.first
        assert block is not None and block.last_op is not None
        for o in ops:
            block.insert_op_before(o, block.last_op)
        _synchronise(ops, max((event_of(o) + 1 for o in ops if isinstance(o, RecordOp)), default=0))
        _number_events(f)
        f.attributes[SCHEDULE] = StringAttr(order)


def _pair_transfers(issues: dict[FuncOp, list[Operation]], meshes: dict[str, Mesh]) -> None:
    """Issue each device's sends to a peer in the order the peer issues its receives from it: NCCL pairs the
    transfers between two devices in issue order. Only sends move, and only later (their data is ready earlier,
    and nothing on their device reads them). Programs stand for their devices (the first one's peers)."""
    owner = _owners(list(issues))
    expected: dict[tuple[FuncOp, FuncOp], deque[int]] = defaultdict(deque)
    for f, ops in issues.items():
        for o in ops:
            if isinstance(o, RecvOp) and _peers(o, f, meshes)[0] in owner:
                expected[(owner[_peers(o, f, meshes)[0]], f)].append(o.attr_values()["id"])
    for f, ops in issues.items():
        held: dict[tuple[FuncOp, int], SendOp] = {}
        out: list[Operation] = []
        for o in ops:
            peers = [p for p in _peers(o, f, meshes) if p in owner] if isinstance(o, SendOp) else []
            if not peers:
                out.append(o)  # not a send, or one with no peer that runs a program: keep its place
                continue
            v = o.attr_values()
            to = owner[peers[0]]
            channel = expected[(f, to)]
            if channel and channel[0] != v["id"]:
                held[(to, v["id"])] = o  # the peer receives another one first
                continue
            out.append(o)
            if channel:
                channel.popleft()
            while channel and (to, channel[0]) in held:
                out.append(held.pop((to, channel.popleft())))
        out.extend(held.values())  # sends nobody receives keep their relative order at the end
        ops[:] = out


def _stage_phases(funcs: list[FuncOp], tasks: dict[Operation, tuple[int, int]]) -> dict[FuncOp, tuple[int, int]]:
    """Per program, the forward and backward phases of its stage (the programs that share collectives: a
    collective's members share its id): the first phase in which the stage sends (its output goes downstream),
    and the last in which it moves data that its work reads (a gradient coming back; not a result passed through
    for the host). The members of a stage must agree, or they would issue their collectives in different
    orders."""
    stage = {f: f for f in funcs}

    def find(f: FuncOp) -> FuncOp:
        while stage[f] is not f:
            stage[f] = stage[stage[f]]
            f = stage[f]
        return f

    sends: dict[FuncOp, set[int]] = defaultdict(set)
    marks: dict[FuncOp, set[int]] = defaultdict(set)
    by_id: dict[int, FuncOp] = {}
    for f in funcs:
        for o in _body(f):
            if isinstance(o, SendOp):
                sends[f].add(tasks[o][0])
            if isinstance(o, SendOp) or isinstance(o, CollectiveOp) or (isinstance(o, RecvOp) and _readers(o)):
                marks[f].add(tasks[o][0])
            if isinstance(o, CollectiveOp) and "id" in o.properties:
                first = by_id.setdefault(o.attr_values()["id"], f)
                stage[find(first)] = find(f)
    shared_sends: dict[FuncOp, set[int]] = defaultdict(set)
    shared_marks: dict[FuncOp, set[int]] = defaultdict(set)
    for f in stage:
        shared_sends[find(f)] |= sends[f]
        shared_marks[find(f)] |= marks[f]
    out = {}
    for f in stage:
        ms, ss = shared_marks[find(f)], shared_sends[find(f)]
        if ms:
            out[f] = (min(ss or ms), max(ms))
    return out


def _prefetched(o: Operation) -> bool:
    """An instruction that brings data in without reading the device (a slice of an argument, which becomes a
    box load, or in an SPMD program a piece load, or a receive): issued a task ahead of its reader."""
    if isinstance(o, RecvOp):
        return True
    if isinstance(o, CollectiveOp) and o.KIND == "slice":
        return isinstance(o.operands[0], BlockArgument)
    return isinstance(o, FlowOp) and o.name == "flow.slice" and isinstance(o.operands[0], BlockArgument) \
        and all(s == 1 for s in o.attr_values()["stride"])


def _issue_order(func: FuncOp, tasks: dict[Operation, tuple[int, int]], order: str,
                 stage: tuple[int, int] | None) -> list[Operation]:
    """The device's instructions in issue order, each on its stream (taken out of the function, events not yet
    inserted but those that hold prefetches back)."""
    block = func.body.blocks.first
    assert block is not None
    ops = _body(func)
    ret = block.last_op
    assert isinstance(ret, ReturnOp)
    rank = task_order({tasks[o] for o in ops}, order, stage)
    in_slot: dict[int, set[tuple[int, int]]] = defaultdict(set)
    for task, slot in rank.items():
        in_slot[slot].add(task)
    ordered = sorted(enumerate(ops), key=lambda io: (rank[tasks[io[1]]], io[0]))
    # Prefetches (box loads, receives) are issued at the start of the slot before the one that reads them, so
    # the next micro-batch's data arrives while the current one computes; everything else in slot order.
    early: dict[int, list[Operation]] = defaultdict(list)
    body: list[tuple[int, Operation]] = []
    sliced: list[Operation] = []
    for _, o in ordered:
        t = rank[tasks[o]]
        if not _prefetched(o):
            body.append((t, o))
            continue
        if isinstance(o, RecvOp):
            early[t - 1 if t > 0 and _may_precede(tasks[o], in_slot[t - 1]) else t].append(o)
            continue
        vals = o.attr_values()
        if isinstance(o, CollectiveOp):  # the device's piece of an argument (an SPMD program)
            load = LoadOp.make([o.operands[0]], o.results[0].type, mesh=vals["mesh"], to=vals["to"],
                               **{"from": vals["from"]})
        else:
            load = LoadOp.make([o.operands[0]], start=vals["start"], limit=vals["limit"])
        _adopt(load, o)
        load.results[0].name_hint = o.results[0].name_hint
        o.results[0].replace_all_uses_with(load.results[0])
        early[max(t - 1, 0)].append(load)
        sliced.append(o)
    for o in ops:
        o.detach()
    for o in sliced:
        o.erase()
    issue: list[Operation] = []
    issued: dict[str, int] = defaultdict(int)  # instructions issued so far on each stream
    stores: dict[SSAValue, StoreOp] = {}

    def emit(o: Operation) -> None:
        o.attributes[STREAM] = stream_attr(stream_for(o))
        issue.append(o)
        if not isinstance(o, (RecordOp, WaitOp)):
            issued[stream_of(o)] += 1
        for r in o.results:  # a result is copied out right after it is made
            if r not in stores and any(isinstance(u.operation, ReturnOp) for u in r.uses):
                st = StoreOp.make([r])
                st.location = ret.location
                st.results[0].name_hint = f"{r.name_hint}.out" if r.name_hint else None
                stores[r] = st
                emit(st)

    for a in block.args:
        # Instructions read an argument through its copy in the arena; a plan returns a returned argument as it
        # is (it is a host tensor), so that use needs no copy in and out.
        readers = [u for u in a.uses if not isinstance(u.operation, (LoadOp, ReturnOp))]
        if readers:
            load = LoadOp.make([a])
            load.location = func.location
            load.results[0].name_hint = f"{a.name_hint}.in" if a.name_hint else None
            for u in readers:
                u.operation.operands[u.index] = load.results[0]
            emit(load)
    gates = 0
    seen: dict[tuple[str, str], int] = defaultdict(int)  # (prefetch stream, other stream) -> issued when gated
    current = -1

    def flush(upto: int) -> None:
        nonlocal current, gates
        while current < upto:
            current += 1
            pre = early.pop(current, [])
            # A prefetch waits until every other stream has done what was issued before it: it then brings its
            # data in while the slot before its reader's runs, at most one slot ahead (so 1F1B holds only the
            # micro-batches it has in flight), and its buffer overlaps no buffer an earlier instruction may
            # still be using.
            for stream in sorted({stream_for(o) for o in pre}):
                for other in sorted(issued):
                    if other != stream and issued[other] > seen[(stream, other)]:
                        issue.extend(_gate(gates, other, stream, pre[0]))
                        gates += 1
                        seen[(stream, other)] = issued[other]
            for o in pre:
                emit(o)

    for t, o in body:
        flush(t)
        emit(o)
    flush(max(early, default=-1))
    for i, v in enumerate(ret.operands):
        if v in stores:  # a returned argument stays as it is
            ret.operands[i] = stores[v].results[0]
    for o in issue:
        if o in tasks and MICRO not in o.attributes:
            o.attributes[MICRO] = IntegerAttr(tasks[o][1], i64)
    return issue


def _may_precede(recv: tuple[int, int], slot: set[tuple[int, int]]) -> bool:
    """May a receive of task (phase P, micro-batch j) be issued before the tasks of `slot`? Not when its data may
    depend on them: a value of micro-batch j depends only on micro-batches up to j, and a value that left this
    device and came back has crossed at least two transfers, so only tasks (Q, i) with Q <= P - 2 and i <= j
    can feed it. (A receive issued before what its data needs could deadlock the devices, once plan-memory's
    events make later work wait for it.)"""
    phase, micro = recv
    return all(q > phase - 2 or i > micro for q, i in slot)


def _gate(event: int, done: str, stream: str, before: Operation) -> list[Operation]:
    """`plan.record` on stream `done` and `plan.wait` on `stream`: what `stream` issues next waits for what
    `done` has issued so far."""
    rec = RecordOp.create(properties={"event": IntegerAttr(event, i64)}, attributes={STREAM: stream_attr(done)})
    wait = WaitOp.create(properties={"event": IntegerAttr(event, i64)}, attributes={STREAM: stream_attr(stream)})
    rec.location = wait.location = before.location
    return [rec, wait]


def _number_events(func: FuncOp) -> None:
    """Number events in the order they are recorded, so the plan reads top to bottom."""
    new: dict[int, int] = {}
    for o in func.body.ops:
        if isinstance(o, RecordOp):
            new[o.event.value.data] = len(new)
    for o in func.body.ops:
        if isinstance(o, (RecordOp, WaitOp)):
            o.properties["event"] = IntegerAttr(new[o.event.value.data], i64)


def _adopt(new: Operation, old: Operation) -> None:
    new.location = old.location
    if MICRO in old.attributes:
        new.attributes[MICRO] = old.attributes[MICRO]


def _synchronise(ops: list[Operation], first_event: int) -> None:
    """Insert the events that order every cross-stream producer before its readers, numbered from first_event
    (vector clocks over issue positions: clock[s] = the last position on stream s known complete; the events
    already in `ops` count)."""
    streams = sorted({stream_of(o) for o in ops})
    col = {s: i for i, s in enumerate(streams)}
    position = {o: i for i, o in enumerate(ops)}
    head = {s: [-1] * len(streams) for s in streams}
    done: dict[Operation, list[int]] = {}
    fired: dict[int, list[int]] = {}
    events: dict[Operation, int] = {}
    for o in ops:
        s = stream_of(o)
        clock = head[s]
        if isinstance(o, WaitOp):
            clock = [max(a, b) for a, b in zip(clock, fired[event_of(o)])]
        # The latest producer first: its event may already imply the others'.
        producers = {v.owner for v in o.operands if isinstance(v.owner, Operation) and v.owner in done}
        for p in sorted(producers, key=position.__getitem__, reverse=True):
            ps = stream_of(p)
            if ps == s or clock[col[ps]] >= position[p]:
                continue
            if p not in events:
                events[p] = first_event + len(events)
                record_after(p, events[p])
            wait_before(o, events[p])
            clock = [max(a, b) for a, b in zip(clock, done[p])]
        clock = list(clock)
        clock[col[s]] = position[o]
        if isinstance(o, RecordOp):
            fired[event_of(o)] = clock
        done[o] = clock
        head[s] = clock

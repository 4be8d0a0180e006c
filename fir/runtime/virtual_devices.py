"""Run a partitioned program on N virtual devices in one process, op by op, without a plan.

fir-run executes plans (fir.runtime.plan_executor); this runner executes partition's device programs directly, so the
tests can check the distribution passes apart from scheduling and memory planning. Each device runs its own program
(the `@f.devK` functions partition made, or the SPMD program of its class that spmd-partition made, with its own
coordinates: its `sbp.position`, its piece in a comm.slice, its group in a collective, its peers in a send or
receive) over its own memory: a dictionary of the numpy arrays it holds, never shared with another device. A
program is a generator that stops at every comm op; the scheduler resumes devices round-robin and completes a
collective once every member of its group has arrived, moving real copies of the data between the devices'
memories (fir.runtime.collectives). Sends are buffered; a receive waits for its send. Logical inputs are scattered
to the devices by their SBP and the results gathered back (fir.distribution.layout); the plan executor
(fir.runtime.plan_executor) shares that scatter and gather and the collectives' completion.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Operation, SSAValue

from fir.dialects import dtypes
from fir.distribution import layout
from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.base import to_tt
from fir.dialects.comm import CollectiveOp, RecvOp, SendOp
from fir.dialects.flow import FlowOp
from fir.dialects.sbp import MeshOp, PositionOp, meshes_of
from fir.distribution.expansion import (collective_group, coordinate, is_local_slice, recv_source, send_targets,
                                        slice_box)
from fir.distribution.placement import (ARGS, DEVICE, OF, RESULTS, arg_attrs, lookup_mesh, program_devices, res_attrs,
                                        symbol_name, value_mesh, value_sbp)
from fir.runtime import collectives
from fir.runtime.interpreter import evaluate_op
from fir.runtime.reference import KernelError
from fir.distribution.sbp import Mesh, NdSbp, Split, format_nd


@dataclass
class VirtualDevice:
    """One device: its program and the arrays it holds."""

    id: int
    func: FuncOp
    memory: dict[SSAValue, np.ndarray] = field(default_factory=dict)
    held_bytes: int = 0
    peak_bytes: int = 0

    def store(self, v: SSAValue, x: np.ndarray) -> None:
        """Keep a value in this device's memory."""
        self.memory[v] = x
        self.held_bytes += x.nbytes
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)


@dataclass(frozen=True)
class _Collective:
    op: CollectiveOp
    key: tuple


@dataclass(frozen=True)
class _Send:
    op: SendOp
    key: tuple


@dataclass(frozen=True)
class _Recv:
    op: RecvOp
    key: tuple


# A device and the program it runs (its own, or its class's SPMD program).
Run = tuple[int, FuncOp]


def device_programs(module: ModuleOp, name: str) -> list[Run]:
    """Each device and the program it runs of logical function @name (partition's or spmd-partition's), by device."""
    runs = []
    for f in module.ops:
        if isinstance(f, FuncOp) and symbol_name(f.attributes.get(OF)) == name:
            runs += [(d, f) for d in program_devices(f)]
    return sorted(runs, key=lambda r: r[0])


def devices_needed(module: ModuleOp) -> int:
    """How many devices the program's meshes cover (the largest device id + 1)."""
    return max((d + 1 for m in meshes_of(module).values() for d in m.devices), default=1)


def check_devices(module: ModuleOp, n: int) -> None:
    """Raise a FirError at the first mesh that uses a device beyond the `n` virtual devices."""
    for op in module.ops:
        if isinstance(op, MeshOp) and max(op.device_values()) >= n:
            raise FirError(f"mesh @{op.sym_name.data} uses device {max(op.device_values())}, but there are only {n} "
                           f"virtual devices (--devices {n}); the program needs --devices {devices_needed(module)}",
                           loc_of(op.location))


def _run(dev: VirtualDevice, args: list[np.ndarray], meshes: dict[str, Mesh]) -> Generator[Any, Any, list[np.ndarray]]:
    block = dev.func.body.blocks.first
    assert block is not None
    for a, x in zip(block.args, args):
        dev.store(a, x)
    for op in block.ops:
        if isinstance(op, ReturnOp):
            return [dev.memory[v] for v in op.operands]
        ins = [dev.memory[v] for v in op.operands]
        if isinstance(op, FlowOp):
            try:
                out = evaluate_op(op, ins)
            except KernelError as e:
                raise FirError(f"device {dev.id}: {e}", loc_of(op.location)) from None
        elif isinstance(op, PositionOp):
            coord = on_device(coordinate, op, meshes, dev.id)
            out = np.array(coord, dtype=dtypes.numpy_dtype(to_tt(op.results[0].type)[1]))
        elif is_local_slice(op):  # B -> S: the device keeps its piece, no data moves
            start, limit = on_device(slice_box, op, meshes, dev.id)
            out = np.array(ins[0][tuple(slice(a, b) for a, b in zip(start, limit))])
        elif isinstance(op, CollectiveOp):
            group = on_device(collective_group, op, meshes, dev.id)
            out = yield _Collective(op, (op.attr_values()["id"], group)), ins[0]
        elif isinstance(op, SendOp):
            for t in on_device(send_targets, op, meshes, dev.id):
                yield _Send(op, (op.attr_values()["id"], dev.id, t)), ins[0]
            continue
        elif isinstance(op, RecvOp):
            peer = on_device(recv_source, op, meshes, dev.id)
            out = yield _Recv(op, (op.attr_values()["id"], peer, dev.id)), None
        else:
            raise FirError(f"'{op.name}' cannot run on a virtual device", loc_of(op.location))
        want = to_tt(op.results[0].type)
        if (tuple(out.shape), dtypes.dtype_of_numpy(out.dtype)) != want:
            raise FirError(f"device {dev.id}: '{op.name}' produced {out.shape} {out.dtype}, but its type is "
                           f"{op.results[0].type}", loc_of(op.location))
        dev.store(op.results[0], out)
    raise AssertionError("a function ends with func.return")


def on_device(fn: Callable[[Any, dict[str, Mesh], int], Any], op: Operation, meshes: dict[str, Mesh],
               device: int) -> Any:
    """What an op is on one device (its coordinate, piece, group or peers: fir.distribution.expansion), or a
    FirError when a mesh it names is missing or does not hold the device."""
    try:
        return fn(op, meshes, device)
    except (KeyError, ValueError):
        raise FirError(f"device {device}: '{op.name}' names a mesh that does not hold it", loc_of(op.location)) from None


def complete_collective(ops: Sequence[CollectiveOp], arrays: list[np.ndarray],
                        group: tuple[int, ...]) -> list[np.ndarray]:
    """Each member's result of one collective, from the members' ops and local arrays in group order (checked to
    match first)."""
    check_members(ops, [(a.shape, a.dtype) for a in arrays], group)
    _, src, dst = ops[0].transition()
    return collectives.transition(src, dst, arrays)


def check_members(ops: Sequence[CollectiveOp], pieces: Sequence[tuple[tuple[int, ...], np.dtype]],
                  group: tuple[int, ...]) -> None:
    """The members of one collective (in group order, each with the shape and dtype of its piece) must run the
    same op on matching pieces (device programs written or changed by hand may not); FirError otherwise."""
    first = ops[0]
    _, src, _ = first.transition()
    concat = src.axis if isinstance(src, Split) else None  # the axis along which pieces may differ

    def signature(op: CollectiveOp, piece: tuple[tuple[int, ...], np.dtype]) -> tuple:
        vals = op.attr_values()
        shape, dtype = piece
        return (op.name, vals["from"], vals["to"], np.dtype(dtype), len(shape),
                tuple(n for k, n in enumerate(shape) if k != concat))

    def text(op: CollectiveOp, piece: tuple[tuple[int, ...], np.dtype]) -> str:
        vals = op.attr_values()
        return f"{op.name} {format_nd(vals['from'])} -> {format_nd(vals['to'])} on {tuple(piece[0])} {piece[1]}"

    want = signature(first, pieces[0])
    for m, op, piece in zip(group, ops, pieces):
        if signature(op, piece) != want:
            raise FirError(f"the members of collective id {op.attr_values()['id']} (group {list(group)}) do not "
                           f"match: device {group[0]} runs {text(first, pieces[0])}, device {m} {text(op, piece)}",
                           loc_of(op.location))


def _describe(dev_id: int, req: Any) -> str:
    if isinstance(req, _Collective):
        return f"device {dev_id} waits in {req.op.name} (id {req.key[0]}, group {list(req.key[1])})"
    return f"device {dev_id} waits in comm.recv (id {req.key[0]}) from device {req.key[1]}"


def execute(programs: Sequence[Run], device_args: dict[int, list[np.ndarray]],
            meshes: dict[str, Mesh] | None = None) -> dict[int, list[np.ndarray]]:
    """Run device programs to completion; returns each device's results."""
    devices = {d: VirtualDevice(d, f) for d, f in programs}
    gens = {d: _run(dev, device_args[d], meshes or {}) for d, dev in devices.items()}
    resume: dict[int, Any] = {d: None for d in gens}  # devices ready to run, with the value to resume with
    waiting: dict[int, Any] = {}
    arrived: dict[tuple, dict[int, np.ndarray]] = {}
    mailbox: dict[tuple, np.ndarray] = {}
    senders: dict[tuple, SendOp] = {}
    results: dict[int, list[np.ndarray]] = {}
    started: set[int] = set()
    while resume or waiting:
        for d in sorted(resume):
            value = resume.pop(d)
            while True:
                try:
                    req, payload = gens[d].send(value) if d in started else next(gens[d])
                    started.add(d)
                except StopIteration as stop:
                    results[d] = stop.value
                    break
                if isinstance(req, _Send):
                    if req.key in mailbox:
                        raise FirError(f"device {d} sends a second value with id {req.key[0]} to device "
                                       f"{req.key[2]} before the first is received", loc_of(req.op.location))
                    mailbox[req.key] = np.array(payload, copy=True)  # buffered: the sender goes on
                    senders[req.key] = req.op
                    value = None
                    continue
                if isinstance(req, _Collective):
                    arrived.setdefault(req.key, {})[d] = np.array(payload, copy=True)
                waiting[d] = req
                break
        progressed = False
        for d, req in list(waiting.items()):
            if isinstance(req, _Recv) and req.key in mailbox:
                resume[d] = mailbox.pop(req.key)
                del waiting[d]
                progressed = True
        for key, got in list(arrived.items()):
            group = key[1]
            if len(got) == len(group):
                outs = complete_collective([waiting[m].op for m in group], [got[m] for m in group], group)
                for m, out in zip(group, outs):
                    resume[m] = out
                    del waiting[m]
                del arrived[key]
                progressed = True
        if waiting and not resume and not progressed:
            stuck = "; ".join(_describe(d, r) for d, r in sorted(waiting.items()))
            first = next(iter(waiting.values()))
            raise FirError(f"deadlock: {stuck}", loc_of(first.op.location))
    if mailbox:
        key = next(iter(mailbox))
        raise FirError(f"device {key[1]} sent a value (id {key[0]}) to device {key[2]} that never received it",
                       loc_of(senders[key].location))
    return results


def device_of(f: FuncOp) -> int:
    """The device a device program runs on."""
    return int(f.attributes[DEVICE].value.data)


def check_programs(module: ModuleOp, programs: Sequence[Run], name: str, n_devices: int) -> None:
    """Raise a FirError unless there are device programs of @name, one per device, all within `n_devices`."""
    if not programs:
        raise FirError(f"no device programs of @{name} (run the partition pass)")
    seen: dict[int, FuncOp] = {}
    for d, f in programs:
        if d in seen:
            raise FirError(f"@{seen[d].sym_name.data} and @{f.sym_name.data} are both device {d}'s program of "
                           f"@{name}", loc_of(f.location))
        seen[d] = f
        if d >= n_devices:
            raise FirError(f"@{name} runs on device {d}, but there are only {n_devices} virtual devices "
                           f"(use --devices {devices_needed(module)})", loc_of(f.location))


def scatter_inputs(module: ModuleOp, programs: Sequence[Run],
                   inputs: Sequence[np.ndarray]) -> dict[int, list[np.ndarray]]:
    """Each device's arguments: its pieces of the logical inputs, laid out by the arguments' SBP."""
    meshes = meshes_of(module)
    scattered: dict[tuple, dict[int, np.ndarray]] = {}
    device_args: dict[int, list[np.ndarray]] = {}
    for d, f in programs:
        block_args = f.body.blocks.first.args  # type: ignore[union-attr]
        index = _indices(f, ARGS, len(inputs), len(block_args))
        args = []
        for k, (i, a, attrs) in enumerate(zip(index, block_args, arg_attrs(f))):
            what = f"argument {k} of @{f.sym_name.data} (logical argument {i})"
            mesh, nd = _value_layout(meshes, attrs, f, d, what, len(to_tt(a.type)[0]))
            if (i, mesh.name, nd) not in scattered:
                reason = layout.check_nd(inputs[i].shape, nd, mesh.shape)
                if reason is not None:
                    raise FirError(f"{what}: sbp {format_nd(nd)} cannot lay out the input of shape "
                                   f"{inputs[i].shape}: {reason}", loc_of(f.location))
                scattered[(i, mesh.name, nd)] = layout.scatter(inputs[i], nd, mesh)
            x = scattered[(i, mesh.name, nd)][d]
            if (x.shape, dtypes.dtype_of_numpy(x.dtype)) != to_tt(a.type):
                raise FirError(f"{what} has type {a.type}, but device {d}'s piece of the input is {x.shape} "
                               f"{x.dtype}", loc_of(f.location))
            args.append(x)
        device_args[d] = args
    return device_args


def gather_results(module: ModuleOp, name: str, programs: Sequence[Run],
                   outs: dict[int, list[np.ndarray]]) -> list[np.ndarray]:
    """The logical results of @name, assembled from each device's results by their SBP."""
    meshes = meshes_of(module)
    pieces: dict[int, tuple[Mesh, NdSbp, dict[int, np.ndarray]]] = {}
    for d, f in programs:
        index = _indices(f, RESULTS, None, len(outs[d]))
        for k, (i, attrs, x) in enumerate(zip(index, res_attrs(f), outs[d])):
            mesh, nd = _value_layout(meshes, attrs, f, d, f"result {k} of @{f.sym_name.data} (logical result {i})",
                                     x.ndim)
            if pieces.setdefault(i, (mesh, nd, {}))[:2] != (mesh, nd):
                raise FirError(f"the device programs of @{name} disagree on the layout of result {i}",
                               loc_of(f.location))
            pieces[i][2][d] = x
    if sorted(pieces) != list(range(len(pieces))):
        raise FirError(f"the device programs of @{name} return results {sorted(pieces)}, not 0 to {len(pieces) - 1}",
                       loc_of(programs[0][1].location))
    result = []
    for i in sorted(pieces):
        mesh, nd, locals_ = pieces[i]
        missing = [m for m in mesh.devices if m not in locals_]
        if missing:
            raise FirError(f"result {i} is on @{mesh.name}, but device {missing[0]} returns no piece of it",
                           loc_of(programs[0][1].location))
        if len({x.ndim for x in locals_.values()}) != 1:
            raise FirError(f"the devices' pieces of result {i} differ in rank", loc_of(programs[0][1].location))
        bad = layout.broadcast_mismatch(locals_, nd, mesh)
        if bad is not None:
            raise FirError(f"result {i} is broadcast ({format_nd(nd)}), but device {bad} holds a different copy",
                           loc_of(programs[0][1].location))
        shape = _logical_shape(locals_, nd, mesh)
        try:
            result.append(layout.assemble(locals_, nd, mesh, shape, next(iter(locals_.values())).dtype))
        except ValueError as e:  # a device's piece has the wrong shape
            raise FirError(f"result {i} ({format_nd(nd)} on @{mesh.name}): {e}", loc_of(programs[0][1].location)) from None
    return result


def run_partitioned(module: ModuleOp, name: str, inputs: Sequence[np.ndarray], n_devices: int) -> list[np.ndarray]:
    """Scatter logical inputs, run every device program of @name, gather the logical results."""
    programs = device_programs(module, name)
    check_programs(module, programs, name, n_devices)
    outs = execute(programs, scatter_inputs(module, programs, inputs), meshes_of(module))
    return gather_results(module, name, programs, outs)


def _value_layout(meshes: dict[str, Mesh], attrs: dict, f: FuncOp, device: int, what: str,
                  rank: int) -> tuple[Mesh, NdSbp]:
    """The mesh and nd-SBP of a device program's argument or result, checked against the device and the rank."""
    mesh = lookup_mesh(meshes, value_mesh(attrs, f), what, f)
    nd = value_sbp(attrs)
    if nd is None or device not in mesh.devices:
        raise FirError(f"{what} needs an sbp and a mesh that holds device {device}", loc_of(f.location))
    reason = layout.check_nd((1 << 62,) * rank, nd, mesh.shape)  # every rule but the piece sizes
    if reason is not None:
        raise FirError(f"{what}: sbp {format_nd(nd)} does not fit mesh @{mesh.name}: {reason}", loc_of(f.location))
    return mesh, nd


def _indices(f: FuncOp, attr: str, n: int | None, have: int) -> list[int]:
    """The logical index of each of the `have` arguments (or results) of a device program; n: how many the logical
    function has, when known."""
    if attr in f.attributes:
        index = [int(x) for x in f.attributes[attr].get_values()]
    else:
        index = list(range(have if n is None else n))
    if len(index) != have or len(set(index)) != len(index) or any(i < 0 or (n is not None and i >= n) for i in index):
        what = "arguments" if attr == ARGS else "results"
        raise FirError(f"@{f.sym_name.data} has {have} {what}, but they stand for the logical {what} {index}"
                       + (f" of {n}" if n is not None else ""), loc_of(f.location))
    return index


def _logical_shape(locals_: dict[int, np.ndarray], nd: NdSbp, mesh: Mesh) -> tuple[int, ...]:
    """The logical shape, from the local shapes along each split axis."""
    first = next(iter(locals_.values()))
    shape = list(first.shape)
    for axis in range(len(shape)):
        splitting = [a for a, s in enumerate(nd) if isinstance(s, Split) and s.axis == axis]
        if not splitting:
            continue
        total = 0
        for coord in mesh.coords():
            if all(coord[a] == 0 for a in range(len(nd)) if a not in splitting):
                total += locals_[mesh.device_at(coord)].shape[axis]
        shape[axis] = total
    return tuple(shape)

"""The cost model: FLOPs and HBM bytes of every flow op, a roofline for compute, alpha-beta models of NCCL's
collectives and of point-to-point and host copies, and the time of any instruction of a device program or plan
on a hardware model (fir.planning.hardware). docs/hardware.md states every formula and convention.

Sizes come from the op's own operand and result types: local types in device programs and plans, logical types
in a logical program (a logical collective is priced at the local sizes of its mesh's devices).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from xdsl.dialects.builtin import IntegerAttr, ModuleOp, TensorType
from xdsl.dialects.func import FuncOp
from xdsl.ir import Attribute, Operation

from fir.dialects import dtypes
from fir.dialects import shape_inference as si
from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects import comm
from fir.dialects import plan
from fir.dialects.base import to_tt
from fir.dialects.flow import FlowOp
from fir.dialects.sbp import PositionOp, meshes_of
from fir.planning.hardware import Hardware
from fir.distribution.layout import local_shape
from fir.planning.plan_ir import is_host_value, is_plan

COLLECTIVE_KINDS: tuple[str, ...] = ("all_reduce", "reduce_scatter", "all_gather", "all_to_all", "slice")

# FLOPs per result element of the elementwise ops: +, -, *, max, min, neg, relu and a conversion count 1; a
# special function (exp, log, sqrt, rsqrt, tanh, erf, a reciprocal) counts 4 by convention (docs/hardware.md).
ELEMENTWISE_FLOPS: dict[str, int] = {
    "flow.neg": 1, "flow.relu": 1, "flow.cast": 1,
    "flow.add": 1, "flow.sub": 1, "flow.mul": 1, "flow.max": 1, "flow.min": 1,
    "flow.exp": 4, "flow.log": 4, "flow.sqrt": 4, "flow.rsqrt": 4, "flow.tanh": 4, "flow.erf": 4,
    "flow.greater": 1, "flow.equal": 1,
    "flow.div": 5,  # reciprocal + multiply
    "flow.pow": 9,  # exp(b * log(a))
    "flow.sigmoid": 10,  # 1 / (1 + exp(-x)): neg, exp, add, reciprocal
}  # fmt: skip
GELU_FLOPS = {"none": 8, "tanh": 12}  # x/sqrt2, erf, +1, *x, *0.5 | x^3 (2), *c, +x, *k, tanh, +1, *x, *0.5
SOFTMAX_FLOPS = (8, 4)  # per element (max, sub, exp, sum, scale) and per row (one reciprocal)
LAYERNORM_FLOPS = (7, 7)  # per element (sum, sub, square, sum, scale, *gamma, +beta); per row (2 div, +eps, rsqrt)
CROSS_ENTROPY_FLOPS = (7, 5)  # per logit (max, sub, exp, sum) and per row (log, pick, subtract)

# Ops that move data only (0 FLOPs); reshape is a view of the same bytes and costs nothing at all.
DATA_MOVEMENT = ("flow.transpose", "flow.broadcast_to", "flow.concat", "flow.slice", "flow.gather")
# scatter_add counts one add per update (above) and the default bytes: its operands read, its result written.
SOURCES = ("flow.constant", "flow.fill", "flow.iota")
FREE = ("flow.reshape",)

# What bounds an instruction's time.
COMPUTE, MEMORY, LAUNCH, LINK, NONE = "compute", "memory", "launch", "link", "none"


@dataclass(frozen=True)
class OpCost:
    """Work of one flow op: arithmetic operations and HBM bytes read plus written."""

    flops: int
    bytes: int


@dataclass(frozen=True)
class Estimate:
    """An instruction's time, what bounds it (compute, memory, launch, link, none) and a short note."""

    seconds: float
    bound: str
    flops: int = 0
    bytes: int = 0  # HBM bytes of a kernel; bytes on the link for a transfer
    note: str = ""


def _tensor_bytes(t: Attribute) -> int:
    return dtypes.nbytes(t) if isinstance(t, TensorType) else 0


def _numel(t: Attribute) -> int:
    return si.numel(to_tt(t)[0])


# ----------------------------------------------------------------------------------------------- flow ops
def _flops(op: FlowOp) -> int:
    name = op.name
    out_shape, _ = to_tt(op.results[0].type)
    n = si.numel(out_shape)
    attrs = op.attr_values()
    if name == "flow.fused":
        # Each body op runs once per output element of the kernel (a broadcast operand is recomputed).
        return sum(_flops(b) // max(1, _numel(b.results[0].type)) * n for b in op.body_ops())
    if name in ELEMENTWISE_FLOPS:
        return ELEMENTWISE_FLOPS[name] * n
    if name == "flow.gelu":
        return GELU_FLOPS[attrs["approximate"]] * n
    if name == "flow.matmul":
        lhs, _ = to_tt(op.operands[0].type)
        k = lhs[-2] if attrs["transpose_a"] else lhs[-1]
        return 2 * n * k  # one multiply-add per output element and contracted index
    if name in ("flow.reduce_sum", "flow.reduce_max", "flow.scatter_add"):
        return _numel(op.operands[0].type)  # one add (or max) per input element
    if name == "flow.reduce_mean":
        return _numel(op.operands[0].type) + n  # the sums, then one scale per result
    if name == "flow.softmax":
        shape = to_tt(op.operands[0].type)[0]
        rows = n // shape[si.normalize_axis(attrs["axis"], len(shape))] if n else 0
        return SOFTMAX_FLOPS[0] * n + SOFTMAX_FLOPS[1] * rows
    if name == "flow.layernorm":
        shape = to_tt(op.operands[0].type)[0]
        axes = si.normalize_axes(attrs["axes"], len(shape))
        width = si.numel([shape[a] for a in axes])
        rows = n // width if width else 0
        return LAYERNORM_FLOPS[0] * n + LAYERNORM_FLOPS[1] * rows
    if name == "flow.cross_entropy":
        logits = to_tt(op.operands[0].type)[0]
        rows = _numel(op.operands[1].type)
        combine = rows if attrs["reduction"] != "none" else 0
        return CROSS_ENTROPY_FLOPS[0] * si.numel(logits) + CROSS_ENTROPY_FLOPS[1] * rows + combine
    if name in DATA_MOVEMENT or name in SOURCES or name in FREE:
        return 0
    raise FirError(f"the cost model has no FLOP count for '{name}'", loc_of(op.location))


def _bytes(op: FlowOp) -> int:
    name = op.name
    out = _tensor_bytes(op.results[0].type)
    if name == "flow.fused":
        # One kernel: its intermediates stay in registers, so it reads its operands and writes its result once.
        return sum(_tensor_bytes(o.type) for o in op.operands) + out
    if name in FREE:
        return 0
    if name in SOURCES:
        return out  # writes only
    if name == "flow.slice":
        return 2 * out  # reads just the selected elements
    if name == "flow.gather":
        return _tensor_bytes(op.operands[1].type) + 2 * out  # indices, the selected rows, the result
    return sum(_tensor_bytes(o.type) for o in op.operands) + out


def op_cost(op: Operation) -> OpCost:
    """FLOPs and HBM bytes (read + written) of a flow op, from its operand and result types."""
    if not isinstance(op, FlowOp):
        raise FirError(f"op_cost prices flow ops, not '{op.name}'", loc_of(op.location))
    return OpCost(flops=_flops(op), bytes=_bytes(op))


def _compute_dtype(op: FlowOp) -> str:
    t = op.operands[0].type if op.operands else op.results[0].type
    return to_tt(t)[1]


def compute_estimate(op: Operation, hw: Hardware) -> Estimate:
    """Roofline time of a flow op: max(FLOPs / peak, bytes / HBM bandwidth) + launch overhead; what bounds it."""
    if op.name in FREE:
        return Estimate(0.0, NONE, 0, 0, "view")
    cost = op_cost(op)
    dev = hw.device
    rates = dev.matmul_flops if op.name == "flow.matmul" else dev.vector_flops
    t_compute = cost.flops / rates.of(_compute_dtype(op))
    t_memory = cost.bytes / dev.hbm_bandwidth
    terms = {COMPUTE: t_compute, MEMORY: t_memory, LAUNCH: dev.launch_overhead}
    bound = max(terms, key=lambda k: terms[k])
    return Estimate(max(t_compute, t_memory) + dev.launch_overhead, bound, cost.flops, cost.bytes)


def compute_time(op: Operation, hw: Hardware) -> float:
    """Roofline time of a flow op in seconds."""
    return compute_estimate(op, hw).seconds


# ----------------------------------------------------------------------------------------------- transfers
def collective_algorithm(kind: str, nbytes: int, group: Sequence[int], hw: Hardware) -> tuple[str, float]:
    """(algorithm, seconds) of a collective as NCCL's tuning model prices it: ring, or for all_reduce the faster
    of ring and tree (docs/hardware.md).

    nbytes is the tensor on one device that defines the collective's size: the operand for all_reduce,
    reduce_scatter and all_to_all, the (gathered) result for all_gather."""
    if kind not in COLLECTIVE_KINDS:
        raise FirError(f"unknown collective kind '{kind}' (one of {', '.join(COLLECTIVE_KINDS)})")
    p = len(group)
    if kind == "slice" or p <= 1:
        return "local", 0.0
    per_node = Counter(hw.node_of(d) for d in group)
    nodes, ppn = len(per_node), max(per_node.values())
    intra, inter = hw.links.intra_node, hw.links.inter_node
    beta = 1.0 / hw.group_link(group).bandwidth  # the slowest link a ring crosses sets its pace
    if kind == "all_to_all":
        # Every device sends n/p to each peer: the peers on its node over NVLink, the others through the NIC.
        latency = (ppn - 1) * intra.latency + (p - ppn) * inter.latency
        moved = max((ppn - 1) / p * nbytes / intra.bandwidth, (p - ppn) / p * nbytes / inter.bandwidth)
        return "pairwise", latency + moved
    # A ring of p steps per pass; the steps that cross a node boundary pay the network's latency.
    passes = 2 if kind == "all_reduce" else 1
    steps, crossing = passes * (p - 1), passes * (nodes - 1)
    ring = (steps - crossing) * intra.latency + crossing * inter.latency + steps / p * nbytes * beta
    if kind != "all_reduce":
        return "ring", ring
    # Tree: up and down a chain within each node and a binary tree across nodes; about 2n through each GPU
    # (NCCL gives tree half the per-step bus bandwidth). Within one node the chain never beats the ring.
    tree = 2 * ((ppn - 1) * intra.latency + math.ceil(math.log2(nodes)) * inter.latency) + 2 * nbytes * beta
    return ("tree", tree) if tree < ring else ("ring", ring)


def collective_time(kind: str, nbytes: int, group: Sequence[int], hw: Hardware) -> float:
    """Seconds for a collective of `kind` over `group` (device ids) whose defining tensor has nbytes."""
    return collective_algorithm(kind, nbytes, group, hw)[1]


def p2p_time(nbytes: int, src_device: int, dst_device: int, hw: Hardware) -> float:
    """Seconds to send nbytes from one device to another (a same-device send is an HBM copy)."""
    if src_device == dst_device:
        hw.node_of(src_device)
        return 2 * nbytes / hw.device.hbm_bandwidth
    link = hw.link(src_device, dst_device)
    return link.latency + nbytes / link.bandwidth


def copy_time(nbytes: int, direction: str, hw: Hardware) -> float:
    """Seconds to copy nbytes between host and device over the host link ("h2d" or "d2h")."""
    if direction not in ("h2d", "d2h"):
        raise FirError(f"a host copy's direction is 'h2d' or 'd2h', not '{direction}'")
    link = hw.links.host
    return link.latency + nbytes / link.bandwidth


# ----------------------------------------------------------------------------------------------- instructions
def _module_of(op: Operation) -> ModuleOp | None:
    top = op.get_toplevel_object()
    return top if isinstance(top, ModuleOp) else None


def _mesh_named(op: Operation, name: str):
    """A mesh an op names (its module declares it)."""
    module = _module_of(op)
    mesh = (meshes_of(module) if module is not None else {}).get(name)
    if mesh is None:
        raise FirError(f"'{op.name}' names mesh @{name}, which is not declared in its module", loc_of(op.location))
    return mesh


def _logical_collective(op: comm.CollectiveOp, device: int) -> tuple[list[int], int]:
    """(group, defining bytes) of a collective that names its mesh but no group (before partition)."""
    vals = op.attr_values()
    mesh = _mesh_named(op, vals["mesh"].name)
    axis, _, _ = op.transition()
    dev = device if device in mesh.devices else mesh.devices[0]
    coord = mesh.coord(dev)
    shape, dt = to_tt(op.operands[0].type)
    nd = vals["to"] if op.KIND == "all_gather" else vals["from"]
    local = local_shape(shape, nd, mesh.shape, coord)
    return mesh.group(dev, axis), si.numel(local) * dtypes.numpy_dtype(dt).itemsize


def _kernel_estimate(nbytes: int, hw: Hardware) -> Estimate:
    """A kernel that only moves nbytes through HBM (priced as compute_estimate prices a flow.slice or a fill)."""
    dev = hw.device
    t_memory = nbytes / dev.hbm_bandwidth
    bound = MEMORY if t_memory > dev.launch_overhead else LAUNCH
    return Estimate(t_memory + dev.launch_overhead, bound, 0, nbytes)


def _collective_estimate(op: comm.CollectiveOp, hw: Hardware, device: int) -> Estimate:
    if op.is_local and op.KIND == "slice":  # an SPMD program's B -> S: the device copies its piece
        return _kernel_estimate(2 * _tensor_bytes(op.results[0].type), hw)
    if op.is_local:
        vals = op.attr_values()
        if "group" in vals:
            group = list(vals["group"])
        else:  # an SPMD program's: the group follows from the mesh
            group = _mesh_named(op, vals["mesh"].name).group(device, op.transition()[0])
        t = op.results[0].type if op.KIND == "all_gather" else op.operands[0].type
        nbytes = _tensor_bytes(t)
    else:
        group, nbytes = _logical_collective(op, device)
    algo, seconds = collective_algorithm(op.KIND, nbytes, group, hw)
    if seconds == 0.0:
        return Estimate(0.0, NONE, 0, 0, algo)
    where = "intra-node" if len({hw.node_of(d) for d in group}) == 1 else "inter-node"
    return Estimate(seconds, LINK, 0, nbytes, f"{algo}, {len(group)} devices, {where}")


def instruction_estimate(op: Operation, hw: Hardware, device: int) -> Estimate:
    """Time and bound of any instruction of a device program or plan (or of a logical program) on `device`."""
    if isinstance(op, FlowOp):
        return compute_estimate(op, hw)
    if isinstance(op, comm.CollectiveOp):
        return _collective_estimate(op, hw, device)
    if isinstance(op, comm.SendOp):
        vals = op.attr_values()
        n = _tensor_bytes(op.operands[0].type)
        if "to_device" in vals:
            return Estimate(p2p_time(n, device, vals["to_device"], hw), LINK, 0, n, f"to device {vals['to_device']}")
        from fir.distribution.expansion import targets  # an SPMD program's: one send per peer, one after another

        peers = targets(_mesh_named(op, vals["mesh"].name), _mesh_named(op, vals["to_mesh"].name), device)
        return Estimate(sum(p2p_time(n, device, t, hw) for t in peers), LINK, 0, n * len(peers),
                        f"to devices {peers}")
    if isinstance(op, PositionOp):
        return _kernel_estimate(_tensor_bytes(op.results[0].type), hw)  # as the fill it becomes
    if isinstance(op, comm.RecvOp):
        return Estimate(0.0, NONE, 0, 0, "charged to the send")
    if isinstance(op, comm.SendRecvOp):
        vals = op.attr_values()
        src, dst = _mesh_named(op, vals["mesh"].name), _mesh_named(op, vals["to_mesh"].name)
        n = vals["bytes_per_device"]
        return Estimate(p2p_time(n, src.devices[0], dst.devices[0], hw), LINK, 0, n, "first devices of the meshes")
    if isinstance(op, plan.LoadOp):
        n = _tensor_bytes(op.results[0].type)
        return Estimate(copy_time(n, "h2d", hw), LINK, 0, n, "h2d")
    if isinstance(op, plan.StoreOp):
        n = _tensor_bytes(op.operands[0].type)
        return Estimate(copy_time(n, "d2h", hw), LINK, 0, n, "d2h")
    if isinstance(op, (plan.RecordOp, plan.WaitOp)):
        return Estimate(0.0, NONE, 0, 0, "event")
    raise FirError(f"the cost model has no time for '{op.name}'", loc_of(op.location))


def instruction_time(op: Operation, hw: Hardware, device: int) -> float:
    """Seconds one instruction of a device program or plan takes on `device`."""
    return instruction_estimate(op, hw, device).seconds


# ----------------------------------------------------------------------------------------------- memory
def memory_per_device(func: FuncOp) -> int:
    """Device bytes a function needs: its `arena_size` when planned, else the sum of the device tensors it holds."""
    arena = func.attributes.get(plan.ARENA_SIZE)
    if isinstance(arena, IntegerAttr):
        return int(arena.value.data)
    # In a plan the arguments and plan.store's copies are host tensors; a device program holds its arguments.
    on_host = is_host_value if is_plan(func) else (lambda v: False)
    total = 0
    block = func.body.blocks.first
    if block is not None:
        total += sum(_tensor_bytes(a.type) for a in block.args if not on_host(a))
    for op in func.body.ops:  # a flow.fused body's values live in registers
        total += sum(_tensor_bytes(r.type) for r in op.results if not on_host(r))
    return total


__all__ = ["OpCost", "Estimate", "op_cost", "compute_estimate", "compute_time", "collective_algorithm",
           "collective_time", "p2p_time", "copy_time", "instruction_estimate", "instruction_time",
           "memory_per_device", "ELEMENTWISE_FLOPS", "COLLECTIVE_KINDS"]

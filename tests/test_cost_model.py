"""The hardware model (presets, file errors) and the cost model (FLOPs, bytes, roofline, collectives, memory),
and the cost-report pass on a partitioned program."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import FuncOp

from fir.planning import cost_model as cm
from fir.syntax.diagnostics import FirError
from fir.dialects.flow import FLOW_OPS
from fir.syntax.printer import print_fir
from fir.syntax.frontend import parse_source
from fir.planning.hardware import load_hardware, parse_hardware, preset_names
from fir.passes.cost_report import CostReportPass
from fir.passes.insert_boxing import InsertBoxingPass
from fir.passes.partition import PartitionPass
from fir.passes.sbp_infer import SbpInferPass
from fir.distribution.placement import int_attr

ROOT = Path(__file__).resolve().parent.parent
NV = load_hardware("h100-nvlink")
IB = load_hardware("h100-ib")
MIB, GIB = 2**20, 2**30


def ops_of(text: str) -> dict[str, object]:
    """Parse a module; map each op's result name (or op name when it has none) to the op."""
    module = parse_source(text, "test.fir", "fir")
    out = {}
    for op in module.walk():
        if op.results and op.results[0].name_hint:
            out[op.results[0].name_hint] = op
    return out


def one(op_text: str, args: str) -> object:
    """The op %r of a one-op function."""
    return ops_of(f"func.func @f({args}) {{\n  %r = {op_text}\n  func.return %r\n}}\n")["r"]


# ----------------------------------------------------------------------------------------------- hardware
def test_presets_load_with_the_datasheet_figures():
    assert {"h100-nvlink", "h100-ib"} <= set(preset_names())
    assert NV.device.matmul_flops.bf16 == 989.4e12 and NV.device.matmul_flops.f32 == 66.9e12
    assert NV.device.hbm_bandwidth == 3.35e12 and NV.device.hbm_capacity == 80_000_000_000
    assert NV.links.intra_node.bandwidth == 450e9 and IB.links.inter_node.bandwidth == 50e9
    assert NV.links.host.bandwidth == 64e9
    assert NV.num_devices == 8 and IB.num_devices == 32
    assert IB.node_of(7) == 0 and IB.node_of(8) == 1 and IB.node_of(31) == 3
    assert NV.device.vector_flops.of("i1") == NV.device.vector_flops.i32


def test_node_of_rejects_devices_the_machine_lacks():
    with pytest.raises(FirError, match="device 8 is not in hardware 'h100-nvlink'"):
        NV.node_of(8)
    with pytest.raises(FirError):
        NV.node_of(-1)


def test_load_by_path_and_unknown_name(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text((ROOT / "fir/planning/presets/h100-ib.toml").read_text().replace('name = "h100-ib"', 'name = "mine"'))
    hw = load_hardware(str(p))
    assert hw.name == "mine" and hw.topology.nodes == 4 and hw.source == str(p)
    with pytest.raises(FirError, match="unknown hardware 'h100-pcie'.*h100-ib, h100-nvlink"):
        load_hardware("h100-pcie")
    with pytest.raises(FirError, match="cannot read hardware file"):
        load_hardware(str(tmp_path / "missing.toml"))


BASE = (ROOT / "fir/planning/presets/h100-nvlink.toml").read_text()


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.split("\n"), 1) if needle in line)


# (name, edit of the preset text, the text of the line the error must point at, message fragment)
BAD_FILES = [
    ("syntax", ("nodes = 1", "nodes = = 1"), "nodes = = 1", "invalid TOML"),
    ("unterminated string", ('name = "h100-nvlink"', 'name = "h100-nvlink'), 'name = "h100-nvlink', "invalid TOML"),
    ("missing key", ("hbm_bandwidth = 3.35e12", ""), "[device]", "missing key 'device.hbm_bandwidth'"),
    ("missing table", ("[links.host]\nbandwidth = 64e9\nlatency = 1.0e-6\n", ""), "[links.intra_node]",
     "missing table 'links.host'"),
    ("wrong type", ("nodes = 1", 'nodes = "one"'), 'nodes = "one"', "'topology.nodes' must be an integer, not a string"),
    ("bool", ("devices_per_node = 8", "devices_per_node = true"), "devices_per_node = true", "not a boolean"),
    ("negative", ("latency = 1.0e-6", "latency = -1.0e-6"), "latency = -1.0e-6", "must not be negative"),
    ("zero", ("hbm_bandwidth = 3.35e12", "hbm_bandwidth = 0"), "hbm_bandwidth = 0", "must be positive"),
    ("fraction", ("nodes = 1", "nodes = 1.5"), "nodes = 1.5", "whole number"),
    ("infinite", ("nodes = 1", "nodes = inf"), "nodes = inf", "finite"),
    ("unknown key", ("nodes = 1", "nodes = 1\nnodez = 2"), "nodez = 2", "unknown key 'topology.nodez'"),
    ("unknown table", ("[topology]", "[topologies]\nx = 1\n[topology]"), "[topologies]", "unknown key 'topologies'"),
    ("missing top-level table", ("[topology]\ndevices_per_node = 8\nnodes = 1", ""), "# One node",
     "missing table 'topology'"),
    ("not a table", ("[topology]\ndevices_per_node = 8\nnodes = 1", ""), "topology = 8", "'topology' must be a table"),
]


@pytest.mark.parametrize("case", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_hardware_files_give_located_errors(case, tmp_path):
    _, (old, new), line_text, fragment = case
    assert old in BASE
    text = BASE.replace(old, new, 1)
    if case[0] == "not a table":  # a top-level key must come before the first table header
        text = text.replace("[device]\n", "topology = 8\n[device]\n", 1)
    path = tmp_path / "hw.toml"
    path.write_text(text)
    with pytest.raises(FirError) as info:
        load_hardware(str(path))
    e = info.value
    assert fragment in e.message
    assert e.loc is not None and e.loc.filename == str(path)
    assert e.loc.line == _line_of(text, line_text), e.render()
    assert e.loc.col >= 1


def test_value_errors_point_at_the_value_in_an_inline_table():
    table = BASE[BASE.index("[device.vector_flops]"):BASE.index("[topology]")]
    text = BASE.replace(table, "").replace("launch_overhead = 3e-6", "launch_overhead = 3e-6\nvector_flops = "
                                           "{ f32 = 1e12, f16 = 2e12, bf16 = -1, f64 = 1e12, i32 = 1e12, i64 = 1e12 }", 1)
    with pytest.raises(FirError) as info:
        parse_hardware(text, "inline.toml")
    e = info.value
    line = _line_of(text, "vector_flops = {")
    assert "'device.vector_flops.bf16' must not be negative" in e.message
    assert (e.loc.line, e.loc.col) == (line, text.split("\n")[line - 1].index("-1") + 1)


# ----------------------------------------------------------------------------------------------- FLOPs and bytes
def test_matmul_flops_and_bytes():
    mm = one("flow.matmul %a, %b", "%a: tensor<64x128xf32>, %b: tensor<128x32xf32>")
    assert cm.op_cost(mm) == cm.OpCost(flops=2 * 64 * 32 * 128, bytes=(64 * 128 + 128 * 32 + 64 * 32) * 4)
    mm_t = one("flow.matmul %a, %b {transpose_a = true, transpose_b = true}",
               "%a: tensor<128x64xbf16>, %b: tensor<32x128xbf16>")
    assert cm.op_cost(mm_t).flops == 2 * 64 * 32 * 128
    assert cm.op_cost(mm_t).bytes == (64 * 128 + 128 * 32 + 64 * 32) * 2


def test_batch_matmul_flops():
    # gpt_block's q @ k^T: 12 heads of 128x64 @ 64x128.
    qk = one("flow.matmul %q, %k {transpose_b = true}", "%q: tensor<12x128x64xf32>, %k: tensor<12x128x64xf32>")
    assert cm.op_cost(qk).flops == 2 * 12 * 128 * 128 * 64 == 25165824
    bcast = one("flow.matmul %a, %b", "%a: tensor<3x5x6xf32>, %b: tensor<6x4xf32>")
    assert cm.op_cost(bcast).flops == 2 * 3 * 5 * 4 * 6


def test_softmax_layernorm_reduction_flops():
    sm = one("flow.softmax %x", "%x: tensor<4x8xf32>")
    assert cm.op_cost(sm).flops == 8 * 32 + 4 * 4  # 8 per element, 4 per row of 8
    sm0 = one("flow.softmax %x {axis = 0}", "%x: tensor<4x8xf32>")
    assert cm.op_cost(sm0).flops == 8 * 32 + 4 * 8  # 8 rows (columns) of 4
    assert cm.op_cost(sm).bytes == 2 * 32 * 4
    ln = one("flow.layernorm %x, %g, %b", "%x: tensor<4x8xf32>, %g: tensor<8xf32>, %b: tensor<8xf32>")
    assert cm.op_cost(ln) == cm.OpCost(flops=7 * 32 + 7 * 4, bytes=(32 + 8 + 8 + 32) * 4)
    mean = one("flow.reduce_mean %x {axes = [1]}", "%x: tensor<4x8xf32>")
    assert cm.op_cost(mean) == cm.OpCost(flops=32 + 4, bytes=(32 + 4) * 4)


def test_elementwise_and_layout_conventions():
    add = one("flow.add %a, %b", "%a: tensor<16x8xf32>, %b: tensor<8xf32>")
    assert cm.op_cost(add) == cm.OpCost(flops=128, bytes=(128 + 8 + 128) * 4)  # the broadcast operand read once
    gelu = one('flow.gelu %x {approximate = "tanh"}', "%x: tensor<10xf16>")
    assert cm.op_cost(gelu) == cm.OpCost(flops=120, bytes=40)
    reshape = one("flow.reshape %x : tensor<4x8xf32>", "%x: tensor<32xf32>")
    assert cm.op_cost(reshape) == cm.OpCost(0, 0) and cm.compute_time(reshape, NV) == 0.0
    sl = one("flow.slice %x {start = [0, 0], limit = [2, 8]}", "%x: tensor<4x8xf32>")
    assert cm.op_cost(sl) == cm.OpCost(0, 2 * 16 * 4)
    fill = one("flow.fill {value = 1.0} : tensor<4x8xbf16>", "")
    assert cm.op_cost(fill) == cm.OpCost(0, 64)
    gather = one("flow.gather %t, %i", "%t: tensor<100x16xf32>, %i: tensor<5xi32>")
    assert cm.op_cost(gather) == cm.OpCost(0, 5 * 4 + 2 * 5 * 16 * 4)


EVERY_OP = """
func.func @all(%x: tensor<4x8xf32>, %y: tensor<4x8xf32>, %v: tensor<8xf32>, %i: tensor<4xi32>,
               %w: tensor<8x8xf32>) -> tensor<4x8xf32> {
  %neg = flow.neg %x
  %exp = flow.exp %x
  %log = flow.log %x
  %sqrt = flow.sqrt %x
  %rsqrt = flow.rsqrt %x
  %tanh = flow.tanh %x
  %relu = flow.relu %x
  %sigmoid = flow.sigmoid %x
  %erf = flow.erf %x
  %gelu = flow.gelu %x
  %cast = flow.cast %x : tensor<4x8xbf16>
  %add = flow.add %x, %y
  %sub = flow.sub %x, %y
  %mul = flow.mul %x, %v
  %div = flow.div %x, %y
  %max = flow.max %x, %y
  %min = flow.min %x, %y
  %pow = flow.pow %x, %y
  %greater = flow.greater %x, %y
  %equal = flow.equal %x, %y
  %matmul = flow.matmul %x, %w
  %reduce_sum = flow.reduce_sum %x {axes = [1]}
  %reduce_mean = flow.reduce_mean %x {axes = [0]}
  %reduce_max = flow.reduce_max %x {axes = [0, 1]}
  %softmax = flow.softmax %x
  %layernorm = flow.layernorm %x, %v, %v
  %transpose = flow.transpose %x {perm = [1, 0]}
  %reshape = flow.reshape %x : tensor<32xf32>
  %broadcast_to = flow.broadcast_to %v : tensor<4x8xf32>
  %concat = flow.concat %x, %y {axis = 0}
  %slice = flow.slice %x {start = [0, 0], limit = [2, 8]}
  %gather = flow.gather %w, %i
  %scatter_add = flow.scatter_add %x, %i : tensor<6x8xf32>
  %constant = flow.constant {value = 0.5} : tensor<4x8xf32>
  %fill = flow.fill {value = 2.0} : tensor<4x8xf32>
  %iota = flow.iota {axis = 1} : tensor<4x8xi32>
  %cross_entropy = flow.cross_entropy %x, %i
  func.return %x
}
"""


def test_every_flow_op_has_a_cost():
    ops = ops_of(EVERY_OP)
    names = {op.name for op in FLOW_OPS}
    assert len(names) == 37 and {op.name for op in ops.values()} == names
    expected_flops = {"neg": 32, "exp": 128, "sigmoid": 320, "erf": 128, "gelu": 256, "cast": 32, "div": 160,
                      "pow": 288, "greater": 32, "equal": 32, "scatter_add": 32,
                      "matmul": 2 * 4 * 8 * 8, "reduce_sum": 32, "reduce_mean": 32 + 8, "reduce_max": 32,
                      "cross_entropy": 7 * 32 + 5 * 4 + 4, "transpose": 0, "iota": 0}
    for name, op in ops.items():
        cost = cm.op_cost(op)
        assert cost.flops >= 0 and cost.bytes >= 0
        if name in expected_flops:
            assert cost.flops == expected_flops[name], name
        t = cm.compute_time(op, NV)
        assert t == 0.0 if name == "reshape" else t >= NV.device.launch_overhead


# ----------------------------------------------------------------------------------------------- roofline
def test_roofline_bounds():
    big = one("flow.matmul %a, %b", "%a: tensor<4096x4096xbf16>, %b: tensor<4096x4096xbf16>")
    est = cm.compute_estimate(big, NV)
    assert est.bound == "compute"
    assert est.seconds == pytest.approx(2 * 4096**3 / 989.4e12 + 3e-6)
    ew = one("flow.add %a, %b", "%a: tensor<4096x4096xf32>, %b: tensor<4096x4096xf32>")
    est = cm.compute_estimate(ew, NV)
    assert est.bound == "memory"
    assert est.seconds == pytest.approx(3 * 4096 * 4096 * 4 / 3.35e12 + 3e-6)
    tiny = one("flow.exp %a", "%a: tensor<8xf32>")
    assert cm.compute_estimate(tiny, NV).bound == "launch"
    # fir's f32 is IEEE: f32 matmuls run at the FP32 rate, 14.8x slower than bf16 on tensor cores.
    big32 = one("flow.matmul %a, %b", "%a: tensor<4096x4096xf32>, %b: tensor<4096x4096xf32>")
    assert cm.compute_time(big32, NV) == pytest.approx(2 * 4096**3 / 66.9e12 + 3e-6)


# ----------------------------------------------------------------------------------------------- collectives
def test_all_reduce_within_a_node_is_a_ring_at_every_size():
    # NCCL's intra-node "tree" is a chain: as many latencies as the ring and twice the bytes, so never faster.
    group = list(range(8))
    a, b = NV.links.intra_node.latency, 1 / NV.links.intra_node.bandwidth
    for n in (1, MIB, GIB):
        algo, t = cm.collective_algorithm("all_reduce", n, group, NV)
        assert algo == "ring" and t == pytest.approx(14 * a + 2 * 7 / 8 * n * b)
    assert cm.collective_time("all_reduce", MIB, group, NV) == pytest.approx(14 * a + 2 * 7 / 8 * MIB * b)


def test_all_reduce_across_nodes_pays_the_network_latency_only_where_it_crosses():
    group = list(range(32))  # 4 nodes of 8 on h100-ib
    ai, ae = IB.links.intra_node.latency, IB.links.inter_node.latency
    b = 1 / IB.links.inter_node.bandwidth  # the NIC sets the pace of a ring that leaves the node
    ring = (62 - 6) * ai + 6 * ae + 62 / 32 * MIB * b
    tree = 2 * (7 * ai + 2 * ae) + 2 * MIB * b
    assert cm.collective_algorithm("all_reduce", MIB, group, IB) == ("tree", pytest.approx(tree))
    assert tree < ring
    # Two nodes: the tree saves 12 latencies of NVLink and costs 2/16 of n / B more; ring for large messages.
    two = list(range(16))
    saved = (30 - 2) * ai + 2 * ae - 2 * (7 * ai + 1 * ae)
    cross = saved / ((2 - 30 / 16) * b)
    assert cm.collective_algorithm("all_reduce", int(cross * 0.9), two, IB)[0] == "tree"
    assert cm.collective_algorithm("all_reduce", int(cross * 1.1), two, IB)[0] == "ring"
    # A ring all_gather over 2 nodes crosses the network once.
    assert cm.collective_time("all_gather", MIB, two, IB) == pytest.approx(14 * ai + ae + 15 / 16 * MIB * b)


def test_other_collectives_and_trivial_groups():
    group = [0, 1, 2, 3]
    a, b = NV.links.intra_node.latency, 1 / NV.links.intra_node.bandwidth
    for kind in ("reduce_scatter", "all_gather", "all_to_all"):
        assert cm.collective_time(kind, MIB, group, NV) == pytest.approx(3 * a + 3 / 4 * MIB * b)
    assert cm.collective_time("slice", GIB, group, NV) == 0.0
    assert cm.collective_time("all_reduce", GIB, [5], NV) == 0.0
    with pytest.raises(FirError, match="unknown collective kind 'broadcast'"):
        cm.collective_time("broadcast", MIB, group, NV)


def test_inter_node_is_slower_than_intra_node():
    intra, inter = list(range(8)), [0, 8, 16, 24, 1, 9, 17, 25]
    for n in (MIB, GIB):
        for kind in ("all_reduce", "reduce_scatter", "all_gather", "all_to_all"):
            assert cm.collective_time(kind, n, inter, IB) > cm.collective_time(kind, n, intra, IB)
    # all_to_all: 1 peer on the device's node, 6 elsewhere; the NIC carries 6/8 of the bytes.
    ai, ae = IB.links.intra_node.latency, IB.links.inter_node.latency
    assert cm.collective_time("all_to_all", GIB, inter, IB) == pytest.approx(ai + 6 * ae + 6 / 8 * GIB / 50e9)
    # One node of h100-ib is priced like h100-nvlink.
    assert cm.collective_time("all_reduce", GIB, intra, IB) == cm.collective_time("all_reduce", GIB, intra, NV)
    assert cm.p2p_time(MIB, 0, 8, IB) == pytest.approx(2.7e-6 + MIB / 50e9)
    assert cm.p2p_time(MIB, 0, 1, IB) == pytest.approx(0.6e-6 + MIB / 450e9)
    assert cm.copy_time(MIB, "h2d", NV) == cm.copy_time(MIB, "d2h", NV) == pytest.approx(1e-6 + MIB / 64e9)
    with pytest.raises(FirError, match="'h2d' or 'd2h'"):
        cm.copy_time(MIB, "d2d", NV)


# ----------------------------------------------------------------------------------------------- programs
def _distributed(path: str, passes) -> ModuleOp:
    module = parse_source((ROOT / path).read_text(), path, "fir")
    for p in passes:
        p().apply(Context(), module)
    return module


def test_instruction_time_on_partitioned_tp_mlp():
    module = _distributed("examples/tp_mlp.fir", (SbpInferPass, InsertBoxingPass, PartitionPass))
    dev0 = next(f for f in module.ops if isinstance(f, FuncOp) and f.sym_name.data == "mlp.dev0")
    ar = next(op for op in dev0.body.walk() if op.name == "comm.all_reduce")
    nbytes = 64 * 1024 * 4
    assert cm.instruction_time(ar, NV, 0) == pytest.approx(cm.collective_time("all_reduce", nbytes, [0, 1, 2, 3], NV))
    mm = next(op for op in dev0.body.walk() if op.name == "flow.matmul")
    assert cm.instruction_time(mm, NV, 0) == cm.compute_time(mm, NV)
    # The logical all_reduce (before partition) is priced on its mesh's group at the same local size.
    logical = _distributed("examples/tp_mlp.fir", (SbpInferPass, InsertBoxingPass))
    lar = next(op for op in logical.walk() if op.name == "comm.all_reduce")
    assert cm.instruction_time(lar, NV, 0) == pytest.approx(cm.instruction_time(ar, NV, 0))


def test_all_gather_prices_the_gathered_tensor():
    text = """sbp.mesh @m = [2]
func.func @f.dev0(%x: tensor<4x8xf32> {sbp = [S(0)], mesh = @m}) -> (tensor<8x8xf32> {sbp = [B], mesh = @m}) attributes {device = 0, of = @f} {
  %g = comm.all_gather %x {mesh = @m, from = [S(0)], to = [B], bytes_per_device = 128, group = [0, 1], id = 0} : tensor<8x8xf32>
  func.return %g : tensor<8x8xf32>
}
"""
    g = ops_of(text)["g"]
    assert cm.instruction_time(g, NV, 0) == pytest.approx(cm.collective_time("all_gather", 256, [0, 1], NV))


PLAN = """func.func @f.dev0(%x: tensor<256x1024xf32>) -> tensor<256x1024xf32> attributes {device = 0, schedule = "gpipe"} {
  %a = plan.load %x {stream = "h2d"} : tensor<256x1024xf32>
  plan.record {event = 0, stream = "h2d"}
  plan.wait {event = 0, stream = "compute"}
  %b = flow.exp %a {stream = "compute"} : tensor<256x1024xf32>
  comm.send %b {to_device = 1, id = 0, stream = "send"}
  %r = comm.recv {from_device = 1, id = 1, stream = "recv"} : tensor<256x1024xf32>
  %c = plan.store %r {stream = "d2h"} : tensor<256x1024xf32>
  func.return %c : tensor<256x1024xf32>
}
"""


def test_plan_instructions_and_memory():
    module = parse_source(PLAN, "plan.fir", "fir")
    func = next(f for f in module.ops if isinstance(f, FuncOp))
    times = {op.name: cm.instruction_time(op, NV, 0) for op in func.body.walk() if op.name != "func.return"}
    n = 256 * 1024 * 4
    assert times["plan.load"] == pytest.approx(cm.copy_time(n, "h2d", NV))
    assert times["plan.store"] == pytest.approx(cm.copy_time(n, "d2h", NV))
    assert times["comm.send"] == pytest.approx(cm.p2p_time(n, 0, 1, NV))
    assert times["comm.recv"] == times["plan.record"] == times["plan.wait"] == 0.0
    # Device memory: %a, %b, %r; the host argument and the stored host copy do not count.
    assert cm.memory_per_device(func) == 3 * n
    func.attributes["arena_size"] = int_attr(12345)
    assert cm.memory_per_device(func) == 12345


def test_memory_without_arena_sums_every_tensor():
    module = _distributed("examples/tp_mlp.fir", (SbpInferPass, InsertBoxingPass, PartitionPass))
    dev0 = next(f for f in module.ops if isinstance(f, FuncOp) and f.sym_name.data == "mlp.dev0")
    args = (64 * 1024 + 1024 * 1024 + 1024 + 1024 * 1024 + 1024) * 4
    values = 6 * 64 * 1024 * 4  # h_pre, h_bias, h, y_pre, y_pre.b, y
    assert cm.memory_per_device(dev0) == args + values


# ----------------------------------------------------------------------------------------------- the pass
def test_cost_report_prints_tables_and_keeps_the_ir(capsys):
    module = _distributed("examples/tp_mlp.fir", (SbpInferPass, InsertBoxingPass, PartitionPass))
    before = print_fir(module)
    CostReportPass(hardware="h100-ib").apply(Context(), module)
    assert print_fir(module) == before
    err = capsys.readouterr().err
    assert err.count("cost-report: @mlp.dev") == 4
    assert "on h100-ib" in err
    line = next(l for l in err.splitlines() if "%y_pre.b" in l)
    assert "comm.all_reduce" in line and "link" in line and "ring, 4 devices, intra-node" in line
    assert "memory per device:" in err


def test_cost_report_bad_hardware_is_located():
    module = parse_source(PLAN, "plan.fir", "fir")
    with pytest.raises(FirError) as info:
        CostReportPass(hardware="no-such-machine").apply(Context(), module)
    assert info.value.loc is not None and info.value.loc.filename == "plan.fir"
    assert "unknown hardware 'no-such-machine'" in info.value.message
    far = parse_source(PLAN.replace("to_device = 1", "to_device = 40"), "plan.fir", "fir")
    with pytest.raises(FirError) as info:
        CostReportPass(hardware="h100-ib").apply(Context(), far)
    assert info.value.loc is not None and info.value.loc.line == 6  # the comm.send
    assert "device 40 is not in hardware 'h100-ib'" in info.value.message


def test_gpt_block_matmuls_are_compute_bound_on_the_fp32_rate():
    module = parse_source((ROOT / "examples/gpt_block.fir").read_text(), "gpt_block.fir", "fir")
    mms = {op.results[0].name_hint: op for op in module.walk() if op.name == "flow.matmul"}
    fc = cm.compute_estimate(mms["fc_mm"], NV)
    assert fc.flops == 2 * 128 * 3072 * 768 and fc.bound == "compute"
    assert fc.seconds == pytest.approx(fc.flops / 66.9e12 + 3e-6)
    assert math.isclose(sum(cm.compute_time(op, NV) for op in mms.values()) * 1e6, 46.02, abs_tol=0.05)


def test_machines_are_sized_by_nodes():
    from fir.planning.hardware import load_hardware

    big = load_hardware("h100-ib:nodes=128")
    assert big.num_devices == 1024 and big.name == "h100-ib:nodes=128" and big.node_of(1023) == 127
    assert big.links == load_hardware("h100-ib").links  # the same node and links, more of them
    assert big.description.startswith("128 node(s) x 8 of h100-ib")
    grown = load_hardware("h100-nvlink", devices=20)  # a program on 20 devices: 3 nodes of 8
    assert grown.topology.nodes == 3 and grown.node_of(19) == 2
    assert load_hardware("h100-nvlink", devices=8).name == "h100-nvlink"  # big enough: unchanged
    with pytest.raises(FirError, match="device 8 is not in hardware 'h100-nvlink:nodes=1'"):
        load_hardware("h100-nvlink:nodes=1", devices=16).node_of(8)  # an explicit size is kept
    with pytest.raises(FirError, match="at least one node"):
        load_hardware("h100-ib:nodes=0")


def test_simulating_1024_devices_grows_the_preset():
    from fir.api import parse

    prog = parse("sbp.mesh @m = [1024]\n"
                 "func.func @f(%x: tensor<2048x64xf32> {sbp = [S(0)]}, %w: tensor<64x64xf32>) -> tensor<2048x64xf32>"
                 " attributes {mesh = @m} {\n  %y = flow.matmul %x, %w\n  func.return %y\n}\n", "big.fir")
    res = prog.simulate(hardware="h100-ib")
    assert res.hardware == "h100-ib:nodes=128" and len(res.devices) == 1024

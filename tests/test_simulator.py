"""The plan simulator: hand-written plans with hand-made durations (overlap, events, rendezvous, send/recv,
deadlock, memory), then compiled pipelines on a hardware model whose links cost nothing (bubble fraction against
(p-1)/(m+p-1), micro-batches in flight), data-parallel overlap against the serialised plan, and the trace."""

from __future__ import annotations

import json
import os

import pytest
from xdsl.ir import Operation

from fir.syntax.diagnostics import FirError
from fir.syntax.frontend import make_context, parse_source
from fir.planning.simulator import SimResult, format_report, simulate
from fir.planning.trace import write_trace

US = 1e-6
EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def _plan(text: str):
    return parse_source(text, "plan.fir")


def _by_name(table: dict[str, float]):
    """Durations in µs by the first result's name (else the op's name); anything else takes 0."""

    def durations(op: Operation, device: int) -> float:
        hints = [r.name_hint for r in op.results if r.name_hint]
        key = hints[0] if hints else op.name
        return table.get(f"{key}@{device}", table.get(key, 0.0)) * US

    return durations


def _event(result: SimResult, device: int, name: str):
    """The one trace event of `name` (an op name plus result, e.g. 'flow.matmul %a') on `device`."""
    found = [e for e in result.events if e.device == device and e.name == name]
    assert len(found) == 1, (name, found)
    return found[0]


_F32 = "tensor<64x64xf32>"

# ----------------------------------------------------------------------------------------------- hand-made plans
OVERLAP = f"""
sbp.mesh @m = [1]
func.func @main.dev0(%x: {_F32}) -> {_F32} attributes {{device = 0, of = @main, schedule = "1f1b"}} {{
  %xl = plan.load %x {{stream = "h2d"}}
  plan.record {{event = 0, stream = "h2d"}}
  plan.wait {{event = 0, stream = "compute"}}
  %a = flow.matmul %xl, %xl {{stream = "compute"}}
  plan.record {{event = 1, stream = "compute"}}
  plan.wait {{event = 1, stream = "comm"}}
  %r = comm.all_reduce %a {{mesh = @m, from = [P], to = [B], bytes_per_device = 16384, group = [0], id = 0,
                           stream = "comm"}} : {_F32}
  %b = flow.matmul %xl, %xl {{stream = "compute"}}
  plan.record {{event = 2, stream = "comm"}}
  plan.wait {{event = 2, stream = "compute"}}
  %c = flow.add %r, %b {{stream = "compute"}}
  plan.record {{event = 3, stream = "compute"}}
  plan.wait {{event = 3, stream = "d2h"}}
  %o = plan.store %c {{stream = "d2h"}}
  func.return %o : {_F32}
}}
"""
OVERLAP_TIMES = {"xl": 1, "a": 5, "r": 4, "b": 6, "c": 1, "o": 2}


def test_comm_overlaps_compute():
    module = _plan(OVERLAP)
    durations = _by_name(OVERLAP_TIMES)
    res = simulate(module, "main", None, durations=durations)
    # load 1, a 5 (ends 6), then r on comm (6..10) beside b on compute (6..12), c 12..13, store 13..15
    assert res.step_time == pytest.approx(15 * US)
    assert _event(res, 0, "comm.all_reduce %r").start_s == pytest.approx(6 * US)
    assert _event(res, 0, "flow.matmul %b").start_s == pytest.approx(6 * US)
    assert _event(res, 0, "flow.add %c").start_s == pytest.approx(12 * US)
    serial = simulate(module, "main", None, serial=True, durations=durations)
    assert serial.step_time == pytest.approx(sum(OVERLAP_TIMES.values()) * US)  # 19
    assert res.step_time < serial.step_time
    dev = res.devices[0]
    assert dev.busy["compute"] == pytest.approx(12 * US)
    assert dev.busy["comm"] == pytest.approx(4 * US)
    assert dev.compute_idle_fraction == pytest.approx(1 - 12 / 15)
    assert res.bubble_fraction is None  # no pipeline here


def test_wait_holds_its_stream_until_the_event():
    module = _plan(OVERLAP)
    slow_load = _by_name({**OVERLAP_TIMES, "xl": 7})
    res = simulate(module, "main", None, durations=slow_load)
    assert _event(res, 0, "flow.matmul %a").start_s == pytest.approx(7 * US)
    stall = _event(res, 0, "plan.wait event 0")
    assert (stall.start_s, stall.end_s) == pytest.approx((0.0, 7 * US))
    # Without the wait the compute stream would not have waited for the copy.
    no_wait = OVERLAP.replace('  plan.wait {event = 0, stream = "compute"}\n', "")
    res = simulate(_plan(no_wait), "main", None, durations=slow_load)
    assert _event(res, 0, "flow.matmul %a").start_s == 0.0


COLLECTIVE = """
sbp.mesh @m = [3]
""" + "".join(f"""
func.func @main.dev{d}(%x: {_F32}) attributes {{device = {d}, of = @main, schedule = "gpipe"}} {{
  %xl = plan.load %x {{stream = "h2d"}}
  plan.record {{event = 0, stream = "h2d"}}
  plan.wait {{event = 0, stream = "compute"}}
  %a = flow.relu %xl {{stream = "compute"}}
  plan.record {{event = 1, stream = "compute"}}
  plan.wait {{event = 1, stream = "comm"}}
  %r = comm.all_reduce %a {{mesh = @m, from = [P], to = [B], bytes_per_device = 16384, group = [0, 1, 2], id = 7,
                           stream = "comm"}} : {_F32}
  func.return
}}
""" for d in range(3))


def test_collective_waits_for_its_slowest_member():
    table = {"a@0": 1, "a@1": 9, "a@2": 4, "r@0": 2, "r@1": 2, "r@2": 3}
    res = simulate(_plan(COLLECTIVE), "main", None, durations=_by_name(table))
    for d in range(3):
        ev = _event(res, d, "comm.all_reduce %r")
        assert (ev.start_s, ev.end_s) == pytest.approx((9 * US, 12 * US))  # the slowest arrival, the longest time
    assert _event(res, 0, "comm.all_reduce %r").args["waited_us"] == pytest.approx(8)
    assert res.step_time == pytest.approx(12 * US)
    assert res.devices[0].busy["comm"] == pytest.approx(3 * US)  # waiting at the rendezvous is not busy


SEND_RECV = f"""
func.func @main.dev0(%x: {_F32}) attributes {{device = 0, of = @main, schedule = "gpipe"}} {{
  %xl = plan.load %x {{stream = "h2d"}}
  plan.record {{event = 0, stream = "h2d"}}
  plan.wait {{event = 0, stream = "compute"}}
  %a = flow.relu %xl {{stream = "compute", micro = 0}}
  plan.record {{event = 1, stream = "compute"}}
  plan.wait {{event = 1, stream = "send"}}
  comm.send %a {{to_device = 1, id = 0, stream = "send", micro = 0}}
  func.return
}}
func.func @main.dev1() -> {_F32} attributes {{device = 1, of = @main, schedule = "gpipe"}} {{
  %b = comm.recv {{from_device = 0, id = 0, stream = "recv", micro = 0}} : {_F32}
  plan.record {{event = 0, stream = "recv"}}
  plan.wait {{event = 0, stream = "compute"}}
  %c = flow.relu %b {{stream = "compute", micro = 0}}
  plan.record {{event = 1, stream = "compute"}}
  plan.wait {{event = 1, stream = "d2h"}}
  %o = plan.store %c {{stream = "d2h"}}
  func.return %o : {_F32}
}}
"""


def test_recv_ends_with_its_send():
    table = {"xl": 1, "a": 4, "comm.send": 3, "c": 2, "o": 1}
    res = simulate(_plan(SEND_RECV), "main", None, durations=_by_name(table))
    send, recv = _event(res, 0, "comm.send"), _event(res, 1, "comm.recv %b")
    assert (send.start_s, send.end_s) == pytest.approx((5 * US, 8 * US))
    assert (recv.start_s, recv.end_s) == pytest.approx((0.0, 8 * US))  # posted early, done when the data is
    assert recv.args["waited_for_send_us"] == pytest.approx(5)
    assert _event(res, 1, "flow.relu %c").start_s == pytest.approx(8 * US)
    assert res.step_time == pytest.approx(11 * US)
    assert res.devices[1].busy["recv"] == pytest.approx(3 * US)  # only while the data moves
    assert res.devices[0].busy["send"] == pytest.approx(3 * US)
    # A pipeline (it sends): the bubble is the mean idle compute time over the step.
    assert res.bubble_fraction == pytest.approx(((11 - 4) + (11 - 2)) / 2 / 11)
    assert [res.devices[d].max_micro_in_flight for d in (0, 1)] == [1, 1]


def test_recv_posted_late_takes_its_own_time():
    # Device 1's recv stream waits for 20 us of compute before it posts the receive; the data left at 7 us.
    late = SEND_RECV.replace('  %b = comm.recv', """  %x2l = plan.load %x2 {stream = "h2d"}
  plan.record {event = 5, stream = "h2d"}
  plan.wait {event = 5, stream = "compute"}
  %z = flow.relu %x2l {stream = "compute"}
  plan.record {event = 6, stream = "compute"}
  plan.wait {event = 6, stream = "recv"}
  %b = comm.recv""").replace("@main.dev1()", f"@main.dev1(%x2: {_F32})")
    res = simulate(_plan(late), "main", None, durations=_by_name({"a": 4, "comm.send": 3, "z": 20, "b": 1}))
    assert (_event(res, 1, "comm.recv %b").start_s, _event(res, 1, "comm.recv %b").end_s) == \
        pytest.approx((20 * US, 21 * US))


def test_a_send_nobody_receives_is_a_located_error():
    lost = SEND_RECV.replace("id = 0, stream = \"recv\"", "id = 1, stream = \"recv\"")
    with pytest.raises(FirError, match="the plans deadlock") as e:
        simulate(_plan(lost), "main", None, durations=_by_name({}))
    assert any("comm.recv id 1 from device 0, whose comm.send never runs" in n for n in e.value.notes)
    alone = SEND_RECV.split("func.func @main.dev1")[0]
    with pytest.raises(FirError, match="device 0 sends a value \\(id 0\\) to device 1, which never receives it") as e:
        simulate(_plan(alone), "main", None, durations=_by_name({}))
    assert e.value.loc is not None and e.value.loc.line == 9


def test_deadlock_is_a_located_error():
    # Each device receives before it sends: neither send can ever run in a serialised plan.
    swapped = SEND_RECV.replace(
        '  %xl = plan.load %x {stream = "h2d"}\n',
        f'  %xl = plan.load %x {{stream = "h2d"}}\n'
        f'  %w = comm.recv {{from_device = 1, id = 1, stream = "recv"}} : {_F32}\n'
    ).replace('  plan.record {event = 0, stream = "recv"}\n',
              '  plan.record {event = 0, stream = "recv"}\n  plan.wait {event = 0, stream = "send"}\n'
              '  comm.send %b {to_device = 0, id = 1, stream = "send"}\n')
    module = _plan(swapped)
    simulate(module, "main", None, durations=_by_name({}))  # on separate streams the two exchanges interleave
    with pytest.raises(FirError, match="deadlock") as info:
        simulate(module, "main", None, serial=True, durations=_by_name({}))
    err = info.value
    assert err.loc is not None and err.loc.filename == "plan.fir"
    assert any("comm.recv id 1 from device 1" in n for n in err.notes)
    assert any("comm.recv id 0 from device 0" in n for n in err.notes)


def test_collectives_in_opposite_orders_deadlock():
    two = COLLECTIVE.replace("[3]", "[2]").replace("group = [0, 1, 2]", "group = [0, 1]")
    two = two[:two.index("\nfunc.func @main.dev2")]
    # Device 1 runs a second collective (id 8) before id 7; device 0 runs id 7 first, then id 8.
    extra = '  %s = comm.all_reduce %xl {mesh = @m, from = [P], to = [B], bytes_per_device = 16384, group = [0, 1], ' \
            f'id = 8, stream = "comm"}} : {_F32}\n'
    dev0, dev1 = two.split("\nfunc.func @main.dev1")
    dev0 = dev0.replace("  func.return", extra + "  func.return")
    wait = '  plan.wait {event = 1, stream = "comm"}\n'
    dev1 = dev1.replace(wait, wait + extra)
    with pytest.raises(FirError, match="deadlock") as info:
        simulate(_plan(dev0 + "\nfunc.func @main.dev1" + dev1), "main", None, durations=_by_name({}))
    assert any("id 7 for devices [1]" in n for n in info.value.notes)


def test_memory_and_micro_batches_in_flight():
    text = f"""
func.func @main(%x: {_F32}, %y: {_F32}) -> {_F32} attributes {{schedule = "gpipe", arena_size = 65536}} {{
  %a = plan.load %x {{stream = "h2d", micro = 0, offset = 0}}
  %b = plan.load %y {{stream = "h2d", micro = 1, offset = 16384}}
  plan.record {{event = 0, stream = "h2d"}}
  plan.wait {{event = 0, stream = "compute"}}
  %c = flow.relu %a {{stream = "compute", micro = 0, offset = 32768}}
  %d = flow.relu %b {{stream = "compute", micro = 1, offset = 49152}}
  %f = flow.relu %c {{stream = "compute", micro = 0, offset = 0}}
  %e = flow.add %f, %d {{stream = "compute", offset = 16384}}
  plan.record {{event = 1, stream = "compute"}}
  plan.wait {{event = 1, stream = "d2h"}}
  %o = plan.store %e {{stream = "d2h"}}
  func.return %o : {_F32}
}}
"""
    times = dict.fromkeys("abcdefo", 1)
    res = simulate(_plan(text), "main", None, durations=_by_name(times))
    dev = res.devices[0]
    assert dev.arena_size == 65536 and res.peak_memory == {0: 65536}
    # Loads 0..2, then c, d, f, e one µs each from 2, the store 6..7. At most three 16 KiB buffers are live at
    # once (e.g. %d, %f, %e while %e is computed); the arguments and the stored copy live on the host.
    assert dev.peak_live_bytes == 3 * 16384
    # Micro-batch 0 works from %c (2..3) to %f (4..5), micro-batch 1 on %d (3..4); host copies do not count.
    assert dev.max_micro_in_flight == 2
    report = format_report(res)
    assert "step time 7.000 µs" in report and "64.00 KiB" in report and "48.00 KiB" in report
    # Storing %c instead keeps it live until the store, beside %d, %f and %e.
    late_store = text.replace("%o = plan.store %e", "%o = plan.store %c")
    res = simulate(_plan(late_store), "main", None, durations=_by_name(times))
    assert res.devices[0].peak_live_bytes == 4 * 16384


def test_unknown_entry_and_missing_plan():
    with pytest.raises(FirError, match="no function @nope in the program"):
        simulate(_plan(SEND_RECV), "nope", None, durations=_by_name({}))
    logical = parse_source(f"func.func @f(%x: {_F32}) -> {_F32} {{\n  %y = flow.relu %x\n  func.return %y\n}}\n")
    with pytest.raises(FirError, match="@f is not a plan \\(run the schedule and plan-memory passes\\)"):
        simulate(logical, "f", None, durations=_by_name({}))


def test_trace_is_chrome_trace_json(tmp_path):
    res = simulate(_plan(SEND_RECV), "main", None, durations=_by_name({"xl": 1, "a": 4, "comm.send": 3, "c": 2}))
    path = tmp_path / "sim.json"
    write_trace(res.events, str(path), res.trace_metadata())
    data = json.loads(path.read_text())
    events = data["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == len(res.events) > 0
    for e in complete:
        assert {"name", "ph", "ts", "dur", "pid", "tid"} <= set(e)
        assert e["dur"] >= 0 and isinstance(e["ts"], float)
    names = {(e["pid"], e["args"]["name"]) for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {(1, "device 0"), (2, "device 1")}  # pid 0 is the idle task in Perfetto
    threads = {(e["pid"], e["args"]["name"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert (2, "recv") in threads and (1, "send") in threads
    assert all(e["pid"] > 0 and e.get("tid", 1) > 0 for e in events)
    relu = next(e for e in complete if e["name"] == "flow.relu %c")
    assert relu["ts"] == pytest.approx(8.0) and relu["dur"] == pytest.approx(2.0)  # microseconds
    assert data["otherData"]["simulated"] is True


# ----------------------------------------------------------------------------------------------- compiled plans
def _hardware(tmp_path, name: str, host_free: bool, links_free: bool) -> str:
    """A copy of the h100-nvlink preset whose host link (and, with links_free, every link and the kernel launch
    overhead) costs nothing; returns its path."""
    from fir.planning.hardware import load_hardware

    text = open(load_hardware("h100-nvlink").source, encoding="utf-8").read()
    out, section = [], ""
    for line in text.split("\n"):
        if line.startswith("["):
            section = line.strip()
        free = (links_free and section.startswith("[links.")) or (host_free and section == "[links.host]")
        key = line.split("=")[0].strip()
        if line.startswith("name ="):
            line = f'name = "{name}"'
        elif free and key == "bandwidth":
            line = "bandwidth = 1e30"
        elif free and key == "latency":
            line = "latency = 0.0"
        elif links_free and key == "launch_overhead":
            line = "launch_overhead = 0.0"
        out.append(line)
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(out), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def free_links(tmp_path_factory) -> str:
    """Hardware whose transfers and host copies take no time and whose kernels have no launch overhead."""
    return _hardware(tmp_path_factory.mktemp("hw"), "free-links", host_free=True, links_free=True)


def _compile(module, micro: int, order: str):
    """microbatch{count}, sbp-infer, insert-boxing, partition, schedule{order} on a parsed module."""
    from fir.passes import microbatch, schedule
    from fir.passes import DISTRIBUTION_PIPELINE, available_passes

    ctx = make_context()
    if micro > 1:
        microbatch.MicrobatchPass(count=micro).apply(ctx, module)
    for name in DISTRIBUTION_PIPELINE:
        available_passes()[name]()().apply(ctx, module)
    schedule.SchedulePass(order=order).apply(ctx, module)
    return module


# Four stages of one 256x256 layer each, forward and a hand-written backward (the input gradient and the weight
# gradient, both matmuls; stage 0 computes the input gradient too, unused, so that it does what the others do).
# Micro-batches are wide (4096+ rows) so the matmuls dwarf the accumulation of the weight gradients over
# micro-batches, and every stage costs the same: the bubble must be (p-1)/(m+p-1).
UNIFORM4 = """
sbp.mesh @s0 = [1]
sbp.mesh @s1 = [1] {devices = [1]}
sbp.mesh @s2 = [1] {devices = [2]}
sbp.mesh @s3 = [1] {devices = [3]}
func.func @step(%x: tensor<32768x256xf32> {microbatch = 0}, %w0: tensor<256x256xf32>,
                %w1: tensor<256x256xf32> {mesh = @s1}, %w2: tensor<256x256xf32> {mesh = @s2},
                %w3: tensor<256x256xf32> {mesh = @s3})
    -> (tensor<256x256xf32>, tensor<256x256xf32> {mesh = @s1}, tensor<256x256xf32> {mesh = @s2},
        tensor<256x256xf32> {mesh = @s3}) attributes {mesh = @s0} {
  %h1 = flow.matmul %x, %w0
  %h2 = flow.matmul %h1, %w1 {mesh = @s1}
  %h3 = flow.matmul %h2, %w2 {mesh = @s2}
  %y = flow.matmul %h3, %w3 {mesh = @s3}
  %dw3 = flow.matmul %h3, %y {transpose_a = true, mesh = @s3}
  %g3 = flow.matmul %y, %w3 {transpose_b = true, mesh = @s3}
  %dw2 = flow.matmul %h2, %g3 {transpose_a = true, mesh = @s2}
  %g2 = flow.matmul %g3, %w2 {transpose_b = true, mesh = @s2}
  %dw1 = flow.matmul %h1, %g2 {transpose_a = true, mesh = @s1}
  %g1 = flow.matmul %g2, %w1 {transpose_b = true, mesh = @s1}
  %dw0 = flow.matmul %x, %g1 {transpose_a = true}
  %g0 = flow.matmul %g1, %w0 {transpose_b = true}
  func.return %dw0, %dw1, %dw2, %dw3
}
"""


@pytest.mark.parametrize("micro", [4, 8])
def test_pipeline_bubble_matches_the_formula(free_links, micro):
    p = 4
    results = {}
    for order in ("gpipe", "1f1b"):
        res = simulate(_compile(parse_source(UNIFORM4, "uniform4.fir"), micro, order), "step", free_links)
        assert res.hardware == "free-links"
        for d in res.devices.values():  # the links and copies really are free
            assert sum(d.busy.get(s, 0.0) for s in ("send", "recv", "h2d", "d2h")) < 1e-12
        assert res.bubble_fraction == pytest.approx((p - 1) / (micro + p - 1), abs=0.005)
        results[order] = res
    gpipe, one_f_one_b = results["gpipe"], results["1f1b"]
    assert one_f_one_b.step_time == pytest.approx(gpipe.step_time, rel=1e-3)  # the same bubble, the same step
    assert gpipe.devices[0].max_micro_in_flight == micro
    assert one_f_one_b.devices[0].max_micro_in_flight == p
    assert all(d.max_micro_in_flight <= p for d in one_f_one_b.devices.values())


def test_1f1b_keeps_less_in_memory_than_gpipe(free_links):
    # Stage 0 keeps each micro-batch's input (4 MiB at m = 8) until its backward: GPipe all 8 of them, 1F1B the
    # p = 4 in flight and the one being loaded. The arenas plan-memory sizes say so, and so does the replay.
    from fir.compile import compile_plan

    p, micro = 4, 8
    x_bytes = 32768 // micro * 256 * 4
    runs = {order: simulate(compile_plan(parse_source(UNIFORM4, "uniform4.fir"), micro, order), "step", free_links)
            for order in ("gpipe", "1f1b")}
    gpipe, one_f_one_b = runs["gpipe"].devices[0], runs["1f1b"].devices[0]
    assert gpipe.arena_size - one_f_one_b.arena_size >= (micro - p - 1) * x_bytes
    assert gpipe.peak_live_bytes - one_f_one_b.peak_live_bytes >= (micro - p - 1) * x_bytes
    assert gpipe.arena_size >= micro * x_bytes > one_f_one_b.arena_size
    # Further down the pipeline fewer micro-batches are in flight, and less memory is needed.
    arenas = [runs["1f1b"].devices[d].arena_size for d in range(p)]
    assert arenas == sorted(arenas, reverse=True) and arenas[0] > arenas[-1]


PIPELINE4 = os.path.join(EXAMPLES, "pipeline4_train_mlp.fir")


@pytest.mark.parametrize("micro", [4, 8])
def test_example_pipeline(free_links, micro):
    from fir.syntax.frontend import load_file

    p = 4
    results = {order: simulate(_compile(load_file(PIPELINE4)[0], micro, order), "train_step", free_links)
               for order in ("gpipe", "1f1b")}
    gpipe, one_f_one_b = results["gpipe"], results["1f1b"]
    assert gpipe.devices[0].max_micro_in_flight == micro
    assert one_f_one_b.devices[0].max_micro_in_flight == p
    assert one_f_one_b.bubble_fraction == pytest.approx(gpipe.bubble_fraction, abs=0.005)
    # Under the roofline cost model this example's stages are not uniform enough for the formula to hold
    # tightly: with 16 (m=4) or 8 (m=8) rows per micro-batch every matmul is bound by reading its 256x256
    # weight, the accumulation of each weight gradient over micro-batches (a 256x256 add) costs more than a
    # matmul, and the loss adds to the last stage. The bubble stays below (p-1)/(m+p-1), and not far below.
    formula = (p - 1) / (micro + p - 1)
    assert formula - 0.1 < gpipe.bubble_fraction < formula


# Data parallel on 2 devices, a training-like step: the all-reduce of the second layer's weight gradient is
# issued once the gradient exists and can run on the comm stream while the compute stream does the input
# gradient; the first layer's all-reduce has nothing left to hide behind.
DATA_PARALLEL = """
sbp.mesh @dp = [2]
func.func @main(%x: tensor<4096x1024xf32> {sbp = [S(0)]}, %w0: tensor<1024x1024xf32>, %w1: tensor<1024x1024xf32>)
    -> (tensor<1024x1024xf32>, tensor<1024x1024xf32>) attributes {mesh = @dp} {
  %h = flow.matmul %x, %w0
  %y = flow.matmul %h, %w1
  %dw1 = flow.matmul %h, %y {transpose_a = true}
  %g = flow.matmul %y, %w1 {transpose_b = true}
  %w1n = flow.sub %w1, %dw1 {sbp = [B]}
  %dw0 = flow.matmul %x, %g {transpose_a = true}
  %w0n = flow.sub %w0, %dw0 {sbp = [B]}
  func.return %w0n, %w1n
}
"""


def test_data_parallel_all_reduce_overlaps_backward(tmp_path):
    module = _compile(parse_source(DATA_PARALLEL, "dp.fir"), 1, "1f1b")
    hw = _hardware(tmp_path, "nvlink-free-host", host_free=True, links_free=False)
    overlapped = simulate(module, "main", hw)
    serial = simulate(module, "main", hw, serial=True)
    assert overlapped.step_time < serial.step_time
    reduce_dw1 = _event(overlapped, 0, "comm.all_reduce %dw1.b")
    matmul_g = _event(overlapped, 0, "flow.matmul %g")
    assert reduce_dw1.end_s - reduce_dw1.start_s > 1e-6  # a real transfer on NVLink
    assert matmul_g.start_s <= reduce_dw1.start_s and reduce_dw1.end_s <= matmul_g.end_s  # hidden under %g
    # Serialised, that all-reduce is exactly what the step gains.
    assert serial.step_time - overlapped.step_time == pytest.approx(reduce_dw1.end_s - reduce_dw1.start_s, rel=1e-6)
    for d in overlapped.devices.values():
        assert d.busy["comm"] > 0 and d.compute_idle_fraction < serial.devices[d.device].compute_idle_fraction
    assert "streams overlap" in format_report(overlapped)
    assert "serialised" in format_report(serial)


def test_in_place_buffers_count_once():
    text = f"""
func.func @main(%x: {_F32}) -> {_F32} attributes {{schedule = "gpipe", arena_size = 16384}} {{
  %a = plan.load %x {{stream = "h2d", offset = 0}}
  plan.record {{event = 0, stream = "h2d"}}
  plan.wait {{event = 0, stream = "compute"}}
  %c = flow.relu %a {{stream = "compute", offset = 0}}
  plan.record {{event = 1, stream = "compute"}}
  plan.wait {{event = 1, stream = "d2h"}}
  %o = plan.store %c {{stream = "d2h"}}
  func.return %o : {_F32}
}}
"""
    res = simulate(_plan(text), "main", None, durations=_by_name({"a": 1, "c": 1, "o": 1}))
    assert res.devices[0].peak_live_bytes == 16384  # %c overwrites %a
    apart = text.replace('"compute", offset = 0', '"compute", offset = 16384').replace("arena_size = 16384", "arena_size = 32768")
    res = simulate(_plan(apart), "main", None, durations=_by_name({"a": 1, "c": 1, "o": 1}))
    assert res.devices[0].peak_live_bytes == 32768


def test_planned_memory_holds_the_simulated_peak():
    from fir.compile import compile_plan
    from fir.syntax.frontend import load_file

    planned = compile_plan(load_file(PIPELINE4)[0], microbatches=4, order="1f1b")
    res = simulate(planned, "train_step", "h100-nvlink")
    for d in res.devices.values():
        assert d.arena_size is not None and 0 < d.peak_live_bytes <= d.arena_size
    assert res.peak_memory == {d: s.arena_size for d, s in res.devices.items()}
    assert "arena" in format_report(res) and "KiB" in format_report(res)

"""The plan executor: arenas, streams, events, collectives and send/recv on the numpy backend. A correct plan
gives the reference's numbers in every interleaving; a plan missing an event, or with an offset on a live
buffer, gives wrong numbers (checked by mutating plans)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, i64
from xdsl.dialects.func import FuncOp
from xdsl.ir import Operation

from fir.syntax.diagnostics import FirError
from fir.dialects.plan import ARENA_SIZE, OFFSET, LoadOp, RecordOp, StoreOp, WaitOp
from fir.compile import distribute
from fir.runtime.compare import compare_all
from fir.dialects.dtypes import dtype_name, nbytes, numpy_dtype
from fir.syntax.frontend import make_context, parse_source, verify_module
from fir.passes import available_passes
from fir.dialects.sbp import meshes_of
from fir.distribution.expansion import expand_module
from fir.distribution.placement import placed_functions, program_devices
from fir.passes import SPMD_PIPELINE
from fir.planning.plan_ir import HappensBefore, event_of, instructions, is_plan, stream_of
from fir.runtime.inputs import random_inputs
from fir.runtime.interpreter import find_function, run_function
from fir.runtime.plan_executor import PlanOrder, execute_plan
from fir.planning.trace import write_trace

EXAMPLES = sorted(Path(__file__).resolve().parent.parent.joinpath("examples").glob("*.fir"))

# ----------------------------------------------------------------------------------------------- hand-written plans
# h = x w; r = relu(h) (in place over h); y = r + x (in place over r, so it must wait for r's store: a
# write-after-read event from d2h to compute).
CHAIN_LOGICAL = """
func.func @main(%x: tensor<4x8xf32>, %w: tensor<8x8xf32>) -> (tensor<4x8xf32>, tensor<4x8xf32>) {
  %h = flow.matmul %x, %w
  %r = flow.relu %h
  %y = flow.add %r, %x
  func.return %r, %y
}
"""
CHAIN_PLAN = """
func.func @main(%x: tensor<4x8xf32>, %w: tensor<8x8xf32>) -> (tensor<4x8xf32>, tensor<4x8xf32>)
    attributes {schedule = "gpipe", arena_size = 512} {
  %x.in = plan.load %x {stream = "h2d", offset = 0} : tensor<4x8xf32>
  %w.in = plan.load %w {stream = "h2d", offset = 128} : tensor<8x8xf32>
  plan.record {event = 0, stream = "h2d"}
  plan.wait {event = 0, stream = "compute"}
  %h = flow.matmul %x.in, %w.in {stream = "compute", offset = 384} : tensor<4x8xf32>
  %r = flow.relu %h {stream = "compute", offset = 384} : tensor<4x8xf32>
  plan.record {event = 1, stream = "compute"}
  plan.wait {event = 1, stream = "d2h"}
  %r.out = plan.store %r {stream = "d2h"} : tensor<4x8xf32>
  plan.record {event = 2, stream = "d2h"}
  plan.wait {event = 2, stream = "compute"}
  %y = flow.add %r, %x.in {stream = "compute", offset = 384} : tensor<4x8xf32>
  plan.record {event = 3, stream = "compute"}
  plan.wait {event = 3, stream = "d2h"}
  %y.out = plan.store %y {stream = "d2h"} : tensor<4x8xf32>
  func.return %r.out, %y.out : tensor<4x8xf32>, tensor<4x8xf32>
}
"""

# Device 0 computes relu(x) and sends it to device 1, which multiplies it by w.
P2P_LOGICAL = """
sbp.mesh @s0 = [1]
sbp.mesh @s1 = [1] {devices = [1]}
func.func @main(%x: tensor<4x8xf32>, %w: tensor<8x8xf32> {mesh = @s1}) -> (tensor<4x8xf32> {mesh = @s1})
    attributes {mesh = @s0} {
  %h = flow.relu %x
  %y = flow.matmul %h, %w {mesh = @s1}
  func.return %y
}
"""
P2P_PLAN = """
sbp.mesh @s0 = [1]
sbp.mesh @s1 = [1] {devices = [1]}
func.func @main.dev0(%x: tensor<4x8xf32> {sbp = [B], mesh = @s0})
    attributes {device = 0, of = @main, args = [0], results = [], schedule = "gpipe", arena_size = 256} {
  %x.in = plan.load %x {stream = "h2d", offset = 0} : tensor<4x8xf32>
  plan.record {event = 0, stream = "h2d"}
  plan.wait {event = 0, stream = "compute"}
  %h = flow.relu %x.in {stream = "compute", offset = 128} : tensor<4x8xf32>
  plan.record {event = 1, stream = "compute"}
  plan.wait {event = 1, stream = "send"}
  comm.send %h {to_device = 1, id = 0, stream = "send"}
  func.return
}
func.func @main.dev1(%w: tensor<8x8xf32> {sbp = [B], mesh = @s1}) -> (tensor<4x8xf32> {sbp = [B], mesh = @s1})
    attributes {device = 1, of = @main, args = [1], schedule = "gpipe", arena_size = 512} {
  %w.in = plan.load %w {stream = "h2d", offset = 0} : tensor<8x8xf32>
  plan.record {event = 0, stream = "h2d"}
  %h.b = comm.recv {from_device = 0, id = 0, stream = "recv", offset = 256} : tensor<4x8xf32>
  plan.record {event = 1, stream = "recv"}
  plan.wait {event = 1, stream = "compute"}
  plan.wait {event = 0, stream = "compute"}
  %y = flow.matmul %h.b, %w.in {stream = "compute", offset = 384} : tensor<4x8xf32>
  plan.record {event = 2, stream = "compute"}
  plan.wait {event = 2, stream = "d2h"}
  %y.out = plan.store %y {stream = "d2h"} : tensor<4x8xf32>
  func.return %y.out : tensor<4x8xf32>
}
"""

# Megatron's row-parallel matmul: partial sums all-reduced, then relu written over the loaded inputs' bytes.
ALLREDUCE_LOGICAL = """
sbp.mesh @tp = [2]
func.func @main(%x: tensor<4x8xf32> {sbp = [S(1)]}, %w: tensor<8x6xf32> {sbp = [S(0)]})
    -> (tensor<4x6xf32> {sbp = [B]}) attributes {mesh = @tp} {
  %y = flow.matmul %x, %w
  %z = flow.relu %y
  func.return %z
}
"""
_ALLREDUCE_DEVICE = """
func.func @main.devD(%x: tensor<4x4xf32> {sbp = [S(1)], mesh = @tp}, %w: tensor<4x6xf32> {sbp = [S(0)], mesh = @tp})
    -> (tensor<4x6xf32> {sbp = [B], mesh = @tp}) attributes {device = D, of = @main, schedule = "gpipe",
                                                          arena_size = 352} {
  %x.in = plan.load %x {stream = "h2d", offset = 0} : tensor<4x4xf32>
  %w.in = plan.load %w {stream = "h2d", offset = 64} : tensor<4x6xf32>
  plan.record {event = 0, stream = "h2d"}
  plan.wait {event = 0, stream = "compute"}
  %y = flow.matmul %x.in, %w.in {stream = "compute", offset = 160} : tensor<4x6xf32>
  plan.record {event = 1, stream = "compute"}
  plan.wait {event = 1, stream = "comm"}
  %y.b = comm.all_reduce %y {mesh = @tp, from = [P], to = [B], bytes_per_device = 96, group = [0, 1], id = 0,
                             stream = "comm", offset = 256} : tensor<4x6xf32>
  plan.record {event = 2, stream = "comm"}
  plan.wait {event = 2, stream = "compute"}
  %z = flow.relu %y.b {stream = "compute", offset = 0} : tensor<4x6xf32>
  plan.record {event = 3, stream = "compute"}
  plan.wait {event = 3, stream = "d2h"}
  %z.out = plan.store %z {stream = "d2h"} : tensor<4x6xf32>
  func.return %z.out : tensor<4x6xf32>
}
"""
ALLREDUCE_PLAN = "sbp.mesh @tp = [2]\n" + "".join(_ALLREDUCE_DEVICE.replace("D", str(d)) for d in (0, 1))

HAND = {"chain": (CHAIN_LOGICAL, CHAIN_PLAN), "send_recv": (P2P_LOGICAL, P2P_PLAN),
        "all_reduce": (ALLREDUCE_LOGICAL, ALLREDUCE_PLAN)}
# Every event of every hand-written plan: (plan, function, event).
HAND_EVENTS = [("chain", "main", e) for e in range(4)] + [("send_recv", "main.dev0", e) for e in range(2)] \
    + [("send_recv", "main.dev1", e) for e in range(3)] + [("all_reduce", f"main.dev{d}", e) for d in (0, 1)
                                                          for e in range(4)]


def _parse(text: str, name: str = "plan.fir") -> ModuleOp:
    module = parse_source(text, name)
    verify_module(module)
    return module


def _hand(name: str):
    """(plan module, inputs, reference results, result dtypes) of a hand-written plan."""
    logical_text, plan_text = HAND[name]
    logical = _parse(logical_text, "logical.fir")
    func = find_function(logical, "main")
    inputs = random_inputs(func, 7)
    return _parse(plan_text), inputs, run_function(logical, func, inputs), _types(func)


def _types(func: FuncOp) -> list[str]:
    return [dtype_name(t.element_type) for t in func.function_type.outputs.data]


def _ok(got, want, types) -> bool:
    return len(got) == len(want) and all(c.ok for c in compare_all(got, want, types))


def _func(module: ModuleOp, name: str) -> FuncOp:
    return next(f for f in module.ops if isinstance(f, FuncOp) and f.sym_name.data == name)


def _drop_event(module: ModuleOp, func_name: str, event: int) -> ModuleOp:
    """A copy of the module without the record and waits of one event of one function."""
    out = module.clone()
    for op in instructions(_func(out, func_name)):
        if isinstance(op, (RecordOp, WaitOp)) and event_of(op) == event:
            op.parent_block().erase_op(op)  # type: ignore[union-attr]
    return out


def _defining(func: FuncOp, hint: str) -> Operation:
    return next(op for op in instructions(func) if op.results and op.results[0].name_hint == hint)


def _outcome(module: ModuleOp, inputs, want, types, entry: str = "main", **kw) -> bool:
    """Whether the run gives the reference's results (a FirError from gathering inconsistent pieces, or from a
    kernel fed garbage, counts as wrong)."""
    try:
        return _ok(execute_plan(module, entry, inputs, **kw).outputs, want, types)
    except FirError:
        return False


def _line(text: str, needle: str) -> int:
    """The 1-based line of `text` that holds `needle`."""
    return next(k for k, line in enumerate(text.split("\n"), 1) if needle in line)


# ----------------------------------------------------------------------------------------------- correct plans
RUNS = [("in-order", 0)] + [("random", s) for s in range(4)] + [("adversarial", s) for s in range(3)]


@pytest.mark.parametrize("name", sorted(HAND))
@pytest.mark.parametrize("interleaving,seed", RUNS)
def test_hand_written_plans_match_the_reference(name, interleaving, seed):
    module, inputs, want, types = _hand(name)
    run = execute_plan(module, "main", inputs, interleaving=interleaving, seed=seed)
    assert _ok(run.outputs, want, types), (name, interleaving, seed)
    assert len(run.order) == sum(len(instructions(f)) for f in module.ops if isinstance(f, FuncOp))


def test_one_arena_per_device_of_the_planned_size():
    module, inputs, _, _ = _hand("send_recv")
    assert execute_plan(module, "main", inputs, interleaving="in-order").arena_size == {0: 256, 1: 512}


def test_reading_before_the_producer_ran_reads_the_poison():
    module, inputs, _, _ = _hand("chain")
    # Without event 0 the matmul may run before the loads: it reads 0xFF bytes, NaN as f32, and NaN flows out.
    r, y = execute_plan(_drop_event(module, "main", 0), "main", inputs, interleaving="adversarial").outputs
    assert np.isnan(r).all() and np.isnan(y).all()
    assert not np.isnan(execute_plan(module, "main", inputs, interleaving="adversarial").outputs[0]).any()


def test_random_interleavings_differ_and_in_order_takes_the_lowest_device_first():
    module, inputs, _, _ = _hand("all_reduce")
    orders = {tuple(execute_plan(module, "main", inputs, interleaving="random", seed=s).order) for s in range(8)}
    assert len(orders) > 1
    in_order = execute_plan(module, "main", inputs, interleaving="in-order").order
    assert in_order[:3] == [(0, "h2d", 0), (0, "h2d", 1), (0, "h2d", 2)]


DEAD_VALUE_PLAN = """
func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> attributes {schedule = "gpipe", arena_size = 32} {
  %x.in = plan.load %x {stream = "h2d", offset = 0} : tensor<4xf32>
  plan.record {event = 0, stream = "h2d"}
  plan.wait {event = 0, stream = "compute"}
  %dead = flow.neg %x.in {stream = "compute", offset = 16} : tensor<4xf32>
  %y = flow.exp %x.in {stream = "compute", offset = 16} : tensor<4xf32>
  plan.record {event = 1, stream = "compute"}
  plan.wait {event = 1, stream = "d2h"}
  %y.out = plan.store %y {stream = "d2h"} : tensor<4xf32>
  func.return %y.out : tensor<4xf32>
}
"""


@pytest.mark.parametrize("interleaving", ["in-order", "random", "adversarial"])
def test_a_value_nothing_reads_may_be_overwritten(interleaving):
    x = np.linspace(-1, 1, 4, dtype=np.float32)
    (y,) = execute_plan(_parse(DEAD_VALUE_PLAN), "main", [x], interleaving=interleaving).outputs
    np.testing.assert_allclose(y, np.exp(x), rtol=1e-6)


# ----------------------------------------------------------------------------------------------- mutants
@pytest.mark.parametrize("name,func_name,event", HAND_EVENTS)
def test_dropping_any_event_gives_wrong_numbers_under_adversarial(name, func_name, event):
    module, inputs, want, types = _hand(name)
    assert _outcome(module, inputs, want, types, interleaving="adversarial")
    mutant = _drop_event(module, func_name, event)
    assert not _outcome(mutant, inputs, want, types, interleaving="adversarial"), (name, func_name, event)


def test_a_dropped_event_may_pass_in_order_but_not_adversarial():
    module, inputs, want, types = _hand("chain")
    mutant = _drop_event(module, "main", 2)  # the store of r must finish before y overwrites r in place
    assert _outcome(mutant, inputs, want, types, interleaving="in-order")
    assert not _outcome(mutant, inputs, want, types, interleaving="adversarial")


@pytest.mark.parametrize("interleaving", ["in-order", "adversarial"])
def test_offset_moved_onto_a_live_buffer_gives_wrong_numbers(interleaving):
    module, inputs, want, types = _hand("chain")
    mutant = module.clone()
    # h (the matmul's result) onto x.in, which y = r + x still reads.
    _defining(_func(mutant, "main"), "h").attributes[OFFSET] = IntegerAttr(0, i64)
    assert not _outcome(mutant, inputs, want, types, interleaving=interleaving)


def test_in_place_reuse_is_not_a_clash():
    module, inputs, want, types = _hand("all_reduce")
    dev1 = _func(module, "main.dev1")
    # The all-reduce over its own operand (a collective reads every member's operand before writing), and relu
    # over the all-reduce's result (elementwise): both still right, in any interleaving.
    _defining(dev1, "y.b").attributes[OFFSET] = IntegerAttr(160, i64)
    _defining(dev1, "z").attributes[OFFSET] = IntegerAttr(160, i64)
    for interleaving in ("in-order", "adversarial"):
        assert _outcome(module, inputs, want, types, interleaving=interleaving)


# ----------------------------------------------------------------------------------------------- errors
def _error(module: ModuleOp, inputs, match: str, **kw) -> FirError:
    with pytest.raises(FirError, match=match) as info:
        execute_plan(module, "main", inputs, **kw)
    return info.value


def test_a_value_without_an_offset_is_a_located_error():
    module, inputs, _, _ = _hand("chain")
    del _defining(_func(module, "main"), "r").attributes[OFFSET]
    e = _error(module, inputs, "'flow.relu' defining %r has no offset")
    assert e.loc is not None and e.loc.line == _line(CHAIN_PLAN, "%r = flow.relu")


@pytest.mark.parametrize("offset,match", [(480, "past the end of the arena of 512 bytes"),
                                          (2, "offset 2 is not aligned for f32 \\(4 bytes\\)")])
def test_bad_offsets_are_located_errors(offset, match):
    module, inputs, _, _ = _hand("chain")
    _defining(_func(module, "main"), "h").attributes[OFFSET] = IntegerAttr(offset, i64)
    e = _error(module, inputs, match)
    assert e.loc is not None and e.loc.line == _line(CHAIN_PLAN, "%h = flow.matmul")


def test_deadlock_names_every_stuck_head():
    module, inputs, _, _ = _hand("all_reduce")
    reduce = _defining(_func(module, "main.dev1"), "y.b")
    reduce.properties["id"] = IntegerAttr(5, i64)
    e = _error(module, inputs, "deadlock")
    assert "device 0 stream comm at comm.all_reduce (id 0, group [0, 1])" in e.message
    assert "device 1 stream comm at comm.all_reduce (id 5, group [0, 1])" in e.message
    assert "device 0 stream compute at plan.wait" in e.message
    assert e.loc is not None


def test_a_recv_without_its_send_deadlocks():
    module, inputs, _, _ = _hand("send_recv")
    recv = _defining(_func(module, "main.dev1"), "h.b")
    recv.properties["id"] = IntegerAttr(3, i64)
    e = _error(module, inputs, "device 1 stream recv at comm.recv \\(id 3 from device 0\\)")
    assert e.loc is not None


def test_reading_a_host_tensor_without_a_load_is_an_error():
    # The plan verifier refuses it before anything runs.
    with pytest.raises(FirError, match="'flow.matmul' reads the host tensor %x: copy it to the device with plan.load"):
        _parse(CHAIN_PLAN.replace("%h = flow.matmul %x.in,", "%h = flow.matmul %x,"))


def test_not_a_plan_and_unknown_interleaving():
    logical = _parse(CHAIN_LOGICAL)
    inputs = random_inputs(find_function(logical, "main"), 0)
    _error(logical, inputs, "@main is not a plan")
    module, inputs, _, _ = _hand("chain")
    _error(module, inputs, "unknown interleaving", interleaving="sideways")
    with pytest.raises(FirError, match="no function @nope"):
        execute_plan(module, "nope", inputs)


def test_two_plans_for_one_device_is_an_error():
    module, inputs, _, _ = _hand("all_reduce")
    _func(module, "main.dev1").attributes["device"] = IntegerAttr(0, i64)
    _error(module, inputs, "@main.dev0 and @main.dev1 are both device 0's program of @main")


def test_an_input_of_the_wrong_shape_is_an_error():
    module, inputs, _, _ = _hand("chain")
    _error(module, [inputs[0][:2], inputs[1]], "argument %x of @main has type")


# ----------------------------------------------------------------------------------------------- tracing, order
def test_trace_has_one_timed_event_per_instruction(tmp_path):
    module, inputs, _, _ = _hand("all_reduce")
    run = execute_plan(module, "main", inputs, trace=True)
    count = sum(len(instructions(f)) for f in module.ops if isinstance(f, FuncOp))
    assert count == 28 and len(run.events) == len(run.order) == count
    names = {(e.device, e.stream, e.name) for e in run.events}
    assert (1, "comm", "comm.all_reduce %y.b") in names and (0, "compute", "plan.wait event 2") in names
    matmul = next(e for e in run.events if e.device == 0 and e.name == "flow.matmul %y")
    assert matmul.args == {"offset": 160}
    assert all(0 <= e.start_s <= e.end_s for e in run.events)
    reduces = [e for e in run.events if e.stream == "comm" and e.name.startswith("comm.all_reduce")]
    assert len(reduces) == 2 and reduces[0].start_s == reduces[1].start_s  # one rendezvous
    path = tmp_path / "trace.json"
    write_trace(run.events, str(path))
    assert len([e for e in json.loads(path.read_text())["traceEvents"] if e["ph"] == "X"]) == count
    assert execute_plan(module, "main", inputs).events == []


def test_plan_order_sees_cross_device_order():
    module, _, _, _ = _hand("send_recv")
    dev0, dev1 = _func(module, "main.dev0"), _func(module, "main.dev1")
    order = PlanOrder(module, "main")
    relu, matmul, load_w = _defining(dev0, "h"), _defining(dev1, "y"), _defining(dev1, "w.in")
    assert order.before(relu, matmul) and not order.before(matmul, relu)
    assert not order.before(relu, load_w) and not order.before(load_w, relu)
    assert order.before(load_w, matmul)


# ----------------------------------------------------------------------------------------------- whole pipeline


@functools.lru_cache(maxsize=None)
def _compile(path: Path, microbatches: int = 1, spmd: bool = False):
    """(plans, entry name, inputs, reference results, result dtypes) of an example (shared: clone before
    changing it): one plan per device, or with `spmd` one per class of devices (what fir-run executes)."""
    logical = parse_source(path.read_text(), str(path))
    func = find_function(logical, None)
    inputs = random_inputs(func, 0)
    want = run_function(logical, func, inputs)
    ctx = make_context()
    passes = available_passes()
    module = logical.clone()
    if microbatches > 1:
        passes["microbatch"]()(count=microbatches).apply(ctx, module)
        verify_module(module)
    if placed_functions(module)[1] and spmd:
        for name in SPMD_PIPELINE:
            passes[name]()().apply(ctx, module)
            verify_module(module)
    elif placed_functions(module)[1]:
        module = distribute(module, ctx)
    for name in ("schedule", "plan-memory"):
        passes[name]()().apply(ctx, module)
        verify_module(module)
    return module, func.sym_name.data, inputs, want, _types(func)


@pytest.mark.parametrize("spmd", [False, True], ids=["per-device", "spmd"])
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_matches_the_reference_in_adversarial_and_random_interleavings(path, spmd):
    module, entry, inputs, want, types = _compile(path, 1, spmd)
    for interleaving, seed in [("adversarial", 0), ("random", 1), ("random", 2), ("random", 3)]:
        run = execute_plan(module, entry, inputs, interleaving=interleaving, seed=seed)
        assert _ok(run.outputs, want, types), (path.stem, interleaving, seed)


@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.stem != "mlp"], ids=lambda p: p.stem)
def test_spmd_plans_run_exactly_as_their_expanded_plans(path):
    # Each device runs its class's plan with its own coordinates: the same instructions as its expanded plan, so
    # the same bits in the same order
    module, entry, inputs, _, _ = _compile(path, 1, True)
    expanded = module.clone()
    expand_module(expanded, meshes_of(expanded))
    verify_module(expanded)
    direct, per_device = (execute_plan(m, entry, inputs, interleaving="in-order") for m in (module, expanded))
    assert len(direct.order) == len(per_device.order) and direct.arena_size == per_device.arena_size
    for a, b in zip(direct.outputs, per_device.outputs):
        np.testing.assert_array_equal(a, b)


def _byte_ranges(op: Operation) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    """The arena bytes an instruction reads and writes."""
    def span(v):
        off = v.owner.attributes[OFFSET].value.data
        return off, off + nbytes(v.type)

    reads = [] if isinstance(op, LoadOp) else [span(v) for v in op.operands]
    write = span(op.results[0]) if op.results and not isinstance(op, StoreOp) else None
    return reads, write


def _conflicts(ops: list[Operation]) -> list[tuple[int, int]]:
    """(i, j), i < j, of instructions on different streams touching a common byte, one of them writing it."""
    def meet(a, b):
        return a[0] < b[1] and b[0] < a[1] and a[0] < a[1] and b[0] < b[1]

    spans = [_byte_ranges(op) for op in ops]
    out = []
    for i, (ri, wi) in enumerate(spans):
        for j in range(i + 1, len(ops)):
            rj, wj = spans[j]
            if stream_of(ops[i]) == stream_of(ops[j]):
                continue
            if (wi and (any(meet(wi, r) for r in rj) or (wj and meet(wi, wj)))) or \
                    (wj and any(meet(wj, r) for r in ri)):
                out.append((i, j))
    return out


def _event_mutants(module: ModuleOp, entry: str):
    """For each event of each plan: (description, mutant without it, whether some conflicting pair lost its order
    by plan_ir.HappensBefore, whether it lost it by the cross-device order too)."""
    for f in [f for f in module.ops if isinstance(f, FuncOp) and is_plan(f)]:
        ops = instructions(f)
        pairs = _conflicts(ops)
        before = HappensBefore(f)
        for e in sorted({event_of(op) for op in ops if isinstance(op, RecordOp)}):
            mutant = _drop_event(module, f.sym_name.data, e)
            mops = instructions(_func(mutant, f.sym_name.data))
            index = {op: k for k, op in enumerate(ops) if not (isinstance(op, (RecordOp, WaitOp))
                                                                and event_of(op) == e)}
            kept = {k: mops[n] for n, k in enumerate(sorted(index.values()))}
            after = HappensBefore(_func(mutant, f.sym_name.data))
            lost = [(i, j) for i, j in pairs if before.before(ops[i], ops[j])
                    and not after.before(kept[i], kept[j])]
            if not lost:
                yield f"@{f.sym_name.data} event {e}", mutant, False, False
                continue
            cross = PlanOrder(mutant, entry)
            yield f"@{f.sym_name.data} event {e}", mutant, True, any(not cross.before(kept[i], kept[j], d, d)
                                                                      for i, j in lost for d in program_devices(f))


# Small examples (the mutants of every example take minutes): (example, micro-batches, SPMD plans).
MUTANT_EXAMPLES = [("classifier", 1, False), ("embedding_classifier", 1, False), ("pipeline_mlp", 1, False),
                   ("pipeline_train_mlp", 1, False), ("pipeline_train_mlp", 4, False), ("dp_mlp", 1, False),
                   ("pipeline_train_mlp", 4, True), ("dp_tp_mlp", 1, True)]


@pytest.mark.parametrize("stem,microbatches,spmd", MUTANT_EXAMPLES, ids=lambda x: str(x))
def test_dropping_a_needed_event_is_caught(stem, microbatches, spmd):
    path = next(p for p in EXAMPLES if p.stem == stem)
    module, entry, inputs, want, types = _compile(path, microbatches, spmd)
    caught, survived, covered, redundant = [], [], [], []
    for what, mutant, lost, really_lost in _event_mutants(module, entry):
        if not lost:
            redundant.append(what)
        elif not really_lost:
            covered.append(what)  # a collective or send/recv orders the pair anyway: the mutant is correct
            assert _outcome(mutant, inputs, want, types, entry=entry, interleaving="adversarial"), what
        elif _outcome(mutant, inputs, want, types, entry=entry, interleaving="adversarial"):
            survived.append(what)
        else:
            caught.append(what)
    print(f"{stem} x{microbatches}: {len(caught)} caught, {len(survived)} survived, {len(covered)} covered by "
          f"cross-device order, {len(redundant)} redundant")  # shown with pytest -s
    assert caught and not survived, survived


def _live_pair(func: FuncOp) -> tuple[Operation, Operation] | None:
    """(v, w): a compute result v made while buffer w is live (a compute instruction after v reads w) that fits
    at w's offset; w a compute result too when there is such a pair. v's write and w's reader are on one stream,
    so moving v onto w clashes in every interleaving."""
    ops = instructions(func)
    pos = {op: k for k, op in enumerate(ops)}
    arena = func.attributes[ARENA_SIZE].value.data  # type: ignore[attr-defined]
    defs = [op for op in ops if op.results and not isinstance(op, StoreOp) and nbytes(op.results[0].type)]
    compute = [op for op in defs if stream_of(op) == "compute"]
    for ws in (compute, defs):
        for w in ws:
            last = max((pos[u.operation] for u in w.results[0].uses
                        if u.operation in pos and stream_of(u.operation) == "compute"), default=-1)
            w_off = w.attributes[OFFSET].value.data  # type: ignore[attr-defined]
            for v in compute:
                size = nbytes(v.results[0].type)
                item = numpy_dtype(dtype_name(v.results[0].type.element_type)).itemsize  # type: ignore[attr-defined]
                if pos[w] < pos[v] < last and w_off % item == 0 and w_off + size <= arena \
                        and v.attributes[OFFSET] != w.attributes[OFFSET]:
                    return v, w
    return None


@pytest.mark.parametrize("spmd", [False, True], ids=["per-device", "spmd"])
@pytest.mark.parametrize("stem", ["mlp", "dp_mlp", "dp_tp_mlp", "pipeline_train_mlp", "pipeline4_train_mlp",
                                  "tp_attention"])
def test_an_offset_moved_onto_a_live_buffer_is_caught(stem, spmd):
    path = next(p for p in EXAMPLES if p.stem == stem)
    module, entry, inputs, want, types = _compile(path, 1, spmd)
    module = module.clone()
    plans = [f for f in module.ops if isinstance(f, FuncOp) and is_plan(f)]
    func, (v, w) = next((f, pair) for f in plans if (pair := _live_pair(f)) is not None)
    v.attributes[OFFSET] = w.attributes[OFFSET]
    for interleaving in ("in-order", "random", "adversarial"):
        assert not _outcome(module, inputs, want, types, entry=entry, interleaving=interleaving), \
            (stem, func.sym_name.data, v.name, w.name)

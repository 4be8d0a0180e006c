"""The schedule pass: pipeline task orders, and plans whose events order every cross-stream def-use."""

from __future__ import annotations

from pathlib import Path

import pytest
from xdsl.dialects.func import FuncOp

from fir.planning import plan_ir
from fir.syntax.diagnostics import FirError
from fir.dialects.plan import LoadOp, RecordOp, StoreOp, WaitOp
from fir.compile import distribute
from fir.syntax.printer import print_fir
from fir.syntax.frontend import make_context, parse_source, verify_module
from fir.passes.schedule import SchedulePass
from fir.planning.scheduler import task_order
from fir.distribution.placement import places

EXAMPLES = sorted(Path(__file__).resolve().parent.parent.joinpath("examples").glob("*.fir"))


def _scheduled(path: Path, order: str = "1f1b"):
    module = parse_source(path.read_text(), str(path))
    if any(isinstance(f, FuncOp) and places(f) for f in module.ops):
        module = distribute(module)
    SchedulePass(order=order).apply(make_context(), module)
    verify_module(module)
    return module


def _sequence(tasks, order, stage=None) -> list[tuple[int, int]]:
    """The tasks in slot order (tasks sharing a slot by phase)."""
    rank = task_order(tasks, order, stage)
    return sorted(tasks, key=lambda t: (rank[t], t))


def test_gpipe_runs_each_phase_for_every_micro_batch_in_turn():
    tasks = {(p, m) for p in (0, 6) for m in range(4)}
    assert _sequence(tasks, "gpipe") == [(0, 0), (0, 1), (0, 2), (0, 3), (6, 0), (6, 1), (6, 2), (6, 3)]


@pytest.mark.parametrize("stage,p,m", [(0, 4, 8), (1, 4, 8), (2, 4, 8), (0, 4, 2), (0, 2, 5)])
def test_1f1b_warms_up_with_the_downstream_stages_then_alternates(stage, p, m):
    forward, backward = stage, 2 * (p - 1) - stage
    tasks = {(ph, k) for ph in (forward, backward) for k in range(m)}
    got = _sequence(tasks, "1f1b")
    assert sorted(got) == sorted(tasks)
    ahead = min(p - 1 - stage, m)
    assert got[:ahead] == [(forward, k) for k in range(ahead)]
    in_flight, peak = set(), 0
    for ph, k in got:
        if ph == forward:
            in_flight.add(k)
            peak = max(peak, len(in_flight))
        else:
            assert k in in_flight, "a backward task before its forward"
            in_flight.discard(k)
    assert peak == min(p - stage, m)


def test_1f1b_on_the_last_stage_is_in_micro_batch_order():
    tasks = {(3, k) for k in range(4)}
    assert _sequence(tasks, "1f1b") == [(3, 0), (3, 1), (3, 2), (3, 3)]


def test_phases_before_the_first_transfer_run_with_the_forward():
    # A middle stage (1 of 4) with forward phase 1 and backward phase 5, and work of phase 0 (a skip connection
    # received from stage 0): that work shares the forward's slot, and the warm-up is still the 2 stages downstream.
    tasks = {(ph, k) for ph in (0, 1, 5) for k in range(4)}
    rank = task_order(tasks, "1f1b", (1, 5))
    assert all(rank[(0, k)] == rank[(1, k)] for k in range(4))
    assert sorted({(1 if p == 0 else p, k) for p, k in tasks}, key=lambda t: rank[t]) == \
        [(1, 0), (1, 1), (1, 2), (5, 0), (1, 3), (5, 1), (5, 2), (5, 3)]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_cross_stream_read_is_ordered_by_events(path):
    module = _scheduled(path)
    for func in module.ops:
        if not isinstance(func, FuncOp) or not plan_ir.is_plan(func):
            continue
        order = plan_ir.HappensBefore(func)
        ops = plan_ir.instructions(func)
        for op in ops:
            for v in op.operands:
                producer = v.owner
                if producer in order.position:
                    assert order.position[producer] < order.position[op]
                    assert plan_ir.stream_of(producer) == plan_ir.stream_of(op) or order.before(producer, op), \
                        f"{op.name} reads {producer.name} unordered"
        # Every event is recorded once and waited for once (test_plan_executor drops each needed one in turn).
        waits = [op for op in ops if isinstance(op, WaitOp)]
        assert len({plan_ir.event_of(w) for w in waits}) == len(waits)
        assert {plan_ir.event_of(r) for r in ops if isinstance(r, RecordOp)} == {plan_ir.event_of(w) for w in waits}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_plans_round_trip_through_the_printer(path):
    text = print_fir(_scheduled(path))
    assert print_fir(parse_source(text, "plan.fir")) == text


def test_inputs_are_loaded_and_results_stored_on_the_copy_streams():
    module = _scheduled(next(p for p in EXAMPLES if p.stem == "mlp"))
    func = next(f for f in module.ops if isinstance(f, FuncOp))
    ops = plan_ir.instructions(func)
    loads = [o for o in ops if isinstance(o, LoadOp)]
    stores = [o for o in ops if isinstance(o, StoreOp)]
    assert len(loads) == len(func.body.blocks.first.args)
    assert {plan_ir.stream_of(o) for o in loads} == {"h2d"} and {plan_ir.stream_of(o) for o in stores} == {"d2h"}
    assert list(func.body.blocks.first.last_op.operands) == [s.results[0] for s in stores]


def test_collectives_go_on_the_comm_stream_and_overlap_independent_compute():
    module = _scheduled(next(p for p in EXAMPLES if p.stem == "tp_mlp"))
    func = next(f for f in module.ops if isinstance(f, FuncOp) and f.sym_name.data.endswith("dev0"))
    comm = [o for o in plan_ir.instructions(func) if o.name.startswith("comm.")]
    assert comm and {plan_ir.stream_of(o) for o in comm} == {"comm"}


def test_unknown_order_is_an_error():
    module = parse_source(EXAMPLES[0].read_text(), str(EXAMPLES[0]))
    with pytest.raises(FirError, match="unknown order"):
        SchedulePass(order="zigzag").apply(make_context(), module)


def test_placed_logical_functions_must_be_partitioned_first():
    path = next(p for p in EXAMPLES if p.stem == "tp_mlp")
    module = parse_source(path.read_text(), str(path))
    with pytest.raises(FirError, match="before schedule"):
        SchedulePass().apply(make_context(), module)


def test_a_returned_argument_is_returned_as_it_is():
    """A plan returns host tensors: an argument that is only returned is neither loaded nor stored, and one that
    is also read is loaded for its reader only."""
    module = parse_source("""func.func @f(%x: tensor<4xf32>, %w: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) {
  %y = flow.exp %x
  func.return %y, %w, %x
}""", "<t>")
    SchedulePass().apply(make_context(), module)
    verify_module(module)
    func = next(iter(module.ops))
    loads = [op for op in func.body.ops if isinstance(op, LoadOp)]
    stores = [op for op in func.body.ops if isinstance(op, StoreOp)]
    assert [op.operands[0] for op in loads] == [func.args[0]]
    assert len(stores) == 1
    ret = func.body.block.last_op
    assert ret.operands[0] is stores[0].results[0]
    assert list(ret.operands[1:]) == [func.args[1], func.args[0]]

"""spmd-partition: one program per class of devices; expand-devices gives back each device's program."""

from __future__ import annotations

import os
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from fir.compile import distribute
from fir.distribution import layout
from fir.distribution.expansion import expand_module
from fir.distribution.partitioner import _layouts, device_classes
from fir.distribution.placement import placed_functions
from fir.dialects.sbp import meshes_of
from fir.passes import parse_pipeline
from fir.distribution.placement import device_count
from fir.planning.hardware import load_hardware
from fir.planning.plan_ir import is_plan
from fir.planning.simulator import simulate
from fir.runtime.plan_executor import execute_plan
from fir.syntax.diagnostics import FirError
from fir.syntax.frontend import make_context, parse_source, verify_module
from fir.dialects.base import to_tt
from fir.runtime.virtual_devices import run_partitioned
from fir.syntax.printer import print_fir
from test_distributed_programs import _close, _distribute_randomly, _working_dtype
from test_random_programs import SETTINGS, programs, random_inputs, run, the_func

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from gpt_model import gpt_program  # noqa: E402

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
# The examples that place something on a mesh.
DISTRIBUTED = ["dp_mlp.fir", "dp_tp_mlp.fir", "pipeline4_train_mlp.fir", "pipeline_mlp.fir", "pipeline_train_mlp.fir",
               "tp_attention.fir", "tp_mlp.fir"]


def _apply(module, names: list[str]):
    """A copy of the module after the passes (fir-opt's pipeline syntax), verified after each."""
    out = module.clone()
    ctx = make_context()
    for p in parse_pipeline(",".join(names)):
        p.apply(ctx, out)
        verify_module(out)
    return out


def _boxed(module):
    return _apply(module, ["sbp-infer", "insert-boxing"])


def _programs(module) -> list:
    return [f for f in module.ops if "devices" in f.attributes]


def _classes(text: str) -> list[list[int]]:
    boxed = _boxed(parse_source(text, "<test>"))
    meshes, (func,) = placed_functions(boxed)
    return device_classes(func, meshes)


def test_even_splits_give_one_program():
    text = ("sbp.mesh @m = [2, 4]\nfunc.func @f(%x: tensor<8x16xf32> {sbp = [S(0), S(1)]}) -> tensor<8x16xf32> "
            "attributes {mesh = @m} {\n  %y = flow.neg %x\n  func.return %y\n}\n")
    assert _classes(text) == [list(range(8))]


def test_uneven_splits_give_a_program_per_side_of_each_boundary():
    # 7 rows on 3 devices: 3, 2, 2; 5 columns on 4: 2, 1, 1, 1. The row split cuts mesh axis 0 after
    # coordinate 0, the column split mesh axis 1 after coordinate 0: four classes.
    text = ("sbp.mesh @m = [3, 4]\nfunc.func @f(%x: tensor<7x5xf32> {sbp = [S(0), S(1)]}) -> tensor<7x5xf32> "
            "attributes {mesh = @m} {\n  %y = flow.neg %x\n  func.return %y\n}\n")
    assert _classes(text) == [[0], [1, 2, 3], [4, 8], [5, 6, 7, 9, 10, 11]]


def test_pipeline_stages_get_their_own_programs():
    text = gpt_program(2, hidden=64, heads=4, seq=16, batch=4, vocab=128, stages=2, tp=2, dp=2)
    assert _classes(text) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_program_count_and_size_do_not_grow_with_the_mesh():
    sizes = []
    for dp in (2, 16, 64):
        text = gpt_program(2, hidden=64, heads=4, seq=16, batch=64, vocab=128, stages=2, tp=2, dp=dp)
        progs = _programs(_apply(parse_source(text, "<gpt>"), ["sbp-infer", "insert-boxing", "spmd-partition"]))
        assert [len(p.attributes["devices"]) for p in progs] == [2 * dp, 2 * dp]
        sizes.append([sum(1 for _ in p.body.ops) for p in progs])
    # the same ops whatever the mesh (a 64-row batch splits evenly over every dp here)
    assert sizes[0] == sizes[1] == sizes[2]


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".fir")))
def test_printed_spmd_programs_expand_to_partition(name):
    module = parse_source(open(os.path.join(EXAMPLES, name)).read(), name)
    spmd = _apply(module, ["sbp-infer", "insert-boxing", "spmd-partition"])
    text = print_fir(spmd)
    reread = parse_source(text, "<spmd>")
    assert print_fir(reread) == text
    expand_module(reread, meshes_of(reread))
    assert print_fir(reread) == print_fir(distribute(module))


@settings(max_examples=int(os.environ.get("FIR_DIST_EXAMPLES", "120")), **SETTINGS)
@given(programs(max_ops=8), st.data())
def test_devices_of_a_class_hold_every_value_in_one_shape(prog, data):
    module = parse_source(prog.text, "<random>")
    _distribute_randomly(module, data.draw)
    boxed = _boxed(module)
    meshes, (func,) = placed_functions(boxed)
    classes = device_classes(func, meshes)
    assert sorted(d for c in classes for d in c) == sorted({d for m in meshes.values() for d in m.devices})
    for shape, nd, mesh in _layouts(func, meshes):
        for c in classes:
            shapes = {layout.local_shape(shape, nd, mesh.shape, mesh.coord(d)) for d in c if d in mesh}
            assert len(shapes) <= 1, (prog.text, nd, c, shapes)


def _agrees_with_one_device(prog, data, seed, compile_and_run) -> None:
    """A random program on a random mesh: compile_and_run(module, inputs) gives the single-device results."""
    module = parse_source(prog.text, "<random>")
    _distribute_randomly(module, data.draw)
    inputs = random_inputs(prog, seed)
    want = run(module, inputs)
    with np.errstate(all="ignore"):
        got, text = compile_and_run(module, inputs)
    for i, (g, w, t) in enumerate(zip(got, want, the_func(module).function_type.outputs.data)):
        assert _close(g, w, _working_dtype(module, to_tt(t)[1])), f"result {i}\n{text}"


@settings(max_examples=int(os.environ.get("FIR_DIST_EXAMPLES", "120")), **SETTINGS)
@given(programs(max_ops=8), st.data(), st.integers(0, 2**32 - 1))
def test_virtual_devices_run_spmd_programs_with_their_coordinates(prog, data, seed):
    # Each device runs its class's program itself (no expand-devices): positions, local slices, groups and
    # peers come from its coordinates, and the results equal the single-device run.
    def spmd_run(module, inputs):
        spmd = _apply(module, ["sbp-infer", "insert-boxing", "spmd-partition"])
        return run_partitioned(spmd, the_func(module).sym_name.data, inputs, 6), print_fir(spmd)

    _agrees_with_one_device(prog, data, seed, spmd_run)


@pytest.mark.parametrize("name", DISTRIBUTED)
def test_examples_run_as_spmd_programs(name):
    module = parse_source(open(os.path.join(EXAMPLES, name)).read(), name)
    (func,) = placed_functions(module)[1]
    rng = np.random.default_rng(0)
    inputs = [_input(rng, a.type) for a in func.body.blocks.first.args]
    want = run_partitioned(distribute(module), func.sym_name.data, inputs, 8)
    spmd = _apply(module, ["sbp-infer", "insert-boxing", "spmd-partition"])
    got = run_partitioned(spmd, func.sym_name.data, inputs, 8)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def _input(rng, t):
    shape, dt = to_tt(t)
    if dt in ("i32", "i64"):
        return rng.integers(0, 2, shape).astype(dt.replace("i", "int"))
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("mesh,sbp,dtype", [("[3]", "[S(0)]", "i32"), ("[2, 2]", "[S(0), S(0)]", "i64"),
                                            ("[2, 3]", "[S(1), S(0)]", "f32")])
def test_iota_offsets_come_from_positions(mesh, sbp, dtype):
    # uneven pieces, nested splits of one axis, and a float iota (its offset computed in i64, then cast)
    text = (f"sbp.mesh @m = {mesh}\nfunc.func @f() -> tensor<7x5x{dtype}> attributes {{mesh = @m}} {{\n"
            f"  %i = flow.iota {{axis = 0, sbp = {sbp}}} : tensor<7x5x{dtype}>\n  func.return %i\n}}\n")
    spmd = _apply(parse_source(text, "<iota>"), ["sbp-infer", "insert-boxing", "spmd-partition"])
    assert len(_programs(spmd)) > 1 and "sbp.position" in print_fir(spmd)
    (got,) = run_partitioned(spmd, "f", [], 6)
    np.testing.assert_array_equal(got, np.broadcast_to(np.arange(7)[:, None], (7, 5)).astype(got.dtype))


SPMD_PLAN = ["sbp-infer", "insert-boxing", "spmd-partition", "fuse", "schedule", "plan-memory"]


@pytest.mark.parametrize("name", DISTRIBUTED)
@pytest.mark.parametrize("microbatches", [1, 2])
def test_spmd_plans_expand_to_plans_that_run(name, microbatches):
    # fuse, schedule and plan-memory on the SPMD programs (one plan per class of devices), then each device's
    # plan: the same instructions with its constants, checked under the adversarial interleaving
    module = parse_source(open(os.path.join(EXAMPLES, name)).read(), name)
    (func,) = placed_functions(module)[1]
    rng = np.random.default_rng(1)
    inputs = [_input(rng, a.type) for a in func.body.blocks.first.args]
    want = run_partitioned(distribute(module), func.sym_name.data, inputs, 8)
    passes = ([f"microbatch{{count={microbatches}}}"] if microbatches > 1 else []) + SPMD_PLAN
    planned = _apply(module, passes)
    assert all(is_plan(p) for p in _programs(planned)) and len(_programs(planned)) < 8
    expand_module(planned, meshes_of(planned))
    verify_module(planned)
    got = execute_plan(planned, func.sym_name.data, inputs, 8, "adversarial").outputs
    for g, w in zip(got, want):
        assert _close(g, w, "f32")  # micro-batches reorder sums: a tolerance relative to the magnitude


@settings(max_examples=int(os.environ.get("FIR_DIST_EXAMPLES", "120")) // 2, **SETTINGS)
@given(programs(max_ops=8), st.data(), st.integers(0, 2**32 - 1))
def test_random_spmd_plans_run(prog, data, seed):
    # fuse, schedule and plan-memory on the SPMD programs; each device runs its class's plan with its own
    # coordinates (what fir-run does), under the adversarial interleaving, and gives the same bits as its
    # expanded plan
    def planned_run(module, inputs):
        planned = _apply(module, SPMD_PLAN)
        name = the_func(module).sym_name.data
        direct = execute_plan(planned, name, inputs, 6, "adversarial", seed).outputs
        expanded = planned.clone()
        expand_module(expanded, meshes_of(expanded))
        verify_module(expanded)
        for a, b in zip(direct, execute_plan(expanded, name, inputs, 6, "adversarial", seed).outputs):
            np.testing.assert_array_equal(a, b)
        return direct, print_fir(planned)

    _agrees_with_one_device(prog, data, seed, planned_run)


def test_a_fill_read_by_positions_and_by_other_ops_folds_and_stays():
    text = """sbp.mesh @m = [2]
func.func @f.p0(%x: tensor<2xi32> {sbp = [S(0)], mesh = @m}) -> (tensor<2xi32> {sbp = [S(0)], mesh = @m}) attributes {devices = [0, 1], of = @f} {
  %p = sbp.position {mesh = @m, axis = 0} : tensor<i32>
  %k = flow.fill {value = 4} : tensor<i32>
  %o = flow.mul %p, %k : tensor<i32>
  %y = flow.add %x, %o : tensor<2xi32>
  %z = flow.add %y, %k : tensor<2xi32>
  func.return %z
}
"""
    x = np.arange(4, dtype=np.int32)
    want = x + np.array([0, 0, 4, 4], dtype=np.int32) + 4
    spmd = parse_source(text, "<spmd>")
    np.testing.assert_array_equal(run_partitioned(spmd, "f", [x], 2)[0], want)
    expand_module(spmd, meshes_of(spmd))
    verify_module(spmd)
    np.testing.assert_array_equal(run_partitioned(spmd, "f", [x], 2)[0], want)


@pytest.mark.parametrize("name", DISTRIBUTED)
@pytest.mark.parametrize("microbatches", [1, 2])
def test_an_spmd_plan_is_simulated_once_for_its_class(name, microbatches):
    # replaying one plan per class gives the times and memory of replaying every device's plan
    module = parse_source(open(os.path.join(EXAMPLES, name)).read(), name)
    (func,) = placed_functions(module)[1]
    passes = ([f"microbatch{{count={microbatches}}}"] if microbatches > 1 else []) + SPMD_PLAN
    planned = _apply(module, passes)
    hw = load_hardware("h100-nvlink", device_count(planned))
    once = simulate(planned, func.sym_name.data, hw)
    replayed = {e.device for e in once.events}
    assert replayed == {int(p.attributes["devices"].get_values()[0]) for p in _programs(planned)}
    expand_module(planned, meshes_of(planned))
    every = simulate(planned, func.sym_name.data, hw)
    assert once.step_time == pytest.approx(every.step_time, rel=1e-12)
    assert sorted(once.devices) == sorted(every.devices)
    for d, s in every.devices.items():
        assert once.devices[d].busy == pytest.approx(s.busy, rel=1e-12)
        assert once.devices[d].arena_size == s.arena_size


def test_position_takes_the_instruction_attributes_of_plans():
    # sbp.position names plan's instruction attributes itself (plan imports the sbp dialect): they must agree
    from fir.dialects.plan import INSTR_ATTRS
    from fir.dialects.sbp import PositionOp

    assert PositionOp.DISCARDABLE == frozenset(INSTR_ATTRS)


BAD_POSITION = """sbp.mesh @a = [2]
sbp.mesh @b = [2] {devices = [2, 3]}
func.func @f.p0() -> (tensor<i32> {sbp = [B], mesh = @a}) attributes {devices = [0, 1], of = @f} {
  %p = sbp.position {mesh = @b, axis = 0} : tensor<i32>
  func.return %p
}
"""


def test_a_position_on_a_mesh_without_the_device_is_a_located_error():
    # each executor computes what the op is on the device through the same helper, and says so at the op
    module = parse_source(BAD_POSITION, "bad.fir")
    with pytest.raises(FirError, match="device 0: 'sbp.position' names a mesh that does not hold it") as e:
        run_partitioned(module, "f", [], 4)
    assert e.value.loc is not None and e.value.loc.line == 4
    planned = _apply(module, ["schedule", "plan-memory"])
    with pytest.raises(FirError, match="device 0: 'sbp.position' names a mesh that does not hold it"):
        execute_plan(planned, "f", [], 4)

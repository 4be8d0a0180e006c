"""Pipelines of many shapes through the whole compiler (microbatch, distribution, schedule, plan-memory), run on real
arenas under the adversarial interleaving and replayed by the simulator: no deadlock, the reference's numbers. The
shapes are the ones that once broke the schedule: work that reads only weights on a middle stage, a micro-batched
input on a middle stage, tensor parallelism inside a stage (where one member may do all the sending), a device that
holds non-adjacent layers, a skip connection over a stage, and a result returned on another stage's mesh."""

from __future__ import annotations

import numpy as np
import pytest
from xdsl.dialects.func import FuncOp

from fir.compile import compile_plan
from fir.distribution.placement import program_devices
from fir.runtime.compare import compare_all
from fir.dialects.dtypes import dtype_name
from fir.syntax.frontend import parse_source
from fir.runtime.inputs import random_inputs
from fir.runtime.interpreter import find_function, run_function
from fir.runtime.plan_executor import execute_plan
from fir.planning.simulator import simulate


def train_step(stages: list[int], tp: dict[int, int] | None = None, rows: int = 12, width: int = 8,
               extra: str = "", extra_args: str = "", dx_on: int | None = None) -> str:
    """A tanh MLP training step, layer i on mesh @m{stages[i]}; `tp` gives some meshes several devices (their
    weights split, Megatron style). `extra` lines go before the backward pass, `extra_args` after the weights;
    `dx_on` also returns the input's gradient, on that mesh."""
    tp = tp or {}
    meshes, first = [], 0
    for s in sorted(set(stages)):
        n = tp.get(s, 1)
        meshes.append(f"sbp.mesh @m{s} = [{n}] {{devices = [{', '.join(str(first + j) for j in range(n))}]}}")
        first += n
    mesh = [f"mesh = @m{s}" for s in stages]
    last = len(stages) - 1
    args = [f"%x: tensor<{rows}x{width}xf32> {{microbatch = 0, {mesh[0]}}}",
            f"%target: tensor<{rows}x{width}xf32> {{microbatch = 0, {mesh[last]}}}"]
    for i, s in enumerate(stages):
        split = f", sbp = [{'S(1)' if i % 2 == 0 else 'S(0)'}]" if tp.get(s, 1) > 1 else ""
        args.append(f"%w{i}: tensor<{width}x{width}xf32> {{{mesh[i]}{split}}}")
    if extra_args:
        args.append(extra_args)
    body, results, returned = [], [f"tensor<f32> {{{mesh[last]}}}"], ["%loss"]
    for i in range(len(stages)):
        body.append(f"%pre{i} = flow.matmul {'%h' + str(i) if i else '%x'}, %w{i} {{{mesh[i]}}}")
        body.append(f"%h{i + 1} = flow.tanh %pre{i} {{{mesh[i]}}}")
    body += [f"%diff = flow.sub %h{len(stages)}, %target {{{mesh[last]}}}",
             f"%sq = flow.mul %diff, %diff {{{mesh[last]}}}",
             f"%loss = flow.reduce_mean %sq {{axes = [0, 1], {mesh[last]}}}",
             f"%dh{len(stages)} = flow.add %diff, %diff {{{mesh[last]}}}"]
    body += [line for line in extra.strip().splitlines() if line.strip()]
    for i in reversed(range(len(stages))):
        body += [f"%t{i} = flow.mul %h{i + 1}, %h{i + 1} {{{mesh[i]}}}",
                 f"%dpre{i} = flow.mul %dh{i + 1}, %t{i} {{{mesh[i]}}}",
                 f"%dw{i} = flow.matmul {'%h' + str(i) if i else '%x'}, %dpre{i} {{transpose_a = true, {mesh[i]}}}"]
        results.append(f"tensor<{width}x{width}xf32> {{{mesh[i]}}}")
        returned.append(f"%dw{i}")
        if i or dx_on is not None:
            body.append(f"%dh{i} = flow.matmul %dpre{i}, %w{i} {{transpose_b = true, {mesh[i]}}}")
    if dx_on is not None:
        results.append(f"tensor<{rows}x{width}xf32> {{mesh = @m{dx_on}}}")
        returned.append("%dh0")
    lines = "\n  ".join(body)
    return "\n".join(meshes) + f"""
func.func @step({', '.join(args)}) -> ({', '.join(results)}) attributes {{{mesh[0]}}} {{
  {lines}
  func.return {', '.join(returned)}
}}
"""


SHAPES = {
    "four stages": train_step([0, 1, 2, 3]),
    "devices in reverse": train_step([3, 2, 1, 0]),
    "weight-only work on a middle stage": train_step(
        [0, 1, 2, 3], extra="%w1t = flow.tanh %w1 {mesh = @m1}\n%unused = flow.exp %w1t {mesh = @m1}"),
    "micro-batched input on a middle stage": train_step(
        [0, 1, 2, 3], extra_args="%noise: tensor<12x8xf32> {microbatch = 0, mesh = @m1}",
        extra="%h2n = flow.add %h2, %noise {mesh = @m1}\n%dummy = flow.mul %h2n, %h2n {mesh = @m1}"),
    "tensor parallel middle stage": train_step([0, 1, 2, 3], tp={1: 2}),
    # Device 1 of stage 0 only receives (device 0 sends the gathered activation): it must still take stage 0's
    # forward and backward phases, or the two issue their all_gathers in different orders.
    "tensor parallel first and last stages": train_step([0, 1, 2, 3], tp={0: 2, 3: 3}),
    "interleaved layers": train_step([0, 1, 2, 0, 1, 2]),
    # Two devices taking turns: device 1 sends the next micro-batch's activation before a gradient that device 0
    # receives first; the sends follow the receives' order.
    "alternating layers": train_step([0, 1, 0, 1]),
    "input gradient returned on stage 1": train_step([0, 1, 2, 3], dx_on=1),
    "skip connection over a stage": train_step(
        [0, 1, 2, 3, 4], extra="%skip = flow.add %h1, %h1 {mesh = @m2}\n%skip2 = flow.mul %skip, %h3 {mesh = @m2}"),
}


@pytest.mark.parametrize("order", ["1f1b", "gpipe"])
@pytest.mark.parametrize("micro", [1, 3, 4])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_pipeline_runs_and_matches_the_reference(shape, micro, order):
    module = parse_source(SHAPES[shape], f"{shape}.fir")
    func = find_function(module, None)
    inputs = random_inputs(func, 1)
    planned = compile_plan(module, micro, order)
    got = execute_plan(planned, "step", inputs, interleaving="adversarial", seed=micro).outputs
    want = run_function(module, func, inputs)
    types = [dtype_name(t.element_type) for t in func.function_type.outputs.data]
    assert all(c.ok for c in compare_all(got, want, types))
    sim = simulate(planned, "step", "h100-nvlink")  # the replay deadlocks when the plans do
    assert sim.step_time > 0


def test_weight_only_work_does_not_hold_back_the_warm_up():
    # Stage 1 of 4 warms up with two forwards (the stages downstream), not one, whatever reads only its weight.
    module = compile_plan(parse_source(SHAPES["weight-only work on a middle stage"], "w.fir"), 4, "1f1b")
    dev1 = next(f for f in module.ops if isinstance(f, FuncOp) and program_devices(f) == [1])
    tagged = [(op.name, op.attributes["micro"].value.data) for op in dev1.body.ops
              if op.name in ("comm.send", "comm.recv") and "micro" in op.attributes]
    sends = [m for name, m in tagged if name == "comm.send"]
    # Forward sends go downstream for micro-batches 0 and 1 before the first backward send (micro-batch 0).
    assert sends[:3] == [0, 1, 2] and sends[3] == 0


def test_interleaved_layers_need_more_sweeps_than_devices():
    # Layer i on device i mod 3: six transfers forward, more than the three devices.
    planned = compile_plan(parse_source(SHAPES["interleaved layers"], "i.fir"), 1, "1f1b")
    assert simulate(planned, "step", "h100-nvlink").step_time > 0


def test_decreasing_micro_tags_keep_producers_first():
    module = parse_source("""
func.func @f(%x: tensor<4xf32>) -> tensor<4xf32> {
  %a = flow.exp %x {micro = 1}
  %b = flow.exp %a {micro = 0}
  func.return %b
}
""", "tags.fir")
    func = find_function(module, None)
    x = np.linspace(-1, 1, 4, dtype=np.float32)
    got = execute_plan(compile_plan(module), "f", [x], interleaving="adversarial").outputs
    np.testing.assert_allclose(got[0], np.exp(np.exp(x)), rtol=1e-6)
    assert run_function(module, func, [x])[0].shape == (4,)


def test_an_empty_slice_of_an_argument_is_an_empty_load():
    module = parse_source("""
func.func @f(%x: tensor<4x4xf32>) -> tensor<0x4xf32> {
  %s = flow.slice %x {start = [2, 0], limit = [2, 4]}
  func.return %s
}
""", "empty.fir")
    got = execute_plan(compile_plan(module), "f", [np.ones((4, 4), np.float32)], interleaving="adversarial")
    assert got.outputs[0].shape == (0, 4)

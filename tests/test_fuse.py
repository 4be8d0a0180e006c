"""The fuse pass: which ops group, and that fused programs compute exactly what they computed before, on the
numpy backend and through the whole compiler (plans on real arenas under adversarial interleavings)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_random_programs import SETTINGS, assert_same_results, elementwise_chains, run

from fir.planning.cost_model import op_cost
from fir.dialects.flow import FusedOp
from fir.syntax.printer import print_fir
from fir.syntax.frontend import make_context, parse_source, verify_module
from fir.passes.fuse import FusePass


def fused(text: str):
    """The module of `text` after fuse, verified."""
    module = parse_source(text, "<t>")
    FusePass().apply(make_context(), module)
    verify_module(module)
    return module


def body_ops(module) -> list:
    func = next(iter(module.ops))
    return list(func.body.block.ops)


@settings(max_examples=100, **SETTINGS)
@given(elementwise_chains(), st.integers(0, 2**32 - 1))
def test_a_chain_becomes_one_kernel_with_the_same_numbers(chain, seed: int):
    text, shapes, _, _, _ = chain
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    before = run(parse_source(text, "<chain>"), inputs)
    module = fused(text)
    ops = body_ops(module)
    kernels = [op for op in ops if op.name != "func.return"]
    # Every op of a chain feeds the next or the result, so at most the ops whose value is reused elsewhere cut it.
    assert len(kernels) <= len(text.splitlines()) - 3
    after = run(module, inputs)
    assert_same_results(before, after, f"{text}\nfused:\n{print_fir(module)}")
    again = parse_source(print_fir(module), "<printed>")
    assert_same_results(before, run(again, inputs), "printed and read back")


def test_bf16_rounding_is_kept_inside_a_group():
    text = """func.func @f(%x: tensor<64xbf16>, %y: tensor<64xbf16>) -> tensor<64xbf16> {
  %a = flow.mul %x, %y
  %b = flow.add %a, %x
  %c = flow.exp %b
  func.return %c
}"""
    module = fused(text)
    ops = body_ops(module)
    assert isinstance(ops[0], FusedOp) and len(ops) == 2
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(64).astype(np.float32).astype(np.dtype("bfloat16")) for _ in range(2)]
    assert_same_results(run(parse_source(text, "<t>"), inputs), run(module, inputs), "bf16 chain")


def test_a_value_used_outside_ends_the_group_and_fill_joins():
    text = """func.func @f(%x: tensor<4x8xf32>) -> (tensor<4x8xf32>, tensor<4x8xf32>) {
  %two = flow.fill {value = 2.0} : tensor<f32>
  %a = flow.mul %x, %two
  %b = flow.exp %a
  %c = flow.neg %b
  func.return %a, %c
}"""
    ops = body_ops(fused(text))
    assert [op.name for op in ops] == ["flow.fused", "flow.fused", "func.return"]
    first, second = ops[0], ops[1]
    assert [o.name for o in first.body_ops()] == ["flow.fill", "flow.mul"]
    assert [o.name for o in second.body_ops()] == ["flow.exp", "flow.neg"]
    assert second.operands[0] is first.results[0]


def test_fused_cost_counts_only_the_kernels_inputs_and_output():
    text = """func.func @f(%x: tensor<1024x1024xf32>, %b: tensor<1024xf32>) -> tensor<1024x1024xf32> {
  %h = flow.add %x, %b
  %g = flow.gelu %h
  %y = flow.mul %g, %x
  func.return %y
}"""
    plain = parse_source(text, "<t>")
    unfused = [op_cost(op) for op in body_ops(plain)[:-1]]
    (kernel,) = body_ops(fused(text))[:-1]
    cost = op_cost(kernel)
    assert cost.flops == sum(c.flops for c in unfused)
    assert cost.bytes == 4 * 1024 * 1024 + 4 * 1024 + 4 * 1024 * 1024  # x and b read once, y written
    assert cost.bytes < sum(c.bytes for c in unfused)


@pytest.mark.parametrize("example", ["dp_mlp", "tp_mlp", "gpt_block", "pipeline_train_mlp"])
def test_examples_fuse_and_run_from_the_plan(example: str):
    """The default pipeline fuses; the fused plans run on arenas under the adversarial interleaving and match
    the single-device reference."""
    from fir.compile import compile_plan
    from fir.runtime.inputs import random_inputs
    from fir.runtime.interpreter import find_function, run_function
    from fir.runtime.plan_executor import execute_plan

    with open(f"examples/{example}.fir", encoding="utf-8") as f:
        module = parse_source(f.read(), f"{example}.fir")
    func = find_function(module, None)
    inputs = random_inputs(func, 0)
    want = run_function(module, func, inputs)
    planned = compile_plan(module, microbatches=2 if "pipeline" in example else 1)
    assert any(isinstance(op, FusedOp) for f in planned.ops for op in f.walk())
    got = execute_plan(planned, func.sym_name.data, inputs, interleaving="adversarial").outputs
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64), rtol=2e-2, atol=2e-3)

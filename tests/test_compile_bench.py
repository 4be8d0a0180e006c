"""Smoke tests of the compile benchmark: the GPT generator's programs distribute correctly, and the timing harness
runs every stage (or says why it skipped one)."""

from __future__ import annotations

import os
import sys

import pytest
from xdsl.dialects.func import FuncOp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

from compile_bench import compile_model, pipeline  # noqa: E402
from gpt_model import gpt_program, stage_of_layers  # noqa: E402

from fir.compile import distribute  # noqa: E402
from fir.runtime.compare import compare_all  # noqa: E402
from fir.dialects.base import to_tt  # noqa: E402
from fir.syntax.frontend import make_context, parse_source  # noqa: E402
from fir.passes import available_passes  # noqa: E402
from fir.runtime.inputs import random_inputs  # noqa: E402
from fir.runtime.interpreter import run_function  # noqa: E402
from fir.runtime.virtual_devices import run_partitioned  # noqa: E402

TINY = {"hidden": 64, "heads": 4, "seq": 8, "batch": 2, "stages": 2, "tp": 2, "vocab": 32}


def _logical(text: str):
    module = parse_source(text, "gpt.fir", "fir")
    func = next(f for f in module.ops if isinstance(f, FuncOp))
    return module, func


def _comm_counts(text: str) -> dict[str, int]:
    """comm op name -> count in the logical program after sbp-infer and insert-boxing."""
    module, _ = _logical(text)
    ctx = make_context()
    for name in ("sbp-infer", "insert-boxing"):
        available_passes()[name]()().apply(ctx, module)
    counts: dict[str, int] = {}
    for op in module.walk():
        if op.name.startswith("comm."):
            counts[op.name] = counts.get(op.name, 0) + 1
    return counts


@pytest.mark.parametrize("loss", [True, False])
def test_distributed_gpt_matches_reference(loss: bool) -> None:
    module, func = _logical(gpt_program(2, **TINY, loss=loss))
    inputs = random_inputs(func, seed=3)
    want = run_function(module, func, inputs)
    got = run_partitioned(distribute(module), "gpt", inputs, TINY["stages"] * TINY["tp"])
    types = [to_tt(t)[1] for t in func.function_type.outputs.data]
    assert [g.shape for g in got] == [w.shape for w in want]
    checks = compare_all(got, want, types)
    assert all(c.ok for c in checks), checks


@pytest.mark.parametrize("dp,tp,stages", [(2, 2, 2), (4, 1, 1)])
def test_data_parallel_gpt_matches_reference(dp: int, tp: int, stages: int) -> None:
    # The scale benchmark's layouts: a [dp, tp] mesh per stage, and 1-D data parallelism.
    text = gpt_program(2, **{**TINY, "batch": 4, "tp": tp, "stages": stages, "dp": dp})
    assert f"sbp.mesh @stage0 = [{', '.join(str(n) for n in (dp, tp) if n > 1)}]" in text
    module, func = _logical(text)
    inputs = random_inputs(func, seed=5)
    want = run_function(module, func, inputs)
    got = run_partitioned(distribute(module), "gpt", inputs, dp * tp * stages)
    checks = compare_all(got, want, [to_tt(t)[1] for t in func.function_type.outputs.data])
    assert all(c.ok for c in checks), checks
    # One all-reduce per attention and per MLP along the tensor-parallel axis; none for data parallelism.
    assert _comm_counts(text).get("comm.all_reduce", 0) == (2 * 2 if tp > 1 else 0)


def test_one_all_reduce_per_attention_and_mlp() -> None:
    # 3 layers on 2 stages: layers 0, 1 on stage 0, layer 2 on stage 1.
    counts = _comm_counts(gpt_program(3, **TINY))
    assert counts.get("comm.all_reduce") == 2 * 3
    assert counts.get("comm.send_recv") == 1
    # The loss: the column-parallel logits go to a batch split (one all_to_all), the labels are sliced to match.
    assert counts.get("comm.all_gather", 0) == 0 and counts.get("comm.reduce_scatter", 0) == 0
    assert sum(counts.values()) == 2 * 3 + 1 + 2


def test_variants_parse() -> None:
    for kw in ({"causal": False}, {"stages": 1, "tp": 4}, {"stages": 4, "tp": 1}, {"microbatch": True}):
        module, func = _logical(gpt_program(5, **{**TINY, **kw}))
        assert len(func.function_type.inputs.data) == 2 + 2 + 5 * 12 + 3
    text = gpt_program(2, **TINY, microbatch=True)
    assert "%tokens: tensor<2x8xi32> {microbatch = 0}" in text
    assert "flow.iota" not in gpt_program(2, **TINY, causal=False)
    with pytest.raises(ValueError):
        gpt_program(1, **TINY)  # fewer layers than stages
    assert stage_of_layers(7, 3) == [0, 0, 0, 1, 1, 2, 2]


def test_compile_model_times_every_stage() -> None:
    stages, module = compile_model(gpt_program(2, **TINY, microbatch=True), microbatches=2)
    assert [s["stage"] for s in stages] == ["parse+verify", "microbatch{count=2}", "sbp-infer", "insert-boxing",
                                            "spmd-partition", "fuse", "schedule", "plan-memory"]
    assert [s["stage"].split("{")[0] for s in stages[1:]] == [name for name, _ in pipeline(2)]
    for s in stages:
        assert ("seconds" in s) != ("skipped" in s), s
    by_name = {s["stage"].split("{")[0]: s for s in stages}
    for name in ("sbp-infer", "insert-boxing", "spmd-partition", "fuse", "schedule", "plan-memory"):
        assert "skipped" not in by_name[name], by_name[name]
    assert by_name["spmd-partition"]["device_functions"] == 2  # one program per stage of 2 devices
    assert by_name["spmd-partition"]["logical_ops"] == 0 and by_name["spmd-partition"]["device_ops"] > 0
    assert by_name["parse+verify"]["logical_ops"] > 0


def test_compile_model_times_a_training_step() -> None:
    stages, module = compile_model(gpt_program(2, **TINY, trainable=True), microbatches=1, train=True)
    assert [s["stage"].split("{")[0] for s in stages[1:]] == [name for name, _ in pipeline(1, train=True)]
    assert stages[1]["stage"].startswith("train-step") and all("skipped" not in s for s in stages), stages
    assert stages[1]["logical_ops"] > 3 * stages[0]["logical_ops"]  # forward, backward and the update

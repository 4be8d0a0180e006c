"""fir-run end to end: inputs, outputs, entry selection, and results against numpy written out by hand."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from scipy.special import erf, log_softmax

from fir.dialects.dtypes import TOLERANCE
from fir_tools.fir_run import main as fir_run

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def _run_to_npz(tmp_path, program: str, inputs: dict[str, np.ndarray], *extra: str) -> dict[str, np.ndarray]:
    np.savez(tmp_path / "in.npz", **inputs)
    out = tmp_path / "out.npz"
    assert fir_run([program, "--inputs", str(tmp_path / "in.npz"), "--output", str(out), "--quiet", *extra]) == 0
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def _mlp_inputs_and_reference(seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Inputs of examples/mlp.fir (and tp_mlp.fir, the same model) and its result computed in float64."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 1024)).astype(np.float32)
    w1 = (rng.standard_normal((1024, 4096)) / 32).astype(np.float32)
    b1 = rng.standard_normal(4096).astype(np.float32)
    w2 = (rng.standard_normal((4096, 1024)) / 64).astype(np.float32)
    b2 = rng.standard_normal(1024).astype(np.float32)
    h = x.astype(np.float64) @ w1 + b1
    h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
    return dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2), h @ w2 + b2


@pytest.mark.parametrize("example", ["mlp.fir", "tp_mlp.fir"])
def test_mlp_matches_numpy(tmp_path, example):
    """The MLP on one device, and tensor-parallel on 4 virtual devices with inputs scattered by their SBP."""
    inputs, want = _mlp_inputs_and_reference(3)
    got = _run_to_npz(tmp_path, os.path.join(EXAMPLES, example), inputs)
    rtol, atol = TOLERANCE["f32"]
    np.testing.assert_allclose(got["y"], want, rtol=rtol * 10, atol=atol * 100)


def test_classifier_loss_matches_numpy(tmp_path):
    program = tmp_path / "clf.fir"
    program.write_text(
        """
func.func @main(%x: tensor<8x5xf32>, %w: tensor<5x3xf32>, %labels: tensor<8xi32>) -> (tensor<f32>, tensor<8x3xf32>) {
  %logits = flow.matmul %x, %w
  %loss = flow.cross_entropy %logits, %labels
  func.return %loss, %logits : tensor<f32>, tensor<8x3xf32>
}
"""
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 5)).astype(np.float32)
    w = rng.standard_normal((5, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 8).astype(np.int32)
    got = _run_to_npz(tmp_path, str(program), dict(x=x, w=w, labels=labels))
    logits = x.astype(np.float64) @ w
    want = -log_softmax(logits, axis=1)[np.arange(8), labels].mean()
    assert got["loss"].shape == ()
    np.testing.assert_allclose(got["loss"], want, rtol=1e-5)
    np.testing.assert_allclose(got["logits"], logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("example", sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".fir")))
def test_every_example_runs_and_is_deterministic(tmp_path, example, capsys):
    path = os.path.join(EXAMPLES, example)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert fir_run([path, "--seed", "7", "--output", str(a)]) == 0
    out = capsys.readouterr().out
    assert "random, seed 7" in out and "min" in out and "max" in out
    assert fir_run([path, "--seed", "7", "--output", str(b), "--quiet"]) == 0
    with np.load(a) as za, np.load(b) as zb:
        assert za.files == zb.files and za.files
        for k in za.files:
            assert np.all(np.isfinite(za[k])), f"{example}: {k} has non-finite values"
            np.testing.assert_array_equal(za[k], zb[k])


def test_entry_selection_and_mlir_input(tmp_path, capsys):
    program = tmp_path / "two.fir"
    program.write_text(
        """
func.func @double(%x: tensor<3xf32>) -> tensor<3xf32> {
  %y = flow.add %x, %x
  func.return %y : tensor<3xf32>
}
func.func @square(%x: tensor<3xf32>) -> tensor<3xf32> {
  %y = flow.mul %x, %x
  func.return %y : tensor<3xf32>
}
"""
    )
    x = np.array([1.0, -2.0, 3.0], np.float32)
    assert fir_run([str(program), "--seed", "0"]) == 1
    assert "several functions" in capsys.readouterr().err
    got = _run_to_npz(tmp_path, str(program), {"x": x}, "--entry", "square")
    np.testing.assert_array_equal(got["y"], x * x)
    assert fir_run([str(program), "--entry", "@nope"]) == 1
    assert "no function @nope" in capsys.readouterr().err

    from fir_tools.fir_opt import main as fir_opt

    mlir = tmp_path / "two.mlir"
    assert fir_opt([str(program), "-t", "mlir", "-o", str(mlir)]) == 0
    got = _run_to_npz(tmp_path, str(mlir), {"x": x}, "--entry", "double")
    np.testing.assert_array_equal(got["y"], x + x)


def test_bf16_inputs_and_outputs(tmp_path):
    import ml_dtypes

    program = tmp_path / "bf.fir"
    program.write_text(
        """
func.func @f(%x: tensor<4xbf16>) -> tensor<4xbf16> {
  %y = flow.mul %x, %x
  func.return %y : tensor<4xbf16>
}
"""
    )
    x = np.array([1.5, -2.0, 0.25, 3.0], dtype=ml_dtypes.bfloat16)
    # .npz has no bf16: raw 16-bit patterns are accepted, and results come back as exact float32.
    got = _run_to_npz(tmp_path, str(program), {"x": x.view(np.uint16)})
    assert got["y"].dtype == np.float32
    np.testing.assert_array_equal(got["y"], (x.astype(np.float32) ** 2))


# ----------------------------------------------------------------------------------------------- virtual devices
def test_devices_flag(capsys):
    prog = os.path.join(EXAMPLES, "dp_tp_mlp.fir")
    assert fir_run([prog, "--devices", "6", "--check"]) == 0
    out = capsys.readouterr().out
    assert "6 virtual devices" in out and "check y: ok" in out
    assert fir_run([prog, "--devices", "3"]) == 1
    assert "error: mesh @grid uses device 3, but there are only 3 virtual devices" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        fir_run([prog, "--devices", "zero"])
    assert e.value.code == 2


def test_check_reports_a_wrong_result(monkeypatch, capsys):
    """--check fails (exit 1, naming the result) when the distributed run disagrees with the reference."""
    import fir.runtime.plan_executor as executor

    real = executor.execute_plan

    def off_by_a_little(*args, **kwargs):
        run = real(*args, **kwargs)
        run.outputs = [r + 1e-3 for r in run.outputs]
        return run

    monkeypatch.setattr(executor, "execute_plan", off_by_a_little)
    assert fir_run([os.path.join(EXAMPLES, "tp_mlp.fir"), "--check", "--quiet"]) == 1
    assert "error: result y differs from the single-device reference" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- plans
PIPELINE = os.path.join(EXAMPLES, "pipeline_train_mlp.fir")


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_micro_batched_pipeline_in_every_interleaving(schedule, capsys):
    for interleave in ("in-order", "random", "adversarial"):
        argv = [PIPELINE, "--microbatches", "4", "--schedule", schedule, "--interleave", interleave, "--check"]
        if interleave != "in-order":
            argv += ["--interleave-seed", "5"]
        assert fir_run(argv) == 0
        out = capsys.readouterr().out
        assert out.count(": ok (max abs error") == 5, out


def test_trace_of_a_run_and_of_a_simulation(tmp_path, capsys):
    import json

    run, sim = tmp_path / "run.json", tmp_path / "sim.json"
    assert fir_run([PIPELINE, "--microbatches", "2", "--trace", str(run), "--quiet"]) == 0
    assert fir_run([PIPELINE, "--microbatches", "2", "--simulate", "--hardware", "h100-ib", "--trace", str(sim)]) == 0
    report = capsys.readouterr().out
    assert "simulated @train_step on h100-ib (streams overlap): step time" in report
    assert "pipeline bubble:" in report and f"wrote {sim}" in report
    for path, simulated in ((run, False), (sim, True)):
        data = json.loads(path.read_text())
        complete = [e for e in data["traceEvents"] if e["ph"] == "X"]
        assert complete and all(e["pid"] >= 1 and e["tid"] >= 1 and e["dur"] >= 0 for e in complete)
        assert {e["pid"] for e in complete} == {1, 2}  # devices 0 and 1
        assert data["otherData"].get("simulated", False) is simulated
    assert json.loads(sim.read_text())["otherData"]["hardware"] == "h100-ib"


@pytest.mark.parametrize("argv,message", [
    (["--simulate", "--check"], "--check has no effect with --simulate"),
    (["--simulate", "--seed", "3"], "--seed has no effect with --simulate"),
    (["--simulate", "--interleave", "random"], "--interleave has no effect with --simulate"),
    (["--hardware", "h100-ib"], "--hardware only says what --simulate models; add --simulate"),
    (["--interleave-seed", "2"], "--interleave-seed needs --interleave random or adversarial"),
    (["--microbatches", "0"], "expected a positive number of micro-batches, got '0'"),
    (["--schedule", "zigzag"], "invalid choice: 'zigzag'"),
])
def test_flags_that_would_be_ignored_or_are_bad_give_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        fir_run([PIPELINE, *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_plan_errors_are_located_and_write_nothing(tmp_path, capsys):
    from fir_tools.fir_opt import main as fir_opt

    out, trace = tmp_path / "o.npz", tmp_path / "t.json"
    mlp = os.path.join(EXAMPLES, "mlp.fir")
    assert fir_run([mlp, "--microbatches", "4"]) == 1
    assert "mlp.fir:8:1: error: --microbatches 4: no argument of @mlp is marked `microbatch = axis`" in \
        capsys.readouterr().err
    # The output cannot be written: neither it nor the trace is left behind.
    assert fir_run([PIPELINE, "--trace", str(trace), "--output", str(tmp_path / "no" / "o.npz")]) == 1
    assert "cannot write outputs" in capsys.readouterr().err and not trace.exists()
    assert fir_run([mlp, "--simulate", "--trace", str(tmp_path / "no" / "t.json")]) == 1
    assert "cannot write the trace" in capsys.readouterr().err
    assert fir_run([mlp, "--simulate", "--hardware", "h100-pcie"]) == 1
    assert "unknown hardware 'h100-pcie'" in capsys.readouterr().err
    # Device programs that talk to each other run only together, from the logical program; planned or not.
    for passes in ("sbp-infer,insert-boxing,partition", "sbp-infer,insert-boxing,partition,schedule,plan-memory"):
        parted = tmp_path / "parted.fir"
        assert fir_opt([os.path.join(EXAMPLES, "tp_mlp.fir"), "-p", passes, "-o", str(parted)]) == 0
        assert fir_run([str(parted), "--output", str(out)]) == 1
        assert "the program holds the device programs of @mlp, which run only together" in capsys.readouterr().err
        assert fir_run([str(parted), "--entry", "mlp.dev1", "--output", str(out)]) == 1
        assert "'comm.all_reduce' needs the other devices: @mlp.dev1 is one device's program" in \
            capsys.readouterr().err and not out.exists()


def test_a_planned_file_runs_as_it_is_and_its_offsets_are_checked(tmp_path, capsys):
    from fir_tools.fir_opt import main as fir_opt

    planned = tmp_path / "planned.fir"
    clf = os.path.join(EXAMPLES, "classifier.fir")
    assert fir_opt([clf, "-p", "schedule,plan-memory", "-o", str(planned)]) == 0
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert fir_run([clf, "--output", str(a), "--quiet"]) == 0
    assert fir_run([str(planned), "--output", str(b), "--quiet", "--interleave", "adversarial"]) == 0
    with np.load(a) as za, np.load(b) as zb:
        assert za.files == zb.files  # the same names: the plan's results are named after what they copy out
        for k in za.files:
            np.testing.assert_array_equal(za[k], zb[k])
    assert fir_run([str(planned), "--schedule", "gpipe"]) == 1
    assert "--schedule shapes how a program is compiled, but @classifier is a plan already" in capsys.readouterr().err
    text = planned.read_text()
    offset = text.split("%w2.in = plan.load %w2 {stream = \"h2d\", offset = ")[1].split("}")[0]
    planned.write_text(text.replace(f"%w2.in = plan.load %w2 {{stream = \"h2d\", offset = {offset}}}",
                                    "%w2.in = plan.load %w2 {stream = \"h2d\", offset = 0}"))
    assert fir_run([str(planned)]) == 1
    assert "'plan.load' writes [0, 5120) over bytes of %w1.in" in capsys.readouterr().err

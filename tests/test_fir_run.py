"""fir-run end to end: inputs, outputs, entry selection, and results against numpy written out by hand."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from scipy.special import erf, log_softmax

from fir.dtypes import TOLERANCE
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
    import fir_tools.fir_run as tool

    real = tool.run_partitioned
    monkeypatch.setattr(tool, "run_partitioned", lambda *a: [r + 1e-3 for r in real(*a)])
    assert fir_run([os.path.join(EXAMPLES, "tp_mlp.fir"), "--check", "--quiet"]) == 1
    assert "error: result y differs from the single-device reference" in capsys.readouterr().err

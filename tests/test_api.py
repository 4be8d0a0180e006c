"""fir.api: the example in docs/api.md runs as written, and the API's own behaviour."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from fir import api
from fir.syntax.diagnostics import FirError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def test_the_documented_example_runs():
    text = open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/api.md has no python example"
    done = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "['mlp']" in done.stdout and "4 ['y']" in done.stdout and "bubble" in done.stdout


def test_run_takes_and_returns_arrays_by_name():
    prog = api.load(os.path.join(EXAMPLES, "mlp.fir"))
    inputs = prog.random_inputs(seed=3)
    got = prog.run(inputs)
    assert list(got.inputs) == list(inputs) and all(np.array_equal(got.inputs[k], v) for k, v in inputs.items())
    want = prog.reference(inputs)
    assert list(got.outputs) == list(want)
    for name in want:
        np.testing.assert_allclose(got.outputs[name], want[name], rtol=1e-5, atol=1e-6)
    # The same inputs through a seed give the same outputs.
    again = prog.run(seed=3)
    for name in want:
        np.testing.assert_array_equal(again.outputs[name], got.outputs[name])


def test_bad_inputs_are_errors_naming_the_argument():
    prog = api.load(os.path.join(EXAMPLES, "mlp.fir"))
    inputs = prog.random_inputs()
    with pytest.raises(FirError, match="inputs lack 'x'"):
        prog.run({k: v for k, v in inputs.items() if k != "x"})
    with pytest.raises(FirError, match="which @mlp does not take"):
        prog.run(inputs | {"z": np.zeros(1, np.float32)})
    with pytest.raises(FirError, match="input 'x' has dtype float64 but %x is f32"):
        prog.run(inputs | {"x": inputs["x"].astype(np.float64)})
    with pytest.raises(FirError, match="inputs or a seed, not both"):
        prog.run(inputs, seed=1)
    with pytest.raises(FirError, match="unknown backend 'tpu'"):
        prog.run(inputs, backend="tpu")


def test_bf16_arguments_take_exact_float32_values():
    prog = api.parse("func.func @f(%x: tensor<4xbf16>) -> tensor<4xbf16> {\n"
                     "  %y = flow.neg %x : tensor<4xbf16>\n  func.return %y\n}\n", "b.fir")
    out = prog.run({"x": np.array([1.0, -2.5, 0.125, 3.0], np.float32)}, check=True)
    assert out.mismatches() == []
    assert out.outputs["y"].astype(np.float32).tolist() == [-1.0, 2.5, -0.125, -3.0]
    with pytest.raises(FirError, match="float32 values that bf16 does not hold exactly, but %x is bf16"):
        prog.run({"x": np.array([1.0, 1.001, 0.0, 0.0], np.float32)})  # 1.001 is not a bf16 value


def test_apply_and_text_show_each_stage():
    prog = api.load(os.path.join(EXAMPLES, "tp_mlp.fir"))
    boxed = prog.apply("sbp-infer,insert-boxing")
    assert "comm.all_reduce" in boxed.text() and "comm.all_reduce" not in prog.text()
    assert api.parse(boxed.text("mlir"), "x.mlir").text() == boxed.text()  # MLIR generic round trip
    with pytest.raises(FirError, match=r"unknown pass 'sbp-infr' \(did you mean 'sbp-infer'\?\)"):
        prog.apply("sbp-infr")
    with pytest.raises(FirError, match="unknown target"):
        prog.text("llvm")


def test_compile_refuses_microbatches_with_nothing_to_split():
    prog = api.load(os.path.join(EXAMPLES, "mlp.fir"))
    with pytest.raises(FirError, match="nothing to split"):
        prog.compile(microbatches=2)


def test_low_precision_check_allows_rounding_of_cancelled_partial_sums():
    from fir.runtime.compare import compare

    want = np.array([340.0, 1.765625, -12.0], dtype=np.float32)
    # Two bf16 partial sums of about 235 cancelling: one ulp of them (1.0) lands on the small element.
    near = np.array([340.0, 2.0, -12.0], dtype=np.float32)
    assert compare(near, want, "bf16").ok
    assert not compare(near, want, "f32").ok  # f32 keeps its element-wise tolerance
    # Beyond two units of rounding of the largest magnitude (2 * 2^-7 * 340 = 5.3): a real error.
    wrong = np.array([340.0, 8.0, -12.0], dtype=np.float32)
    assert not compare(wrong, want, "bf16").ok
    assert not compare(np.array([340.0, 1.765625, -20.0], dtype=np.float32), want, "bf16").ok


def test_compile_verifies_once_unless_asked_for_each_pass(monkeypatch):
    import fir.compile as fc

    calls = []
    real = fc.verify_module
    monkeypatch.setattr(fc, "verify_module", lambda m: (calls.append(1), real(m)))
    prog = api.load(os.path.join(EXAMPLES, "dp_mlp.fir"))
    prog.compile(verify_each=False)
    assert len(calls) == 1
    calls.clear()
    prog.compile(verify_each=True)
    assert len(calls) == 6  # sbp-infer, insert-boxing, spmd-partition, fuse, schedule, plan-memory
    calls.clear()
    prog.compile(verify_each=False, expand=True)
    assert len(calls) == 1  # the SPMD plans, once, before expand-devices writes every device's
    calls.clear()
    prog.compile(verify_each=True, expand=True)
    assert len(calls) == 7
    calls.clear()
    monkeypatch.setenv("FIR_VERIFY_EACH", "0")
    prog.compile()
    assert len(calls) == 1

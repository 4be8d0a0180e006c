"""The tools behave as their anchors (mlir-opt, xdsl-opt, python tools) do: versions, flags, plain messages."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from fir_tools.fir_opt import main as fir_opt
from fir_tools.fir_run import main as fir_run

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
MLP = os.path.join(EXAMPLES, "mlp.fir")


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_fir_run_version(capsys):
    with pytest.raises(SystemExit) as e:
        fir_run(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("fir-run 0.")


@pytest.mark.parametrize("flag", ["--seed", "--interleave-seed"])
@pytest.mark.parametrize("value", ["-1", "x"])
def test_negative_or_bad_seed_is_usage_error(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        fir_run([MLP, flag, value, "--interleave", "random"])
    assert e.value.code == 2
    assert f"argument {flag}: expected a seed, a whole number from 0, got '{value}'" in capsys.readouterr().err


def test_save_inputs_round_trips(tmp_path, capsys):
    saved, out1, out2 = (str(tmp_path / n) for n in ("in.npz", "a.npz", "b.npz"))
    assert fir_run([MLP, "--seed", "7", "--save-inputs", saved, "--output", out1]) == 0
    assert f"wrote {saved}" in capsys.readouterr().out
    assert fir_run([MLP, "--inputs", saved, "--output", out2, "--quiet"]) == 0
    with np.load(out1) as a, np.load(out2) as b:
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    with np.load(saved) as s:
        assert sorted(s.files) == ["b1", "b2", "w1", "w2", "x"]


def test_save_inputs_of_bf16_arguments_load_back(tmp_path):
    prog = _write(tmp_path, "b.fir", "func.func @f(%x: tensor<8xbf16>) -> tensor<8xbf16> {\n"
                  "  %y = flow.exp %x : tensor<8xbf16>\n  func.return %y\n}\n")
    saved = str(tmp_path / "in.npz")
    assert fir_run([prog, "--save-inputs", saved, "--quiet"]) == 0
    assert fir_run([prog, "--inputs", saved, "--check", "--quiet"]) == 0


def test_non_npz_inputs_are_not_called_pickled(tmp_path, capsys):
    bad = _write(tmp_path, "in.npz", "hello\n")
    assert fir_run([MLP, "--inputs", bad]) == 1
    err = capsys.readouterr().err
    assert "not an .npz archive of named arrays" in err and "pickle" not in err


def test_f64_runs_and_an_unknown_dtype_names_the_known_ones(tmp_path, capsys):
    prog = _write(tmp_path, "d.fir", "func.func @f(%x: tensor<4xf64>) -> tensor<4xf64> {\n  %y = flow.exp %x\n"
                  "  func.return %y\n}\n")
    assert fir_run([prog, "--check"]) == 0
    assert "check y: ok" in capsys.readouterr().out
    bad = _write(tmp_path, "e.fir", "func.func @f(%x: tensor<4xi8>) -> tensor<4xi8> {\n  func.return %x\n}\n")
    assert fir_run([bad]) == 1
    err = capsys.readouterr().err
    assert "e.fir:1:27: error: unknown element type 'i8' (fir has f32, f16, bf16, f64, i32, i64, i1)" in err


def test_no_runtime_warning_reaches_the_user(tmp_path):
    prog = _write(tmp_path, "m.fir", "func.func @f(%x: tensor<2x4xf16>) -> (tensor<2x4xf16>, tensor<2xf16>) {\n"
                  "  %m = flow.fill {value = -inf} : tensor<2x4xf16>\n"
                  "  %y = flow.add %x, %m : tensor<2x4xf16>\n"
                  "  %s = flow.softmax %y {axis = -1} : tensor<2x4xf16>\n"
                  "  %b = flow.fill {value = 60000.0} : tensor<2x4xf16>\n"
                  "  %t = flow.reduce_sum %b {axes = [1]} : tensor<2xf16>\n"
                  "  func.return %s, %t\n}\n")
    done = subprocess.run([sys.executable, "-W", "default", "-m", "fir_tools.fir_run", prog, "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "non-finite 8" in done.stdout and "inf" in done.stdout  # the nans and the overflow are the results
    assert "Warning" not in done.stderr and done.stderr == ""


def test_plan_memory_without_a_plan_says_why(tmp_path, capsys):
    assert fir_opt([MLP, "-p", "plan-memory"]) == 0
    assert "no function is an execution plan yet" in capsys.readouterr().err
    assert fir_opt([MLP, "-p", "schedule,plan-memory"]) == 0
    assert capsys.readouterr().err == ""


def test_help_lists_only_flags_that_work(capsys):
    with pytest.raises(SystemExit):
        fir_opt(["--help"])
    out = capsys.readouterr().out
    for flag in ("--time-passes", "--print-op-generic", "--print-between-passes", "--split-input-file"):
        assert flag in out
    for gone in ("--shrink", "--syntax-highlight", "--print-debuginfo", "--allow-unregistered-dialect"):
        assert gone not in out


def test_tool_constants_follow_the_library():
    from fir import api
    from fir.dialects.plan import ORDERS
    from fir.runtime.plan_executor import INTERLEAVINGS
    from fir_tools import fir_opt as opt_tool
    from fir_tools import fir_run as run_tool

    assert run_tool.BACKENDS == api.BACKENDS and tuple(run_tool.ORDERS) == tuple(ORDERS)
    assert tuple(run_tool.INTERLEAVINGS) == tuple(INTERLEAVINGS) and opt_tool.TARGETS == api.TARGETS


def test_help_imports_nothing_heavy():
    code = ("import sys\nfrom fir_tools.fir_run import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('xdsl.dialects.builtin', 'numpy', 'ml_dtypes', 'lark') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr

"""Fuzzing the frontend and the command-line tools: broken input gives a located diagnostic, never a traceback.

Every example program under examples/ and a few inline programs are mutated (truncation, deleted, duplicated,
swapped or replaced tokens and lines, other numbers, random bytes). Each mutant must either parse or raise
FirError with a location; a sample of mutants also goes through `fir-opt` and `fir-run` as subprocesses, which
must exit with 0 or 1 and, on 1, start stderr with `file:line:col: error:`. The tools' argument and .npz input
handling is tested as well.

The bugs these tests found are pinned as regression tests by their reduced reproducers at the end of the file.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fir.syntax.diagnostics import FirError
from fir.syntax.printer import print_fir
from fir.syntax.frontend import parse_source
from fir_tools import fir_opt, fir_run

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------------------------- the corpus
INLINE: dict[str, str] = {
    "inline_model.fir": """\
// A small model touching most flow ops.
func.func @main(%x: tensor<4x8xf32>, %w: tensor<8x6xf32>, %b: tensor<6xf32>,
                %labels: tensor<4xi32>) -> (tensor<f32>, tensor<4x6xf32>) {
  %mm = flow.matmul %x, %w {transpose_a = false}          // 4x6
  %h = flow.add %mm, %b
  %g = flow.gelu %h {approximate = "tanh"}
  %gamma = flow.fill {value = 1.0} : tensor<6xf32>
  %beta = flow.constant {value = [0.0, 0.5, -0.5, 1e-3, 2.0, -1.25]} : tensor<6xf32>
  %ln = flow.layernorm %g, %gamma, %beta {axes = [-1], eps = 1.0e-5} : tensor<4x6xf32>
  %sm = flow.softmax %ln {axis = 1}
  %t = flow.transpose %sm {perm = [1, 0]} : tensor<6x4xf32>
  %r = flow.reshape %t : tensor<2x3x4xf32>
  %s = flow.slice %r {start = [0, 1, 0], limit = [2, 3, 4], stride = [1, 1, 2]}
  %c = flow.concat %s, %s {axis = 2} : tensor<2x2x4xf32>
  %m = flow.reduce_mean %c {axes = [0, -1], keepdims = true}
  %i = flow.iota {axis = 0} : tensor<3xi32>
  %e = flow.gather %ln, %i {axis = 1}
  %lo = flow.cast %e : tensor<4x3xbf16>
  %hi = flow.cast %lo : tensor<4x3xf32>
  %loss = flow.cross_entropy %ln, %labels {reduction = "mean"}
  func.return %loss, %ln : tensor<f32>, tensor<4x6xf32>
}
""",
    "inline_module.fir": """\
module @two {
  func.func @helper(%a: tensor<2x3xf32>) -> tensor<3x2xf32> {
    %t = flow.transpose %a {perm = [1, 0]}
    func.return %t
  }
  func.func @main(%a: tensor<2x3xf32>, %k: tensor<f32>) -> (tensor<2x3xf32>, tensor<3xf32>) {
    %n = flow.neg %a
    %e = flow.exp %n
    %p = flow.pow %e, %k
    %q = flow.max %p, %a
    %d = flow.div %q, %e
    %s = flow.reduce_sum %d {axes = [0]}
    %mx = flow.reduce_max %d {axes = [0], keepdims = false}
    %z = flow.sub %s, %mx : tensor<3xf32>
    %y = flow.min %d, %k
    func.return %y, %z
  }
}
""",
    "inline_generic.mlir": """\
"builtin.module"() ({
  "func.func"() <{sym_name = "main", function_type = (tensor<4x8xf32>, tensor<8x6xf32>, tensor<4xi32>) -> (tensor<f32>, tensor<4x6xf32>)}> ({
  ^bb0(%x: tensor<4x8xf32>, %w: tensor<8x6xf32>, %labels: tensor<4xi32>):
    %mm = "flow.matmul"(%x, %w) <{transpose_a = false, transpose_b = false}> : (tensor<4x8xf32>, tensor<8x6xf32>) -> tensor<4x6xf32>
    %g = "flow.gelu"(%mm) <{approximate = "tanh"}> : (tensor<4x6xf32>) -> tensor<4x6xf32>
    %gamma = "flow.fill"() <{value = 1.000000e+00 : f64}> : () -> tensor<6xf32>
    %beta = "flow.constant"() <{value = dense<[0.000000e+00, 5.000000e-01, -5.000000e-01, 1.000000e-03, 2.000000e+00, 1.5]> : tensor<6xf64>}> : () -> tensor<6xf32>
    %ln = "flow.layernorm"(%g, %gamma, %beta) <{axes = array<i64: -1>, eps = 1.000000e-05 : f64}> : (tensor<4x6xf32>, tensor<6xf32>, tensor<6xf32>) -> tensor<4x6xf32>
    %t = "flow.transpose"(%ln) <{perm = array<i64: 1, 0>}> : (tensor<4x6xf32>) -> tensor<6x4xf32>
    %r = "flow.reshape"(%t) : (tensor<6x4xf32>) -> tensor<2x3x4xf32>
    %s = "flow.slice"(%r) <{start = array<i64: 0, 1, 0>, limit = array<i64: 2, 3, 4>, stride = array<i64: 1, 1, 2>}> : (tensor<2x3x4xf32>) -> tensor<2x2x2xf32>
    %i = "flow.iota"() <{axis = 0 : i64}> : () -> tensor<3xi32>
    %e = "flow.gather"(%ln, %i) <{axis = 1 : i64}> : (tensor<4x6xf32>, tensor<3xi32>) -> tensor<4x3xf32>
    %lo = "flow.cast"(%e) : (tensor<4x3xf32>) -> tensor<4x3xbf16>
    %loss = "flow.cross_entropy"(%ln, %labels) <{reduction = "mean"}> : (tensor<4x6xf32>, tensor<4xi32>) -> tensor<f32>
    "func.return"(%loss, %ln) : (tensor<f32>, tensor<4x6xf32>) -> ()
  }) : () -> ()
}) : () -> ()
""",
    "inline_odd.fir": """\
func.func @odd(%s: tensor<f32>,
               %v: tensor<5xf32>) -> tensor<2x5xf32>
{
  %big = flow.constant {value = [[1, 2, 3, 4, 5], [-1.5, 2.5e2, 16, 1e-3, -0.0]]} : tensor<2x5xf32>
  %nan = flow.fill {value = nan} : tensor<5xf32>
  %inf = flow.fill {value = -inf} : tensor<2x1xf32>
  %three = flow.fill {value = 3} : tensor<2x5xi32>
  %f = flow.cast %three : tensor<2x5xf32>
  %bv = flow.broadcast_to %v : tensor<2x5xf32>
  %sum = flow.add %bv, %s
  %m = flow.mul %sum, %f
  %r = flow.relu %m
  %sq = flow.sqrt %r
  %rs = flow.rsqrt %f
  %l = flow.log %rs
  %th = flow.tanh %l
  %sg = flow.sigmoid %th
  %h16 = flow.cast %sg : tensor<2x5xf16>
  %back = flow.cast %h16 : tensor<2x5xf32>
  %out = flow.add %back, %big
  %odd = flow.max %nan, %inf
  func.return %out
}
""",
}


def _corpus() -> list[tuple[str, bytes]]:
    out = [(name, text.encode()) for name, text in INLINE.items()]
    for path in sorted((ROOT / "examples").glob("**/*")):
        if path.suffix in (".fir", ".mlir") and path.is_file():
            out.append((str(path.relative_to(ROOT)).replace(os.sep, "/"), path.read_bytes()))
    return out


CORPUS = _corpus()


def syntax_for(name: str) -> str | None:
    """The syntax the tools pick for a file name (fir-opt and fir-run read .mlir as MLIR, else sniff)."""
    return "mlir" if name.endswith(".mlir") else None


def test_corpus_parses():
    assert len(CORPUS) >= len(INLINE)
    for name, data in CORPUS:
        parse_source(data.decode(), name, syntax_for(name))


# ----------------------------------------------------------------------------------------------- mutations
TOKEN = re.compile(
    rb'//[^\n]*|"(?:[^"\\\n]|\\.)*"|tensor<[^>\n]*>|[%@^#!][\w$.\-]*|-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?'
    rb"|[A-Za-z_][\w$.]*|->|\S"
)
NUMBER = re.compile(rb"-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")
VOCAB = [b"%x", b"}", b"{", b"flow.add", b"tensor<2x?xf32>", b"axes = [9]", b"-", b'"', b"@", b"// -----",
         b"tensor<f32>", b"func.return", b":", b",", b"=", b"(", b")", b"[", b"]", b"module", b"%", b"->"]
NUMBERS = [b"0", b"1", b"-1", b"2", b"3", b"7", b"64", b"-0.0", b"1.5", b"1e400", b"-7e-3", b"nan", b"inf",
           b"99999999999999999999", b"9223372036854775808", b"-9223372036854775809", b"0x10", b"00", b"1.", b"5e"]
ODD_BYTES = [b"\xff", b"\xc3", b"\xe2\x82", b"\x80", b"\x00", b"\t", b"\r", b"\r\n", b"\x0b", b"\xc3\xa9",
             b"\xe2\x80\xa8", b"\xf0\x9f\x98\x80", b"\xef\xbb\xbf", b"\\", b"'"]

KINDS = ("truncate", "delete_char", "delete_token", "dup_line", "swap_lines", "replace_token", "replace_number",
         "insert_bytes", "insert_vocab")


def mutate(draw, data: bytes, kind: str, numbers: list[bytes] = NUMBERS) -> bytes:
    """Apply one mutation of the given kind, choosing positions with `draw`."""
    n = len(data)
    if kind == "truncate":
        return data[: draw(st.integers(0, n))]
    if kind == "delete_char" and n:
        k = draw(st.integers(0, n - 1))
        return data[:k] + data[k + 1:]
    if kind in ("delete_token", "replace_token"):
        toks = list(TOKEN.finditer(data))
        if not toks:
            return data
        t = draw(st.sampled_from(toks))
        new = b""
        if kind == "replace_token":
            new = draw(st.sampled_from(VOCAB)) if draw(st.booleans()) else draw(st.sampled_from(toks)).group()
        return data[: t.start()] + new + data[t.end():]
    if kind in ("dup_line", "swap_lines"):
        lines = data.split(b"\n")
        i = draw(st.integers(0, len(lines) - 1))
        if kind == "dup_line":
            lines.insert(i, lines[i])
        else:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        return b"\n".join(lines)
    if kind == "replace_number":
        nums = list(NUMBER.finditer(data))
        if not nums:
            return data
        m = draw(st.sampled_from(nums))
        return data[: m.start()] + draw(st.sampled_from(numbers)) + data[m.end():]
    if kind in ("insert_bytes", "insert_vocab"):
        k = draw(st.integers(0, n))
        if kind == "insert_vocab":
            new = draw(st.sampled_from(VOCAB))
        elif draw(st.booleans()):
            new = draw(st.sampled_from(ODD_BYTES))
        else:
            new = draw(st.binary(min_size=1, max_size=6))
        if draw(st.booleans()) and k < n:  # overwrite instead of insert
            return data[:k] + new + data[k + len(new):]
        return data[:k] + new + data[k:]
    return data


@st.composite
def mutants(draw, corpus: list[tuple[str, bytes]] | None = None, numbers: list[bytes] = NUMBERS):
    """(source name, mutated bytes, the mutations applied)."""
    name, data = draw(st.sampled_from(corpus or CORPUS))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=3))
    for kind in kinds:
        data = mutate(draw, data, kind, numbers)
    return name, data, kinds


# ----------------------------------------------------------------------------------------------- (a) in process
LOCATED = r"^{}:\d+:\d+: error: "


def check_parse(name: str, text: str, what: str) -> None:
    """parse_source either succeeds (and then prints and reparses) or raises a located FirError."""
    shown = f"{what}; mutated input {name}:\n{text!r}"
    try:
        module = parse_source(text, name, syntax_for(name))
    except FirError as e:
        assert e.loc is not None, f"FirError without a location: {e.message!r}\n{shown}"
        rendered = e.render({name: text})
        assert re.match(LOCATED.format(re.escape(name)), rendered), f"badly rendered:\n{rendered}\n{shown}"
        assert 1 <= e.loc.line <= text.count("\n") + 1 and e.loc.col >= 1, f"location {e.loc} is outside\n{shown}"
        return
    except Exception as e:  # noqa: BLE001 - any other exception is the failure under test
        pytest.fail(f"{type(e).__name__}: {e}\n{shown}")
    try:
        printed = print_fir(module)
        parse_source(printed, "<printed>")
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"the parsed mutant does not print and read back: {type(e).__name__}: {e}\n{shown}")


@pytest.mark.parametrize("name,data", CORPUS, ids=[n for n, _ in CORPUS])
def test_truncations(name: str, data: bytes):
    text = data.decode()
    step = max(1, len(text) // 60)
    for k in sorted(set(range(0, len(text), step)) | {len(text) - 1, len(text) - 2}):
        check_parse(name, text[:k], f"truncated at {k}")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutants())
def test_mutants_parse_or_fail_located(mutant):
    name, data, kinds = mutant
    check_parse(name, data.decode("utf-8", errors="replace"), f"mutations {kinds}")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CORPUS), st.text(min_size=1, max_size=8), st.data())
def test_unicode_insertions(source, junk: str, data):
    """Any characters (NUL, U+2028, surrogates, emoji, ...) inserted anywhere."""
    name, raw = source
    text = raw.decode()
    k = data.draw(st.integers(0, len(text)))
    check_parse(name, text[:k] + junk + text[k:], f"inserted {junk!r} at {k}")


# ----------------------------------------------------------------------------------------------- (b) the tools
def tool_cmd(tool: str) -> list[str]:
    """How to start fir-opt / fir-run: `python -m fir_tools.<module>`, else the script next to python."""
    module = "fir_tools." + tool.replace("-", "_")
    if importlib.util.find_spec(module) is not None:
        return [sys.executable, "-m", module]
    return [str(Path(sys.executable).with_name(tool))]


def run_tools(cmds: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Run commands concurrently (each mostly waits on imports) with a generous timeout."""
    env = dict(os.environ)
    env.pop("FIR_DEBUG", None)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(subprocess.run, c, cwd=cwd, capture_output=True, text=True, errors="replace",
                               timeout=120, env=env) for c in cmds]
        return [f.result() for f in futures]


def check_tool_result(tool: str, path: Path, proc: subprocess.CompletedProcess, shown: str) -> None:
    what = f"{tool} exited {proc.returncode}\nstderr:\n{proc.stderr}\n{shown}"
    assert proc.returncode in (0, 1), what
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, what
    if proc.returncode == 1:
        first = proc.stderr.splitlines()[0] if proc.stderr else ""
        assert re.match(LOCATED.format(re.escape(str(path))), first), what


# Small numbers only: a valid program with a dimension of 2**31 would make fir-run really allocate gigabytes.
CLI_NUMBERS = [b"0", b"1", b"-1", b"2", b"3", b"7", b"-0.0", b"1.5", b"1e400", b"nan", b"99999999999999999999"]


@settings(max_examples=10, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate], database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mutants(numbers=CLI_NUMBERS))
def test_tools_on_mutants(tmp_path: Path, mutant):
    name, data, kinds = mutant
    path = tmp_path / ("mutant" + (".mlir" if name.endswith(".mlir") else ".fir"))
    path.write_bytes(data)
    shown = f"mutations {kinds} of {name}; input:\n{data!r}"
    opt, run = run_tools([tool_cmd("fir-opt") + [str(path)], tool_cmd("fir-run") + [str(path), "--seed", "0"]],
                         tmp_path)
    check_tool_result("fir-opt", path, opt, shown)
    check_tool_result("fir-run", path, run, shown)


def test_tools_on_examples_and_their_truncations(tmp_path: Path):
    """Each unmutated source runs cleanly, and a truncated copy fails with a located error."""
    cmds, expect = [], []
    for i, (name, data) in enumerate(CORPUS[:4]):
        ext = ".mlir" if name.endswith(".mlir") else ".fir"
        whole, cut = tmp_path / f"whole{i}{ext}", tmp_path / f"cut{i}{ext}"
        whole.write_bytes(data)
        cut.write_bytes(data[: len(data) * 2 // 3])
        cmds += [tool_cmd("fir-opt") + [str(whole)], tool_cmd("fir-opt") + [str(cut)]]
        expect += [(whole, 0), (cut, 1)]
    for (path, rc), proc in zip(expect, run_tools(cmds, tmp_path)):
        assert proc.returncode == rc, f"{path}: exit {proc.returncode}\n{proc.stderr}"
        if rc == 1:
            check_tool_result("fir-opt", path, proc, str(path))


# ----------------------------------------------------------------------------------------------- flags and files
PROGRAM = INLINE["inline_model.fir"]


@pytest.fixture
def program(tmp_path: Path) -> Path:
    p = tmp_path / "model.fir"
    p.write_text(PROGRAM)
    return p


def test_bad_flags_subprocess(program: Path, tmp_path: Path):
    opt, run = run_tools([tool_cmd("fir-opt") + ["--no-such-flag", str(program)],
                          tool_cmd("fir-run") + [str(program), "--no-such-flag"]], tmp_path)
    for tool, proc in (("fir-opt", opt), ("fir-run", run)):
        assert proc.returncode == 2, proc.stderr
        # The program name is the script's (fir-opt) or, under `python -m`, the module's file (fir_opt.py).
        assert re.match(rf"usage: ({tool}|{tool.replace('-', '_')}\.py) ", proc.stderr), proc.stderr
        assert "--no-such-flag" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("tool,argv", [
    ("fir-opt", ["--no-such-flag", "{p}"]),
    ("fir-opt", ["-p", "no-such-pass", "{p}"]),
    ("fir-opt", ["-t", "cobol", "{p}"]),
    ("fir-opt", ["-f", "cobol", "{p}"]),
    ("fir-opt", ["{p}", "{p}"]),
    ("fir-run", ["--no-such-flag", "{p}"]),
    ("fir-run", []),
    ("fir-run", ["{p}", "--seed", "abc"]),
    ("fir-run", ["{p}", "--seed", "1", "--inputs", "x.npz"]),
    ("fir-run", ["{p}", "--backend", "opencl"]),
    ("fir-run", ["{p}", "--backend", "cuda", "--interleave", "random"]),
    ("fir-run", ["{p}", "--backend", "cuda", "--simulate"]),
])
def test_bad_flags_give_usage(tool: str, argv: list[str], program: Path, capsys):
    main = fir_opt.main if tool == "fir-opt" else fir_run.main
    with pytest.raises(SystemExit) as exc:
        main([a.format(p=program) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    # In process, fir-opt's program name is the test runner's argv[0]; fir-run names itself.
    prog = tool if tool == "fir-run" else r"\S+"
    assert re.match(rf"usage: {prog} ", err) and re.search(rf"^{prog}: error: ", err, re.M), err


def test_cuda_backend_without_pycuda_is_a_clear_error(program: Path, capsys, monkeypatch):
    for name in ("pycuda", "pycuda.autoprimaryctx", "pycuda.driver", "pycuda.compiler"):
        monkeypatch.setitem(sys.modules, name, None)  # as on a host without pycuda, whether or not this one has it
    assert fir_run.main([str(program), "--backend", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "--backend cuda needs pycuda" in err and "Traceback" not in err, err


def test_missing_input_file_subprocess(tmp_path: Path):
    missing = tmp_path / "no_such_file.fir"
    opt, run = run_tools([tool_cmd("fir-opt") + [str(missing)], tool_cmd("fir-run") + [str(missing)]], tmp_path)
    for tool, proc in (("fir-opt", opt), ("fir-run", run)):
        assert proc.returncode == 1, proc.stderr
        assert f"cannot read '{missing}'" in proc.stderr and "No such file" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------------- .npz inputs
def good_inputs() -> dict[str, np.ndarray]:
    return {"x": np.ones((4, 8), np.float32), "w": np.ones((8, 6), np.float32), "b": np.ones(6, np.float32),
            "labels": np.zeros(4, np.int32)}


def _write_npz(path: Path, **arrays) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _bad_npz(kind: str, path: Path) -> tuple[Path, str]:
    """Write a bad input file; returns it and a word its error message must name."""
    good = good_inputs()
    if kind == "missing_key":
        del good["w"]
        return _write_npz(path, **good), "'w'"
    if kind == "extra_key":
        return _write_npz(path, **good, bias=np.ones(3, np.float32)), "'bias'"
    if kind == "wrong_shape":
        good["x"] = np.ones((8, 4), np.float32)
        return _write_npz(path, **good), "'x'"
    if kind == "wrong_dtype":
        good["labels"] = np.zeros(4, np.float32)
        return _write_npz(path, **good), "'labels'"
    if kind == "scalar":
        good["b"] = np.float32(1.0)
        return _write_npz(path, **good), "'b'"
    if kind == "not_npz":
        path.write_text("this is not an npz file\n")
        return path, str(path)
    if kind == "empty":
        path.write_bytes(b"")
        return path, str(path)
    if kind == "truncated_npz":
        _write_npz(path, **good)
        path.write_bytes(path.read_bytes()[:100])
        return path, str(path)
    if kind == "pickled_object_array":
        good["x"] = np.array([{"evil": 1}, None], dtype=object)
        return _write_npz(path, **good), str(path)
    if kind == "pickle":
        path.write_bytes(pickle.dumps(good))
        return path, str(path)
    if kind == "missing_file":
        return path, str(path)
    raise AssertionError(kind)


NPZ_KINDS = ["missing_key", "extra_key", "wrong_shape", "wrong_dtype", "scalar", "not_npz", "empty", "truncated_npz",
             "pickled_object_array", "pickle", "missing_file"]


@pytest.mark.parametrize("kind", NPZ_KINDS)
def test_bad_npz_inputs(kind: str, program: Path, tmp_path: Path, capsys):
    inputs, named = _bad_npz(kind, tmp_path / "inputs.npz")
    out = tmp_path / "out.npz"
    before = sorted(os.listdir(tmp_path))
    rc = fir_run.main([str(program), "--inputs", str(inputs), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.startswith("fir-run: error: ") and named in err.splitlines()[0], err
    assert "Traceback" not in err and "internal error" not in err, err
    assert not out.exists() and sorted(os.listdir(tmp_path)) == before, "an output file was left behind"


def test_good_npz_inputs_and_output(program: Path, tmp_path: Path, capsys):
    inputs = _write_npz(tmp_path / "inputs.npz", **good_inputs())
    out = tmp_path / "out.npz"
    assert fir_run.main([str(program), "--inputs", str(inputs), "--output", str(out), "--quiet"]) == 0
    with np.load(out) as npz:
        assert sorted(npz.files) == ["ln", "loss"]
        assert npz["ln"].shape == (4, 6) and npz["loss"].shape == ()


def test_bad_npz_subprocess(program: Path, tmp_path: Path):
    missing, _ = _bad_npz("missing_key", tmp_path / "missing.npz")
    shaped, _ = _bad_npz("wrong_shape", tmp_path / "shaped.npz")
    out1, out2 = tmp_path / "o1.npz", tmp_path / "o2.npz"
    a, b = run_tools([tool_cmd("fir-run") + [str(program), "--inputs", str(missing), "--output", str(out1)],
                      tool_cmd("fir-run") + [str(program), "--inputs", str(shaped), "--output", str(out2)]], tmp_path)
    for proc, word in ((a, "'w'"), (b, "'x'")):
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith("fir-run: error: ") and word in proc.stderr and "Traceback" not in proc.stderr
    assert not out1.exists() and not out2.exists()


def test_failed_run_leaves_no_output(tmp_path: Path, capsys):
    """A program that fails at run time (an index out of range) writes no --output file."""
    p = tmp_path / "bad.fir"
    p.write_text("func.func @f(%t: tensor<3x2xf32>) {\n  %i = flow.constant {value = [0, 5]} : tensor<2xi32>\n"
                 "  %g = flow.gather %t, %i\n  func.return %g\n}\n")
    out = tmp_path / "out.npz"
    assert fir_run.main([str(p), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert re.match(LOCATED.format(re.escape(str(p))), err) and "out of range" in err, err
    assert sorted(os.listdir(tmp_path)) == ["bad.fir"]


def test_fir_opt_failure_leaves_no_output(tmp_path: Path, capsys):
    p = tmp_path / "bad.fir"
    p.write_text(PROGRAM.replace("%h = flow.add %mm, %b", "%h = flow.add %mm, %nope"))
    out = tmp_path / "out.fir"
    assert fir_opt.main([str(p), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert re.match(LOCATED.format(re.escape(str(p))), err) and "%nope" in err, err
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- regressions
# Reduced reproducers of the bugs these tests found (each exited 3 with an internal error, hung, printed
# unparseable .fir, or gave an error without a location).
def test_npy_file_as_inputs_is_an_error(program: Path, tmp_path: Path, capsys):
    """fir-run --inputs x.npy: np.load returns an ndarray, which was used as a context manager (TypeError)."""
    npy = tmp_path / "inputs.npy"
    np.save(npy, np.zeros(3, np.float32))
    rc = fir_run.main([str(program), "--inputs", str(npy)])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("fir-run: error: ") and str(npy) in err, err


def test_huge_dimension_is_a_located_error(tmp_path: Path, capsys):
    """A dimension beyond int64 parsed, and fir-run then crashed (ValueError: Maximum allowed dimension)."""
    p = tmp_path / "huge.fir"
    p.write_text("func.func @f(%a: tensor<100000000000000000000xf32>) {\n  func.return %a\n}\n")
    rc = fir_run.main([str(p)])
    err = capsys.readouterr().err
    assert rc == 1 and re.match(LOCATED.format(re.escape(str(p))), err), err


def test_fir_run_huge_tensor_is_an_error(tmp_path: Path, capsys):
    """Inputs too large to allocate (2**47 elements, under the parser's limit) crashed fir-run (MemoryError)."""
    p = tmp_path / "huge.fir"
    # 2**47 float64 random values: 1 PiB, so the allocation fails at once (it cannot half-succeed).
    p.write_text("func.func @f(%a: tensor<140737488355328xf32>) {\n  func.return %a\n}\n")
    rc = fir_run.main([str(p)])
    err = capsys.readouterr().err
    assert rc == 1 and re.match(LOCATED.format(re.escape(str(p))), err), err


@pytest.mark.parametrize("text", ["// nothing here\n", "", "module @m {\n}\n"])
def test_fir_run_no_function_error_is_located(tmp_path: Path, capsys, text: str):
    """fir-run's 'no function to run' had no file:line:col."""
    p = tmp_path / "empty.fir"
    p.write_text(text)
    rc = fir_run.main([str(p)])
    err = capsys.readouterr().err
    assert rc == 1 and re.match(LOCATED.format(re.escape(str(p))), err), err


def test_fir_run_several_functions_error_is_located(tmp_path: Path, capsys):
    p = tmp_path / "two.fir"
    p.write_text(INLINE["inline_module.fir"].replace("@main", "@other"))
    rc = fir_run.main([str(p)])
    err = capsys.readouterr().err
    assert rc == 1 and re.match(LOCATED.format(re.escape(str(p))), err) and "--entry" in err, err


@pytest.mark.parametrize("main", [fir_opt.main, fir_run.main], ids=["fir-opt", "fir-run"])
def test_invalid_utf8_error_is_located(tmp_path: Path, capsys, main):
    """A source that is not UTF-8 was reported as `fir-opt: error: ...` without file:line:col."""
    p = tmp_path / "latin1.fir"
    p.write_bytes(b"// caf\xe9\nfunc.func @f(%a: tensor<f32>) {\n  func.return %a\n}\n")
    rc = main([str(p)])
    err = capsys.readouterr().err
    assert rc == 1 and re.match(LOCATED.format(re.escape(str(p))), err), err


USE_BEFORE_DEF = """\
"func.func"() <{sym_name = "f", function_type = (tensor<f32>) -> tensor<f32>}> ({
^bb0(%a: tensor<f32>):
  %b = "flow.neg"(%b) : (tensor<f32>) -> tensor<f32>
  "func.return"(%b) : (tensor<f32>) -> ()
}) : () -> ()
"""


def test_mlir_use_before_definition_is_an_error(tmp_path: Path, capsys):
    """MLIR input whose op uses a value before its definition (here its own result) passed verify_module;
    fir-opt and fir-run then crashed with KeyError."""
    with pytest.raises(FirError) as exc:
        parse_source(USE_BEFORE_DEF, "self.mlir", "mlir")
    assert exc.value.loc is not None
    p = tmp_path / "self.mlir"
    p.write_text(USE_BEFORE_DEF)
    for main in (fir_opt.main, fir_run.main):
        rc = main([str(p)])
        err = capsys.readouterr().err
        assert rc == 1 and re.match(LOCATED.format(re.escape(str(p))), err), err


def test_numeric_block_label_is_an_error():
    """A block label that is a number (^0) escaped parse_source as a ValueError from xDSL."""
    text = ('"func.func"() <{sym_name = "f", function_type = (tensor<f32>) -> tensor<f32>}> ({\n'
            '^0(%a: tensor<f32>):\n  "func.return"(%a) : (tensor<f32>) -> ()\n}) : () -> ()\n')
    with pytest.raises(FirError) as exc:
        parse_source(text, "label.mlir", "mlir")
    assert exc.value.loc is not None


def test_unterminated_mlir_string_does_not_hang(tmp_path: Path):
    """An MLIR string literal that does not close took exponential time in xDSL's lexer (its regex
    `"(?:[^"...]+|...)*"` backtracks): a 42-byte file hung fir-opt. Run in a subprocess, so a hang is a timeout."""
    p = tmp_path / "quote.mlir"
    p.write_text('"' + "a" * 40 + "\n")
    proc = subprocess.run(tool_cmd("fir-opt") + [str(p)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and re.match(LOCATED.format(re.escape(str(p))), proc.stderr), proc.stderr


def _fir_opt_output_reads_back(tmp_path: Path, capsys, mlir: str) -> None:
    src, out = tmp_path / "in.mlir", tmp_path / "out.fir"
    src.write_text(mlir)
    rc = fir_opt.main([str(src), "-o", str(out)])
    err = capsys.readouterr().err
    if rc == 1:  # rejecting the input (with a location) is a fix too
        assert re.match(LOCATED.format(re.escape(str(src))), err), err
        return
    assert rc == 0, err
    parse_source(out.read_text(), str(out))


def test_mlir_bad_string_attribute_prints_back(tmp_path: Path, capsys):
    """MLIR input with a string attribute outside its choices verified; fir-opt printed .fir it then rejected."""
    _fir_opt_output_reads_back(tmp_path, capsys, """\
"func.func"() <{sym_name = "f", function_type = (tensor<2xf32>) -> tensor<2xf32>}> ({
^bb0(%a: tensor<2xf32>):
  %b = "flow.gelu"(%a) <{approximate = "bogus"}> : (tensor<2xf32>) -> tensor<2xf32>
  "func.return"(%b) : (tensor<2xf32>) -> ()
}) : () -> ()
""")


def test_mlir_odd_function_name_prints_back(tmp_path: Path, capsys):
    """An MLIR function name that is no .fir symbol (sym_name = "a b") printed as `func.func @a b(...)`."""
    _fir_opt_output_reads_back(tmp_path, capsys, """\
"func.func"() <{sym_name = "a b", function_type = (tensor<f32>) -> tensor<f32>}> ({
^bb0(%a: tensor<f32>):
  "func.return"(%a) : (tensor<f32>) -> ()
}) : () -> ()
""")


def test_mlir_leading_bad_character_is_an_error():
    with pytest.raises(FirError) as e:
        parse_source("\x00", "nul.mlir", "mlir")
    assert e.value.loc is not None


@pytest.mark.parametrize("text", ['"builtin.module"() ({\n}) : () -> ()\n',
                                  '"builtin.module"() ({\n^bb0:\n^bb1:\n}) : () -> ()\n'], ids=["no-block", "two-blocks"])
def test_mlir_module_without_one_block_is_an_error(text: str):
    with pytest.raises(FirError) as e:
        parse_source(text, "blocks.mlir", "mlir")
    assert e.value.loc is not None


def test_attribute_rejected_while_parsing_mlir_is_located():
    """xDSL verifies `1 : i0` while parsing and raised VerifyException out of parse_source."""
    text = '"builtin.module"() ({\n  %e = "flow.iota"() <{axis = 1 : i0}> : () -> tensor<3xi32>\n}) : () -> ()\n'
    with pytest.raises(FirError) as e:
        parse_source(text, "i0.mlir", "mlir")
    assert (e.value.loc.line, e.value.loc.col) == (2, 37)
    assert "out of range for type i0" in e.value.message


# ----------------------------------------------------------------------------------------------- distributed programs
# The five distributed examples and what `fir-opt -p sbp-infer,insert-boxing,partition` makes of them (after each
# pass, as .fir and as MLIR) are mutated where distribution lives: SBPs, meshes, placements, comm ops and their
# attributes, device programs' attributes and local types. Each mutant must parse or fail located (as above); the
# parsed ones then go through the passes and fir-run in process, and partitioned ones straight onto the virtual
# devices (fir.runtime.virtual_devices.run_partitioned), which must succeed or raise FirError: never another
# exception, an internal error, a wrong result or a hang. `python tests/test_fuzz_diagnostics.py N` runs N mutants
# of the full-size programs outside the suite (see _batch at the end).
import contextlib  # noqa: E402
import functools  # noqa: E402
import io  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402

from xdsl.dialects.func import FuncOp  # noqa: E402
from xdsl.printer import Printer  # noqa: E402

from fir.syntax.frontend import make_context, verify_module  # noqa: E402
from fir.passes import DISTRIBUTION_PIPELINE, available_passes  # noqa: E402
from fir.distribution.placement import DEVICE, OF, symbol_name  # noqa: E402
from fir.runtime.inputs import random_inputs  # noqa: E402
from fir.runtime.virtual_devices import devices_needed, run_partitioned  # noqa: E402

DIST_EXAMPLES = ("dp_mlp", "tp_mlp", "tp_attention", "dp_tp_mlp", "pipeline_mlp")
# Smaller tensors for the tests that compile and run mutants in the suite (tp_mlp multiplies 1024x4096 matrices;
# the structure is what matters): each listed dimension of a tensor type is replaced.
SMALL_DIMS = {"dp_mlp": {64: 8, 256: 16, 512: 32}, "tp_mlp": {64: 8, 1024: 16, 4096: 32},
              "tp_attention": {128: 8, 768: 96, 64: 8}, "dp_tp_mlp": {32: 4, 256: 8, 1024: 16},
              "pipeline_mlp": {32: 4, 128: 8, 512: 16}}


def _shrink(text: str, dims: dict[int, int]) -> str:
    return re.sub(r"tensor<([0-9x]+)x([a-z]+[0-9]*)>", lambda m: "tensor<" + "x".join(
        str(dims.get(int(d), d)) for d in m.group(1).split("x")) + "x" + m.group(2) + ">", text)


def _generic(module) -> str:
    out = io.StringIO()
    Printer(stream=out, print_generic_format=True).print_op(module)
    return out.getvalue() + "\n"


@functools.lru_cache(maxsize=None)
def dist_corpus(small: bool) -> tuple[tuple[str, str], ...]:
    """(name, text): each distributed example (small ones only; the full-size ones are in CORPUS) and its form after
    each distribution pass, in .fir and MLIR; the name says which, e.g. examples/tp_mlp.sbp-infer+insert-boxing.mlir."""
    out = []
    ctx, passes = make_context(), available_passes()
    for ex in DIST_EXAMPLES:
        name = f"examples/{ex}.fir"
        text = (ROOT / name).read_text()
        if small:
            text = _shrink(text, SMALL_DIMS[ex])
            out.append((name, text))
        module = parse_source(text, name)
        done = []
        for p in DISTRIBUTION_PIPELINE:
            passes[p]()().apply(ctx, module)
            verify_module(module)
            done.append(p)
            out.append((f"examples/{ex}.{'+'.join(done)}.fir", print_fir(module)))
            out.append((f"examples/{ex}.{'+'.join(done)}.mlir", _generic(module)))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def logical_inputs(ex: str, small: bool) -> tuple[np.ndarray, ...]:
    """Random inputs of an example's logical function, for running its (mutated) device programs."""
    text = (ROOT / f"examples/{ex}.fir").read_text()
    module = parse_source(_shrink(text, SMALL_DIMS[ex]) if small else text, ex)
    return tuple(random_inputs(next(f for f in module.ops if isinstance(f, FuncOp)), 0))


# Replacements, by what they replace.
SBP_ONE = ["S(0)", "S(1)", "S(2)", "S(5)", "B", "P", "P(max)", "P(sum)", "P(min)", "S(-1)", "Q", "#sbp.S<0>", "#sbp.B",
           "#sbp.P<max>", "#sbp.S<9>", "#sbp.P<min>"]
SBP_LISTS = ["[B, B]", "[S(0), S(0)]", "[]", "[P, P(max)]", "[S(0), B, B]", "[S(1)]", "[P]", "B", "[[B]]", "[S(0), P]",
             "[B, S(1)]", "[P(max)]"]
MESH_SHAPES = ["[1]", "[2]", "[3]", "[4]", "[8]", "[2, 2]", "[4, 1]", "[1, 4]", "[0]", "[]", "[2, 2, 2]", "[-1]", "[3, 2]"]
DEVICE_LISTS = ["[0, 1]", "[2, 3]", "[3, 2]", "[0, 0]", "[5, 6]", "[-1, 2]", "[0, 1, 2, 3]", "[3, 2, 1, 0]", "[1]", "[]",
                "[7, 8, 9, 10]", "[0, 2, 1, 3]"]
INTS = ["0", "1", "2", "3", "4", "5", "7", "-1", "99", "9223372036854775807"]
INT_LISTS = ["[0, 1]", "[1, 0]", "[0, 0]", "[2, 3]", "[0, 1, 2, 3]", "[3, 2, 1, 0]", "[0]", "[]", "[0, 5]", "[0, 1, 2]",
             "[1, 2]", "[0, 2]", "[-1, 0]"]
FUNC_ATTRS = ["attributes {}", "attributes {mesh = @nope}", "attributes {device = 0}", "attributes {of = @main}",
              "attributes {device = 1, of = @main}", "attributes {device = 9, of = @main}",
              "attributes {device = 0, of = @nope, args = [0]}", "attributes {device = 0, of = @main, results = [3]}",
              "attributes {device = 0, of = @main, args = [1, 0, 2]}", "attributes {mesh = @tp, device = 0, of = @main}"]
DIMS = ["1", "2", "3", "4", "7", "8", "16", "0"]
DTYPES = ["f32", "f16", "bf16", "i32", "i1"]

# What each mutation kind finds: the part to replace is group "v" where there is one.
SBP_ATOM = re.compile(r"(?<![\w.])(?:S\(\d+\)|P\((?:max|sum)\)|P|B)(?![\w(])|#sbp\.(?:S<\d+>|B|P<\w+>)")
SBP_LIST = re.compile(r"(?:\bsbp|\bfrom|\bto)\"? = (?P<v>\[[^\[\]]*\])|sbp_in\"? = (?P<w>\[(?:\[[^\[\]]*\],? ?)*\])")
MESH_SHAPE = re.compile(r"sbp\.mesh @[\w.$-]+ = (?P<v>\[[^\]]*\])|shape = (?P<w>array<i64[^>]*>)")
DEVICES = re.compile(r"devices = (?P<v>\[[^\]]*\]|array<i64[^>]*>)")
INT_ATTR = re.compile(r"(?:\bid|to_device|from_device|\bdevice|bytes_per_device|sbp_cost)\"? = (?P<v>-?\d+)")
INT_LIST = re.compile(r"(?:group|args|results)\"? = (?P<v>\[[^\]]*\]|array<i64[^>]*>)")
SYMBOL = re.compile(r"@[A-Za-z_][\w$.\-]*")
COMM_LINE = re.compile(r"^.*\"?comm\..*$", re.M)
MESH_LINE = re.compile(r"^.*\"?sbp\.mesh.*$", re.M)
ANY_DICT_LINE = re.compile(r"^.*\{.*$", re.M)
ATTR_PAIR = re.compile(r"\"?[a-z_]+\"? = (?:\[\[[^{}]*?\]\]|\[[^\]]*\]|array<[^>]*>|[^,}{]+)")
TENSOR = re.compile(r"tensor<[^>]*>")
FUNC_ATTR = re.compile(r"attributes \{[^}]*\}")

DIST_KINDS = ("sbp_atom", "sbp_list", "mesh_shape", "devices", "add_devices", "int_attr", "int_list", "symbol",
              "delete_attr", "delete_comm", "dup_comm", "swap_comm", "move_comm", "local_type", "delete_mesh",
              "dup_mesh", "func_attrs", "drop_func")


def _span(m: re.Match) -> tuple[int, int]:
    g = next((k for k in ("v", "w") if m.re.groupindex.get(k) and m.group(k) is not None), 0)
    return m.start(g), m.end(g)


def _replace(rnd: random.Random, text: str, pattern: re.Pattern, choices: list[str], mlir_list: bool = False) -> str:
    found = list(pattern.finditer(text))
    if not found:
        return text
    s, e = _span(rnd.choice(found))
    new = rnd.choice(choices)
    if mlir_list and text[s:e].startswith("array"):  # MLIR writes integer lists as array<i64: ...>
        new = "array<i64" + (": " + new[1:-1] if new != "[]" else "") + ">"
    elif text[s:e].endswith(": i64"):
        new += " : i64"
    return text[:s] + new + text[e:]


def _other_tensor(rnd: random.Random, old: str) -> str:
    m = re.fullmatch(r"tensor<((?:[^x>]+x)*)([a-z]+\d*)>", old)
    if not m:
        return old
    dims, dt = [d for d in m.group(1).split("x") if d], m.group(2)
    r = rnd.random()
    if r < 0.5 and dims:
        dims[rnd.randrange(len(dims))] = rnd.choice(DIMS)
    elif r < 0.7:
        dt = rnd.choice(DTYPES)
    elif r < 0.85 and dims:
        dims.pop(rnd.randrange(len(dims)))
    else:
        dims.insert(rnd.randrange(len(dims) + 1), rnd.choice(DIMS))
    return "tensor<" + "".join(d + "x" for d in dims) + dt + ">"


def dist_mutate(rnd: random.Random, text: str, kind: str) -> str:
    """One mutation of a distributed program (either syntax)."""
    if kind == "sbp_atom":
        return _replace(rnd, text, SBP_ATOM, SBP_ONE)
    if kind == "sbp_list":
        return _replace(rnd, text, SBP_LIST, SBP_LISTS)
    if kind == "mesh_shape":
        return _replace(rnd, text, MESH_SHAPE, MESH_SHAPES, mlir_list=True)
    if kind == "devices":
        return _replace(rnd, text, DEVICES, DEVICE_LISTS, mlir_list=True)
    if kind == "int_attr":
        return _replace(rnd, text, re.compile(INT_ATTR.pattern + r"(?: : i64)?"), INTS)
    if kind == "int_list":
        return _replace(rnd, text, INT_LIST, INT_LISTS, mlir_list=True)
    if kind == "symbol":
        return _replace(rnd, text, SYMBOL, sorted(set(SYMBOL.findall(text))) + ["@nope", "@main", "@main.dev0"])
    if kind == "add_devices":
        found = list(re.finditer(r"sbp\.mesh @[\w.$-]+ = \[[^\]]*\]$", text, re.M))
        if not found:
            return text
        e = rnd.choice(found).end()
        return text[:e] + " {devices = " + rnd.choice(DEVICE_LISTS) + "}" + text[e:]
    if kind == "delete_attr":
        lines = list((COMM_LINE if rnd.random() < 0.7 else ANY_DICT_LINE).finditer(text))
        if not lines:
            return text
        line = rnd.choice(lines)
        pairs = list(ATTR_PAIR.finditer(line.group()))
        if not pairs:
            return text
        p = rnd.choice(pairs)
        s, e = line.start() + p.start(), line.start() + p.end()
        if text[e:e + 2] == ", ":
            e += 2
        elif text[s - 2:s] == ", ":
            s -= 2
        return text[:s] + text[e:]
    if kind in ("delete_comm", "dup_comm", "swap_comm", "move_comm", "delete_mesh", "dup_mesh"):
        found = list((MESH_LINE if kind.endswith("mesh") else COMM_LINE).finditer(text))
        if not found:
            return text
        lines = text.split("\n")
        i = text[: rnd.choice(found).start()].count("\n")
        if kind.startswith("delete"):
            del lines[i]
        elif kind == "dup_comm":
            lines.insert(i, lines[i])
        elif kind == "dup_mesh":  # a second mesh of another name, or the same
            lines.insert(i, re.sub(r"@([\w.$-]+)|(sym_name = \")", lambda n: n.group(0) + rnd.choice(["", "2"]),
                                   lines[i], count=1))
        elif kind == "swap_comm":
            j = min(len(lines) - 1, max(0, i + rnd.choice([-2, -1, 1, 2])))
            lines[i], lines[j] = lines[j], lines[i]
        else:  # anywhere, maybe into another function
            lines.insert(rnd.randrange(len(lines)), lines.pop(i))
        return "\n".join(lines)
    if kind == "local_type":
        found = list(TENSOR.finditer(text))
        if not found:
            return text
        m = rnd.choice(found)
        return text[: m.start()] + _other_tensor(rnd, m.group()) + text[m.end():]
    if kind == "func_attrs":
        return _replace(rnd, text, FUNC_ATTR, FUNC_ATTRS)
    if kind == "drop_func":
        starts = [m.start() for m in re.finditer(r"^func\.func", text, re.M)]
        if len(starts) < 2:
            return text
        k = rnd.randrange(len(starts))
        return text[: starts[k]] + text[starts[k + 1] if k + 1 < len(starts) else len(text):]
    raise AssertionError(kind)


def _generic_kind(rnd: random.Random, data: bytes) -> bytes:
    """One of the generic mutations above (mutate), positions drawn from `rnd`."""
    def draw(strategy):
        r = repr(strategy)
        if m := re.match(r"integers\(min_value=(-?\d+), max_value=(-?\d+)\)", r):
            return rnd.randint(int(m.group(1)), int(m.group(2)))
        if r.startswith("booleans"):
            return rnd.random() < 0.5
        if r.startswith("just("):
            return strategy.value
        if r.startswith("sampled_from"):
            return rnd.choice(list(strategy.elements))
        return bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 6)))  # st.binary
    kind = rnd.choice(("truncate", "delete_token", "replace_token", "swap_lines", "dup_line", "replace_number"))
    return mutate(draw, data, kind, CLI_NUMBERS)


def dist_mutant(rnd: random.Random, corpus: tuple[tuple[str, str], ...]) -> tuple[str, str, list[str]]:
    """(source name, mutated text, the mutations applied): mostly distribution mutations, some generic ones."""
    name, text = rnd.choice(corpus)
    kinds = []
    for _ in range(rnd.randint(1, 3)):
        if rnd.random() < 0.85:
            kinds.append(rnd.choice(DIST_KINDS))
            text = dist_mutate(rnd, text, kinds[-1])
        else:
            kinds.append("generic")
            text = _generic_kind(rnd, text.encode()).decode("utf-8", errors="replace")
    return name, text, kinds


class _Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Turn a hang into an exception (SIGALRM: the main thread only, which is where pytest runs tests)."""
    def alarm(signum, frame):
        raise _Hang(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def call_main(main, argv: list[str]) -> tuple[int, str]:
    """Run fir-opt's or fir-run's main in process; (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, err.getvalue()


PIPELINES = ["sbp-infer,insert-boxing,partition", "partition", "insert-boxing,partition", "sbp-infer", "insert-boxing",
             "sbp-infer,insert-boxing,partition,sbp-infer,insert-boxing,partition", "canonicalize,cse,dce,partition"]


def check_distributed(name: str, text: str, rnd: random.Random, tmp_path: Path, small: bool, shown: str) -> list[str]:
    """Parse a mutant; when it parses run fir-opt (a random pipeline) and fir-run (random --devices and --entry) on
    it in process, and run its device programs on virtual devices. Returns what went wrong (empty: nothing)."""
    path = tmp_path / ("mutant" + (".mlir" if name.endswith(".mlir") else ".fir"))
    path.write_text(text)
    problems = []
    try:
        with time_limit(20):
            module = parse_source(text, str(path), syntax_for(name))
    except FirError as e:
        if e.loc is None:
            problems.append(f"parse: FirError without a location: {e.message}")
        return problems
    except Exception as e:  # noqa: BLE001 - the failure under test
        return [f"parse: {type(e).__name__}: {e}"]
    funcs = [f for f in module.ops if isinstance(f, FuncOp)]
    runs = [(fir_opt.main, [str(path), "-p", rnd.choice(PIPELINES)] + rnd.choice([[], ["-t", "mlir"]]))]
    if funcs:
        entry = rnd.choice([[], ["--entry", rnd.choice(funcs).sym_name.data]])
        devices = rnd.choice([[], [], ["--devices", "2"], ["--devices", "8"], ["--devices", "1"]])
        runs.append((fir_run.main, [str(path), "--quiet", "--check"] + devices + entry))
    for main, argv in runs:
        tool = "fir-opt" if main is fir_opt.main else "fir-run"
        try:
            with time_limit(30):
                rc, err = call_main(main, argv)
        except _Hang as e:
            problems.append(f"{tool} {argv[1:]}: {e}")
            continue
        first = err.splitlines()[0] if err else ""
        if rc not in (0, 1) or "internal error" in err or "Traceback" in err:
            problems.append(f"{tool} {argv[1:]} exited {rc}:\n{err}")
        elif "differs from the single-device reference" in err:
            problems.append(f"{tool} {argv[1:]}: a wrong result:\n{err}")
        elif rc == 1 and not re.match(LOCATED.format(re.escape(str(path))), first) \
                and not first.startswith("fir-run: error: no function @"):  # a bad --entry has no place in the file
            problems.append(f"{tool} {argv[1:]}: an error without a location:\n{err}")
    example = name.split("/")[-1].split(".")[0]
    for of in sorted({symbol_name(f.attributes.get(OF)) for f in funcs if DEVICE in f.attributes} - {None}):
        try:
            with time_limit(30):
                run_partitioned(module, of, list(logical_inputs(example, small)),
                                rnd.choice([devices_needed(module), 2, 8]))
        except FirError:
            pass
        except Exception as e:  # noqa: BLE001
            problems.append(f"run_partitioned @{of}: {type(e).__name__}: {e}")
    return [f"{p}\n{shown}" for p in problems]


def test_dist_corpus_parses():
    for name, text in dist_corpus(False) + dist_corpus(True):
        parse_source(text, name, syntax_for(name))


@pytest.mark.parametrize("which", ["dp_tp_mlp.sbp-infer+insert-boxing+partition.fir",
                                   "pipeline_mlp.sbp-infer+insert-boxing+partition.mlir",
                                   "tp_mlp.sbp-infer+insert-boxing.fir"])
def test_dist_truncations(which: str):
    name, text = next(c for c in dist_corpus(False) if c[0] == f"examples/{which}")
    step = max(1, len(text) // 25)
    for k in sorted(set(range(0, len(text), step)) | {len(text) - 1, len(text) - 2}):
        check_parse(name, text[:k], f"truncated at {k}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.randoms(use_true_random=False))
def test_dist_mutants_parse_or_fail_located(rnd):
    name, text, kinds = dist_mutant(rnd, dist_corpus(False))
    check_parse(name, text, f"mutations {kinds}")


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.randoms(use_true_random=False))
def test_dist_mutants_through_the_pipeline(tmp_path: Path, rnd):
    name, text, kinds = dist_mutant(rnd, dist_corpus(True))
    problems = check_distributed(name, text, rnd, tmp_path, True, f"mutations {kinds} of {name}; input:\n{text}")
    assert not problems, "\n\n".join(problems)


# Hand edits of partitioned programs (the small examples): (example, old, new, the error's words); the old text is
# replaced once. A wrong peer or id, a missing send or a group that does not match is a located error (a deadlock
# report where the devices wait for each other), never a hang or a traceback.
PARTITIONED_EDITS = [
    ("pipeline_mlp", "to_device = 2", "to_device = 3", "deadlock: device 2 waits in comm.recv (id 0) from device 0"),
    ("pipeline_mlp", "from_device = 0, id = 0", "from_device = 0, id = 1", "deadlock"),
    ("pipeline_mlp", "from_device = 0", "from_device = 2", "deadlock"),
    ("pipeline_mlp", "comm.send %h {to_device = 2, id = 0}", "", "deadlock"),
    ("pipeline_mlp", "comm.recv {from_device = 1, id = 0}", "comm.recv {from_device = 1, id = 0}",
     None),  # unchanged: runs
    ("pipeline_mlp", "to_device = 2, id = 0}", "to_device = 2, id = 0}\n  comm.send %h {to_device = 2, id = 0}",
     "sends a second value with id 0 to device 2"),
    ("pipeline_mlp", "to_device = 3", "to_device = 7", "deadlock"),
    ("dp_tp_mlp", "group = [0, 1], id = 0", "group = [0, 2], id = 0", "deadlock"),
    ("dp_tp_mlp", "group = [0, 1], id = 0", "group = [1, 0], id = 0", "deadlock"),
    ("dp_tp_mlp", "group = [0, 1], id = 0", "group = [0, 1], id = 3", "deadlock"),
    ("dp_tp_mlp", "group = [0, 1], id = 0", "group = [2, 3], id = 0", "must list this device"),
    ("dp_tp_mlp", "group = [0, 1], id = 0", "group = [0, 0], id = 0", "must list this device, and each device once"),
    ("dp_tp_mlp", "from = [S(0), P], to = [S(0), B]", "from = [S(0), P(max)], to = [S(0), B]",
     "the members of collective id 0 (group [0, 1]) do not match"),
    ("dp_tp_mlp", "device = 1,", "device = 0,", "are both device 0's program of @main"),
    ("dp_tp_mlp", "of = @main}", "of = @main, args = [2, 1, 0]}", "has type tensor<"),
    ("dp_tp_mlp", "of = @main}", "of = @main, results = []}", "has 1 results, but they stand for the logical results []"),
    ("tp_mlp", "%x: tensor<8x16xf32> {sbp = [B]", "%x: tensor<8x16xf32> {sbp = [S(0)]", "has type tensor<8x16xf32>"),
]


@pytest.mark.parametrize("example,old,new,words", PARTITIONED_EDITS)
def test_edited_device_programs_fail_cleanly(example: str, old: str, new: str, words: str | None):
    name = f"examples/{example}.sbp-infer+insert-boxing+partition.fir"
    text = dict(dist_corpus(True))[name]
    assert old in text
    text = text.replace(old, new, 1)
    module = parse_source(text, name)
    of = symbol_name(next(f for f in module.ops if isinstance(f, FuncOp)).attributes[OF])
    try:
        with time_limit(20):
            run_partitioned(module, of, list(logical_inputs(example, True)), devices_needed(module))
    except FirError as e:
        assert words is not None and words in e.message and e.loc is not None, f"{e.render()}\n{text}"
        return
    assert words is None, f"no error, expected one saying {words!r}\n{text}"


def test_fir_run_on_partitioned_ir(tmp_path: Path):
    """fir-run on partition's output: without --entry (several functions, none @main), with the logical name (gone),
    with a device program that communicates (cannot run alone), and with one that does not (runs alone)."""
    for which in ("pipeline_mlp", "dp_mlp"):
        for syntax in ("fir", "mlir"):
            path = tmp_path / f"{which}.{syntax}"
            path.write_text(dict(dist_corpus(True))[f"examples/{which}.sbp-infer+insert-boxing+partition.{syntax}"])
            for entry, rc_want in (([], 1), (["--entry", "main"], 1), (["--entry", "main.dev0"], 1 if which ==
                                                                          "pipeline_mlp" else 0)):
                rc, err = call_main(fir_run.main, [str(path), "--quiet", "--check"] + entry)
                assert rc == rc_want, err
                if rc == 1 and entry != ["--entry", "main"]:
                    assert re.match(LOCATED.format(re.escape(str(path))), err), err
    # The passes leave device programs alone: partitioned IR goes through them unchanged.
    rc, err = call_main(fir_opt.main, [str(tmp_path / "pipeline_mlp.fir"), "-p", ",".join(DISTRIBUTION_PIPELINE),
                                       "-o", str(tmp_path / "again.fir")])
    assert rc == 0, err
    assert (tmp_path / "again.fir").read_text() == (tmp_path / "pipeline_mlp.fir").read_text()


@pytest.mark.parametrize("devices,rc_want,words", [
    ("0", 2, "expected a positive number of devices"),
    ("2", 1, "mesh @tp uses device 3, but there are only 2 virtual devices"),
    ("8", 0, ""),
])
def test_fir_run_devices_flag(tmp_path: Path, devices: str, rc_want: int, words: str):
    path = tmp_path / "tp_mlp.fir"
    path.write_text(dict(dist_corpus(True))["examples/tp_mlp.fir"])
    rc, err = call_main(fir_run.main, [str(path), "--quiet", "--check", "--devices", devices])
    assert rc == rc_want and words in err, err
    if rc == 1:
        assert re.match(LOCATED.format(re.escape(str(path))), err), err


def _batch(count: int, start: int = 0) -> int:
    """Outside the suite: `count` mutants of the full-size programs through check_distributed; prints each failure
    (deduplicated by its first line) and returns how many differed."""
    import tempfile

    corpus = dist_corpus(False) + tuple((n, d.decode()) for n, d in CORPUS if any(e in n for e in DIST_EXAMPLES))
    seen: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(start, start + count):
            rnd = random.Random(seed)
            name, text, kinds = dist_mutant(rnd, corpus)
            for p in check_distributed(name, text, rnd, Path(tmp), False, f"seed {seed}: {kinds} of {name}"):
                key = p.splitlines()[0][:120]
                seen[key] = seen.get(key, 0) + 1
                if seen[key] == 1:
                    print(p, "\n", flush=True)
    print(f"{count} mutants, {len(seen)} distinct failures")
    return len(seen)


if __name__ == "__main__":
    os.environ.pop("FIR_DEBUG", None)
    sys.exit(1 if _batch(int(sys.argv[1]) if len(sys.argv) > 1 else 1000,
                         int(sys.argv[2]) if len(sys.argv) > 2 else 0) else 0)

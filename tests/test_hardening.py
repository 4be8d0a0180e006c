"""Hostile inputs: each one found by fuzzing gets a clean, located error (exit 1), never an internal error, and
costs time and memory linear in its size. One test per finding."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest

from fir.api import load, parse
from fir.dialects.attr_schema import quote
from fir.syntax.diagnostics import FirError, SourceLoc
from fir.syntax.lexical import MAX_NESTING
from fir_tools.fir_opt import main as fir_opt
from fir_tools.fir_run import main as fir_run

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
MLP = os.path.join(EXAMPLES, "mlp.fir")
PIPELINE = "sbp-infer,insert-boxing,partition,fuse,schedule,plan-memory"
GELU = "func.func @f(%x: tensor<4xf32>) -> tensor<4xf32> {{\n  %y = flow.gelu %x {{approximate = {}}}\n  func.return %y\n}}\n"


@pytest.fixture(scope="module")
def plan_text() -> str:
    """examples/mlp.fir compiled to a plan, in MLIR generic text."""
    return load(MLP).apply(PIPELINE).text("mlir")


def _fails(capsys, tool, argv: list[str], *expected: str) -> str:
    assert tool(argv) == 1
    err = capsys.readouterr().err
    for e in expected:
        assert e in err, err
    assert "internal error" not in err
    return err


# ------------------------------------------------------------------------------------------ plans from outside
def test_stream_string_cannot_inject_cuda_source(tmp_path, capsys, plan_text):
    bad = plan_text.replace('{stream = "h2d"} : () -> ()', '{stream = "compute\\0A#error x"} : () -> ()', 1)
    assert bad != plan_text
    path = tmp_path / "inj.mlir"
    path.write_text(bad)
    err = _fails(capsys, fir_opt, [str(path), "-t", "cuda"],
                 "'plan.record' op attribute 'stream' must be one of \"compute\"", 'not "compute\\n#error x"')
    assert "\n#error" not in err


@pytest.mark.parametrize("op", ["plan.record", "plan.wait"])
def test_unknown_stream_on_an_event_is_rejected(tmp_path, capsys, plan_text, op):
    start = plan_text.index(f'"{op}"')
    end = plan_text.index("\n", start)
    line = plan_text[start:end]
    bad = plan_text[:start] + line.replace('stream = "', 'stream = "bogus', 1) + plan_text[end:]
    path = tmp_path / "p.mlir"
    path.write_text(bad)
    for tool, argv in ((fir_opt, [str(path)]), (fir_run, [str(path)])):
        _fails(capsys, tool, argv, f"'{op}' op attribute 'stream' must be one of")


def test_negative_offset_is_rejected_by_every_consumer(tmp_path, capsys, plan_text):
    bad = plan_text.replace("offset = 0 : i64", "offset = -8 : i64", 1)
    path = tmp_path / "neg.mlir"
    path.write_text(bad)
    for tool, argv in ((fir_opt, [str(path), "-t", "cuda"]), (fir_run, [str(path)])):
        _fails(capsys, tool, argv, "attribute 'offset' expects a non-negative integer, got -8")


def test_unsafe_memory_plan_is_rejected_by_cuda_translation(tmp_path, capsys, plan_text):
    # Move one buffer so that it overlaps a live one: -t cuda must refuse it as fir-run does.
    offsets = sorted({int(x) for x in __import__("re").findall(r"offset = (\d+) : i64", plan_text)})
    second = offsets[1]
    bad = plan_text.replace(f"offset = {second} : i64", f"offset = {second - 16} : i64", 1)
    path = tmp_path / "overlap.mlir"
    path.write_text(bad)
    _fails(capsys, fir_opt, [str(path), "-t", "cuda"], "over bytes of")


def test_negative_micro_is_rejected(tmp_path, capsys, plan_text):
    path = tmp_path / "m.mlir"
    path.write_text(plan_text.replace("micro = 0 : i64", "micro = -1 : i64", 1))
    _fails(capsys, fir_opt, [str(path)], "attribute 'micro' expects a non-negative integer, got -1")


def test_fused_op_without_region(tmp_path, capsys, plan_text):
    start = plan_text.index('"flow.fused"(')
    body = plan_text.index("({", start)
    close = plan_text.index("}) {", body)
    path = tmp_path / "f.mlir"
    path.write_text(plan_text[:body] + "(" + plan_text[close + 1:])
    _fails(capsys, fir_opt, [str(path)], "a flow.fused op has one region of exactly one block")


# ------------------------------------------------------------------------------------------ deep and large input
def test_deep_brackets_in_fir(tmp_path, capsys):
    path = tmp_path / "nest.fir"
    path.write_text(GELU.format("[" * 1000 + "]" * 1000))
    err = _fails(capsys, fir_opt, [str(path)], f"nest.fir:2:{36 + MAX_NESTING - 2}: error: brackets nest more than")
    assert "^" in err


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deep_nesting_in_mlir(tmp_path, capsys, depth):
    path = tmp_path / "nest.mlir"
    path.write_text('"builtin.module"() ({\n' * depth + "}) : () -> ()\n" * depth)
    _fails(capsys, fir_opt, [str(path)], "error: brackets nest more than")
    path.write_text('"builtin.module"() ({\n  "func.func"() <{sym_name = "f", function_type = () -> (), x = '
                    + "[" * depth + "]" * depth + "}> ({\n  }) : () -> ()\n}) : () -> ()\n")
    _fails(capsys, fir_opt, [str(path)], "nest.mlir:2:", "brackets nest more than")


def test_nesting_allowed_up_to_the_limit():
    depth = MAX_NESTING - 4  # inside the attribute dictionary and the func's braces
    with pytest.raises(FirError, match="expects a list of integers"):  # the parser's own error, not the scan's
        parse(GELU.replace("approximate", "perm").replace("gelu", "transpose").format("[" * depth + "]" * depth))


def test_rank_above_64(tmp_path, capsys):
    t = "tensor<" + "1x" * 1000 + "f32>"
    path = tmp_path / "rank.fir"
    path.write_text(f"func.func @f(%x: {t}) -> {t} {{\n  %y = flow.relu %x\n  func.return %y\n}}\n")
    for tool in (fir_opt, fir_run):
        _fails(capsys, tool, [str(path)], "rank.fir:1:18: error: tensor type of rank 1000: fir accepts ranks up to 64")
    mlir = tmp_path / "rank.mlir"
    mlir.write_text('"func.func"() <{sym_name = "f", function_type = (' + t + ") -> ()}> ({\n"
                    "^bb0(%x: " + t + '):\n  "func.return"() : () -> ()\n}) : () -> ()\n')
    _fails(capsys, fir_opt, [str(mlir)], "tensor of rank 1000: fir accepts ranks up to 64")


def test_ten_megabyte_string_gives_a_short_error(tmp_path, capsys):
    path = tmp_path / "s.fir"
    path.write_text(GELU.format('"' + "a" * 10_000_000 + '"'))
    err = _fails(capsys, fir_opt, [str(path)], 'not "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"... (10000000 characters)')
    assert max(len(line) for line in err.splitlines()) < 300  # the source line is a window, not 10 MB


def test_string_literal_is_lexed_in_memory_linear_in_its_length():
    # Memory, unlike time, is deterministic: the unrolled string pattern allocates about 4 bytes a character;
    # the old alternation `"([^"\\\n]|\\.)*"` allocated 385 (3.7 GB for 10 MB). bench/input_scale_bench.py times it.
    import tracemalloc

    from fir.syntax.parser import parse_fir

    n = 1_000_000
    parse_fir("func.func @g() {\n  func.return\n}\n", "warm.fir")  # lark's tables are built outside the count
    tracemalloc.start()
    try:
        with pytest.raises(FirError, match="attribute 'approximate'"):
            parse_fir(GELU.format('"' + "a" * n + '"'), "s.fir")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * n


def test_fuse_looks_at_each_op_a_bounded_number_of_times(monkeypatch):
    # Work counted, not timed: the grouping asks whether an op is fusible a few times per op; the old fixed-point
    # loop asked once per member per round, n^2 / 2 times for a chain (3,000 ops took 59 s).
    from fir.planning import fusion

    n = 2000
    body = "".join(f"  %v{i} = flow.relu {'%x' if i == 0 else f'%v{i - 1}'}\n" for i in range(n))
    func = parse(f"func.func @f(%x: tensor<4xf32>) -> tensor<4xf32> {{\n{body}  func.return %v{n - 1}\n}}\n"
                 ).function("f")
    asked = []
    real = fusion._fusible
    monkeypatch.setattr(fusion, "_fusible", lambda op: (asked.append(1), real(op))[1])
    groups = fusion.fusion_groups(func.body.blocks.first)
    assert [len(g) for g in groups] == [n]
    assert len(asked) <= 3 * (n + 1)


# ------------------------------------------------------------------------------------------ strings and messages
def test_non_ascii_string_is_utf8(capsys, tmp_path):
    path = tmp_path / "u.fir"
    path.write_text(GELU.format('"café"'), encoding="utf-8")
    _fails(capsys, fir_opt, [str(path)], 'not "café"')


def test_control_characters_are_escaped_in_errors(capsys, tmp_path):
    path = tmp_path / "c.fir"
    path.write_text(GELU.format('"\x1b[31mred\\u0007"'))
    err = _fails(capsys, fir_opt, [str(path)], 'not "\\u001b[31mred\\u0007"')
    assert "\x1b" not in err and "\x07" not in err
    assert "\\x1b[31mred" in err  # the raw ESC in the source line is shown escaped too


def test_string_escapes_round_trip():
    from lark import Token

    from fir.syntax.parser import _Builder

    s = 'a"b\\c\nd\te\r\x00\x1b\x85 café'
    assert quote(s) == '"a\\"b\\\\c\\nd\\te\\r\\u0000\\u001b\\u0085 café"'
    assert _Builder("t.fir", 0).string(Token("STRING", quote(s), line=1, column=1)) == s


def test_unknown_escape_is_located(capsys, tmp_path):
    path = tmp_path / "e.fir"
    path.write_text(GELU.format('"ab\\qc"'))
    _fails(capsys, fir_opt, [str(path)], "e.fir:2:39: error: unknown escape '\\q' in a string (fir's are \\\\, "
           '\\", \\n, \\t, \\r and \\uXXXX)')


def test_invalid_utf8_shows_the_line(capsys, tmp_path):
    path = tmp_path / "b.fir"
    path.write_bytes(GELU.format('"caf\xe9"').encode("latin-1"))
    err = _fails(capsys, fir_opt, [str(path)], "b.fir:2:40: error: invalid UTF-8 byte 0xe9")
    assert "approximate = \"caf\ufffd\"" in err and "^" in err


def test_location_in_another_file_shows_its_line(tmp_path, capsys):
    src = tmp_path / "model.fir"
    src.write_text("// the model\n  %y = flow.relu %x\n")
    mlir = tmp_path / "m.mlir"
    mlir.write_text('"func.func"() <{sym_name = "f", function_type = (tensor<4xf32>) -> tensor<4xf32>}> ({\n'
                    '^bb0(%x: tensor<4xf32>):\n'
                    f'  %y = "flow.relu"(%x) : (tensor<4xf32>) -> tensor<5xf32> loc("{src}":2:3)\n'
                    '  "func.return"(%y) : (tensor<5xf32>) -> ()\n}) : () -> ()\n')
    err = _fails(capsys, fir_opt, [str(mlir)], f"{src}:2:3: error:")
    assert "  %y = flow.relu %x\n  ^" in err


def test_render_escapes_and_windows():
    e = FirError("bad \x1b[2J thing", SourceLoc("f\nx", 1, 300), line="y" * 1000)
    text = e.render()
    assert "\x1b" not in text and text.startswith("f\\nx:1:300: error: bad \\x1b[2J thing")
    shown, caret = text.splitlines()[1:]
    assert len(shown) < 200 and shown.startswith("...") and shown.endswith("...") and caret.endswith("^")


# ------------------------------------------------------------------------------------------ output files
def test_output_to_a_device_writes_through(capsys):
    before = os.stat("/dev/null").st_mode
    assert fir_run([MLP, "--output", "/dev/null", "--quiet"]) == 0
    assert os.stat("/dev/null").st_mode == before  # still a character device


def test_output_through_a_symlink_replaces_its_target(tmp_path):
    real, link = tmp_path / "real.npz", tmp_path / "link.npz"
    link.symlink_to(real)
    assert fir_run([MLP, "--output", str(link), "--quiet"]) == 0
    assert link.is_symlink() and real.is_file()
    with np.load(real) as z:
        assert z.files == ["y"]


def test_output_to_a_fifo_writes_through(tmp_path):
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    assert fir_run([MLP, "--output", str(fifo), "--quiet"]) == 0
    reader.join(30)
    assert fifo.exists() and not fifo.is_file()
    with np.load(io.BytesIO(got[0])) as z:
        assert z.files == ["y"]


def test_failing_trace_leaves_no_output(tmp_path, capsys):
    out = tmp_path / "out.npz"
    _fails(capsys, fir_run, [MLP, "--output", str(out), "--trace", str(tmp_path)],
           f"cannot write the trace '{tmp_path}': it is a directory")
    assert not out.exists() and os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------ .npz inputs
def _npz_with_header(path, name: str, shape: tuple[int, ...], payload: bytes) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{name}.npy", header.getvalue() + payload)


def test_npz_bomb_is_refused_from_its_header(tmp_path, capsys, monkeypatch):
    # 256 MiB of zeros compresses to about 256 KB; the header names a shape the argument does not have. Counted,
    # not timed: the loader inflates the header and not one byte of the data (inflating it all took 20 s a GiB).
    prog = tmp_path / "p.fir"
    prog.write_text("func.func @f(%x: tensor<4xf32>) -> tensor<4xf32> {\n  %y = flow.relu %x\n  func.return %y\n}\n")
    bomb = tmp_path / "bomb.npz"
    _npz_with_header(bomb, "x", (1 << 26,), bytes(1 << 28))
    inflated = []
    real_read = zipfile.ZipExtFile.read
    monkeypatch.setattr(zipfile.ZipExtFile, "read", lambda self, n=-1: (b := real_read(self, n), inflated.append(len(b)))[0])
    _fails(capsys, fir_run, [str(prog), "--inputs", str(bomb)], "input 'x' has shape (67108864,) but %x is tensor<4xf32>")
    assert sum(inflated) < 4096


def test_npz_header_claiming_1e12_elements_names_the_input(tmp_path, capsys):
    prog = tmp_path / "p.fir"
    prog.write_text("func.func @f(%x: tensor<4xf32>) -> tensor<4xf32> {\n  %y = flow.relu %x\n  func.return %y\n}\n")
    claim = tmp_path / "claim.npz"
    _npz_with_header(claim, "x", (10**12,), b"\0" * 16)
    err = _fails(capsys, fir_run, [str(prog), "--inputs", str(claim)], "input 'x' has shape (1000000000000,)")
    assert "out of memory" not in err


def test_npz_cut_short_and_fortran_order(tmp_path, capsys):
    prog = tmp_path / "p.fir"
    prog.write_text("func.func @f(%x: tensor<2x3xf32>) -> tensor<2x3xf32> {\n  %y = flow.neg %x\n"
                    "  func.return %y\n}\n")
    short = tmp_path / "short.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (2, 3)})
    with zipfile.ZipFile(short, "w") as zf:
        zf.writestr("x.npy", header.getvalue() + b"\0" * 8)
    _fails(capsys, fir_run, [str(prog), "--inputs", str(short)], "array 'x' is cut short")
    x = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    good, out = tmp_path / "f.npz", tmp_path / "o.npz"
    np.savez(good, x=x)
    assert fir_run([str(prog), "--inputs", str(good), "--output", str(out), "--quiet"]) == 0
    with np.load(out) as z:
        assert np.array_equal(z["y"], -x)


def test_hardware_toml_error_shows_the_line(tmp_path, capsys):
    bad = tmp_path / "hw.toml"
    bad.write_text('name = "x"\nnodes = -1\n')
    err = _fails(capsys, fir_run, [MLP, "--simulate", "--hardware", str(bad)], f"{bad}:2:1: error: unknown key 'nodes'")
    assert "\nnodes = -1\n^" in err


@pytest.mark.parametrize("width,col,why", [("0", 48, "integer modulo by zero"),
                                           ("99999999999999999999", 67, "too many digits in integer")])
def test_unusable_integer_width_in_mlir_is_located(tmp_path, capsys, width, col, why):
    # xDSL computes with the width of `array<iN: ...>` while parsing: i0 divides by zero, a huge N overflows
    path = tmp_path / "w.mlir"
    path.write_text('"builtin.module"() ({\n  "func.func"() <{sym_name = "main", function_type = (tensor<4xf32>) -> '
                    'tensor<4xf32>}> ({\n  ^bb0(%x: tensor<4xf32>):\n    %s = "flow.slice"(%x) <{start = '
                    f'array<i{width}: 0>, limit = array<i64: 4>, stride = array<i64: 1>}}> : (tensor<4xf32>) -> '
                    'tensor<4xf32>\n    "func.return"(%s) : (tensor<4xf32>) -> ()\n  }) : () -> ()\n}) : () -> ()\n')
    _fails(capsys, fir_opt, [str(path)], f"w.mlir:4:{col}: error: cannot read this attribute: its integer type "
           f"has an unusable width ({why})")

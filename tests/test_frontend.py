"""The frontend as a library: inference, defaults, locations, syntax detection, verification of built IR."""

from __future__ import annotations

import pytest
from xdsl.dialects.builtin import BoolAttr, FileLineColLoc

from fir.dialects import dtypes
from fir.syntax.diagnostics import FirError
from fir.dialects import flow
from fir.syntax.printer import print_fir
from fir.syntax.frontend import detect_syntax, parse_source, verify_module

SRC = """// header comment
func.func @f(%x: tensor<2x3xf32>, %w: tensor<3x4xf32>) -> tensor<2x4xf32> {
  %y = flow.matmul %x, %w
  %s = flow.reduce_sum %y {axes = [0], keepdims = true}
  %z = flow.sub %y, %s
  func.return %z
}
"""


def test_inference_defaults_and_locations():
    module = parse_source(SRC, "f.fir")
    ops = list(module.walk())
    matmul = next(op for op in ops if isinstance(op, flow.MatmulOp))
    assert matmul.result.type == dtypes.tensor_type((2, 4), "f32")
    assert matmul.attr_values() == {"transpose_a": False, "transpose_b": False}
    reduce = next(op for op in ops if isinstance(op, flow.ReduceSumOp))
    assert reduce.result.type == dtypes.tensor_type((1, 4), "f32")
    loc = reduce.location
    assert isinstance(loc, FileLineColLoc)
    assert (loc.filename.data, loc.line.data, loc.column.data) == ("f.fir", 4, 3)


def test_printer_writes_types_and_drops_defaults():
    text = print_fir(parse_source(SRC, "f.fir"))
    assert "%y = flow.matmul %x, %w : tensor<2x4xf32>" in text
    assert "{axes = [0], keepdims = true} : tensor<1x4xf32>" in text
    assert "transpose_a" not in text
    assert text.endswith("}\n")


@pytest.mark.parametrize(
    "text, syntax",
    [(SRC, "fir"), ('"builtin.module"() ({\n}) : () -> ()', "mlir"), ("// c\nbuiltin.module {\n}", "mlir"),
     ("module {\n}", "fir"), ("", "fir")],
)
def test_detect_syntax(text, syntax):
    assert detect_syntax(text) == syntax


def test_verifier_catches_ir_broken_after_parsing():
    module = parse_source(SRC, "f.fir")
    matmul = next(op for op in module.walk() if isinstance(op, flow.MatmulOp))
    # A buggy pass that changes an attribute but not the types must be caught, at the op's location.
    matmul.properties["transpose_b"] = BoolAttr.from_bool(True)
    with pytest.raises(FirError) as err:
        verify_module(module)
    assert err.value.loc is not None and err.value.loc.line == 3
    assert "contracting dimensions differ" in err.value.render()


@pytest.mark.parametrize(
    "snippet, line, col, message",
    [
        ("%y = flow.matmul %x, %x", 3, 8, "contracting dimensions differ"),
        ("%y = flow.add %x, %nope", 3, 21, "use of undefined value %nope"),
        ("%y = flow.softmax %x {axis = 2}", 3, 8, "axis 2 is out of range for a tensor of rank 2"),
        ("%y = flow.softmax %x {axis = true}", 3, 32, "attribute 'axis' of flow.softmax expects an integer"),
        ("%y = flow.reshape %x", 3, 8, "flow.reshape needs a result type"),
        ("%y = flow.transpose %x {perm = [0, 0]}", 3, 8, "is not a permutation"),
        ("%y = flow.exp %x : tensor<3x2xf32>", 3, 22, "does not match the inferred type tensor<2x3xf32>"),
        ("%x = flow.exp %x", 3, 3, "value %x is already defined"),
        ("%y = flow.add %x", 3, 8, "flow.add expects 2 operand(s), got 1"),
        ("%y = flow.gather %x, %x", 3, 8, "does not accept indices of dtype f32"),
    ],
)
def test_located_errors(snippet, line, col, message):
    text = f"// c\nfunc.func @g(%x: tensor<2x3xf32>) -> tensor<2x3xf32> {{\n  {snippet}\n  func.return %x\n}}\n"
    with pytest.raises(FirError) as err:
        parse_source(text, "g.fir")
    assert (err.value.loc.line, err.value.loc.col) == (line, col), err.value.render()
    rendered = err.value.render({"g.fir": text})
    assert rendered.startswith(f"g.fir:{line}:{col}: error: ")
    assert message in rendered
    assert rendered.splitlines()[-1] == " " * (col - 1) + "^"

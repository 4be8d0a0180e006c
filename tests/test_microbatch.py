"""The microbatch pass: micro-batched programs compute the original program's results, on one device and
distributed (the pipeline examples), and random programs either keep their results or fail with a located error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, ModuleOp, SymbolRefAttr
from xdsl.dialects.func import FuncOp, ReturnOp

from fir.syntax.diagnostics import FirError
from fir.dialects.plan import MICRO, MICROBATCH, ARG_ATTRS
from fir.dialects.sbp import MESH, MeshOp
from fir.compile import distribute
from fir.runtime.compare import compare_all
from fir.dialects.dtypes import TOLERANCE, dtype_name
from fir.syntax.printer import print_fir
from fir.syntax.frontend import make_context, parse_source, verify_module
from fir.passes.microbatch import MicrobatchPass
from fir.distribution.placement import DEVICE
from fir.runtime.inputs import random_inputs
from fir.runtime.interpreter import find_function, run_function
from fir.runtime.virtual_devices import devices_needed, run_partitioned
from test_distributed_programs import _working_dtype
from test_random_programs import SETTINGS, Program, programs, the_func

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PIPELINES = ["pipeline_train_mlp.fir", "pipeline4_train_mlp.fir"]


def microbatched(module: ModuleOp, count: int) -> ModuleOp:
    """A verified copy of the module after microbatch{count}."""
    out = module.clone()
    MicrobatchPass(count=count).apply(make_context(), out)
    verify_module(out)
    return out


def micro_of(op) -> int | None:
    return op.attributes[MICRO].value.data if MICRO in op.attributes else None


def body(func: FuncOp) -> list:
    return [op for op in func.body.ops if not isinstance(op, ReturnOp)]


def result_types(func: FuncOp) -> list[str]:
    return [dtype_name(t.element_type) for t in func.function_type.outputs.data]


# ----------------------------------------------------------------------------------------------- examples
@pytest.mark.parametrize("name", PIPELINES)
@pytest.mark.parametrize("count", [2, 3, 4])
def test_pipeline_examples_match_the_reference(name: str, count: int):
    """Micro-batched (3 splits the rows unevenly), distributed over the stages, every result equals the
    original program's single-device result."""
    module = parse_source((EXAMPLES / name).read_text(), name)
    func = find_function(module, None)
    inputs = random_inputs(func, 3)
    want = run_function(module, func, inputs)
    mb = microbatched(module, count)
    got = run_partitioned(distribute(mb), func.sym_name.data, inputs, devices_needed(mb))
    for i, c in enumerate(compare_all(got, want, result_types(func))):
        assert c.ok, f"{name} count={count}: result {i} differs by {c.max_abs_error}"
    assert all(np.any(w != 0) for w in want)  # the comparison is not vacuous


@pytest.mark.parametrize("name", PIPELINES)
def test_every_op_once_per_micro_batch(name: str):
    module = parse_source((EXAMPLES / name).read_text(), name)
    before = body(find_function(module, None))
    after = body(find_function(microbatched(module, 4), None))
    for k in range(4):
        ops_k = [op for op in after if micro_of(op) == k]
        # Every logical op once (mean losses add a local op and a share), plus slices and combining ops.
        for name_ in {op.name for op in before}:
            assert sum(op.name == name_ for op in ops_k) >= sum(op.name == name_ for op in before)
    assert all(micro_of(op) is not None for op in after)
    # The marks are consumed; the signature (types, placement) is what it was.
    f_before, f_after = find_function(module, None), find_function(microbatched(module, 4), None)
    assert f_after.function_type == f_before.function_type
    assert f_after.res_attrs == f_before.res_attrs
    assert all(MICROBATCH not in d.data for d in f_after.arg_attrs.data)


def test_micro_tags_survive_partition():
    """partition copies each op's micro tag to what it makes for it, and a send/recv gets its value's tag."""
    module = parse_source((EXAMPLES / "pipeline_train_mlp.fir").read_text(), "p.fir")
    parted = distribute(microbatched(module, 3))
    devs = [f for f in parted.ops if isinstance(f, FuncOp) and DEVICE in f.attributes]
    assert len(devs) == 2
    for f in devs:
        for op in body(f):
            assert micro_of(op) in (0, 1, 2), f"{op.name} in @{f.sym_name.data} has no micro tag"
    sends = [op for f in devs for op in body(f) if op.name == "comm.send"]
    assert sorted(micro_of(op) for op in sends) == [0, 0, 1, 1, 2, 2]  # h forward, dh backward


def test_pipeline_gradients_are_the_loss_gradient():
    """The hand-written backward of pipeline_train_mlp.fir is the gradient of its loss: directional
    derivatives by central differences (float64 numpy forward) match <gradient, direction>."""
    module = parse_source((EXAMPLES / "pipeline_train_mlp.fir").read_text(), "p.fir")
    func = find_function(module, None)
    rng = np.random.default_rng(7)
    x, t, w1, b1, w2, b2 = [rng.standard_normal(tuple(a.type.get_shape())).astype(np.float32) * s
                            for a, s in zip(func.body.blocks.first.args, (1, 1, 0.1, 0.1, 0.1, 0.1))]
    loss, dw1, db1, dw2, db2 = run_function(module, func, [x, t, w1, b1, w2, b2])

    def f(w1_, b1_, w2_, b2_):
        h = np.maximum(x.astype(np.float64) @ w1_ + b1_, 0)
        return np.mean((h @ w2_ + b2_ - t) ** 2)

    params = [w1.astype(np.float64), b1.astype(np.float64), w2.astype(np.float64), b2.astype(np.float64)]
    assert np.isclose(loss, f(*params), rtol=1e-5)
    for i, g in enumerate([dw1, db1, dw2, db2]):
        v = rng.standard_normal(params[i].shape)
        eps = 1e-7  # small enough that (almost) no relu input changes sign
        hi, lo = list(params), list(params)
        hi[i], lo[i] = params[i] + eps * v, params[i] - eps * v
        numeric = (f(*hi) - f(*lo)) / (2 * eps)
        assert np.isclose(np.sum(g * v), numeric, rtol=1e-3, atol=1e-6), f"gradient {i}"


# ----------------------------------------------------------------------------------------------- semantics
SMALL = """
func.func @step(%x: tensor<10x4xf32> {microbatch = 0}, %w: tensor<4x3xf32>, %t: tensor<3x10xf32> {microbatch = 1}) {
  %y = flow.matmul %x, %w
  %tt = flow.transpose %t {perm = [1, 0]}
  %d = flow.sub %y, %tt
  %loss = flow.reduce_mean %d {axes = [0, 1]}
  %dw = flow.matmul %x, %d {transpose_a = true}
  %m = flow.reduce_max %y {axes = [0]}
  %w2 = flow.add %w, %w
  func.return %loss, %dw, %y, %m, %w2, %x
}
func.func @plain(%x: tensor<10x4xf32>) -> tensor<10x4xf32> {
  %y = flow.neg %x
  func.return %y
}
"""


def test_split_partial_and_broadcast_results():
    """S results concat, P add up, P(max) take the maximum, B are computed once, in micro-batch 0; t splits along
    axis 1; a returned argument is returned as it is; a function without a micro-batched argument is left
    alone."""
    module = parse_source(SMALL, "small.fir")
    mb = microbatched(module, 3)
    step, plain = (find_function(mb, n) for n in ("step", "plain"))
    names = [op.name for op in body(step)]
    assert names.count("flow.slice") == 6 and names.count("flow.concat") == 1  # %y's; %x is not rebuilt
    assert names.count("flow.max") == 2  # the P(max) chain of %m
    assert names.count("flow.add") == 2 + 2 + 1  # the chains of %loss and %dw, and %w2 once
    ret = step.body.blocks.first.last_op
    assert [v.name_hint for v in ret.operands] == ["loss", "dw", "y", "m", "w2", "x"]
    assert ret.operands[5] is step.body.blocks.first.args[0]
    assert print_fir(ModuleOp([plain.clone()])) == print_fir(ModuleOp([find_function(module, "plain").clone()]))
    inputs = random_inputs(find_function(module, "step"), 0)
    want = run_function(module, find_function(module, "step"), inputs)
    got = run_function(mb, step, inputs)
    for i, c in enumerate(compare_all(got, want, ["f32"] * 6)):
        assert c.ok, f"result {i}"
    # Printing and reading back keeps the micro tags.
    again = parse_source(print_fir(mb), "again.fir")
    assert print_fir(again) == print_fir(mb)


def test_count_one_and_second_run_change_nothing():
    module = parse_source(SMALL, "small.fir")
    assert print_fir(microbatched(module, 1)) == print_fir(module)
    once = microbatched(module, 2)
    assert print_fir(microbatched(once, 3)) == print_fir(once)


@pytest.mark.parametrize("text, line, message", [
    ("""func.func @bn(%x: tensor<8x4xf32> {microbatch = 0}) -> tensor<8x4xf32> {
  %mean = flow.reduce_mean %x {axes = [0]}
  %xc = flow.sub %x, %mean
  func.return %xc
}""", 3, "'flow.sub' mixes micro-batches: its operand 1 is a sum over micro-batches (P), but the op needs the "
         "total, which exists only once every micro-batch has run"),
    ("""func.func @sm(%x: tensor<8x4xf32> {microbatch = 0}) -> tensor<8x4xf32> {
  %y = flow.softmax %x {axis = 0}
  func.return %y
}""", 2, "'flow.softmax' mixes micro-batches: its operand 0 is split into micro-batches along axis 0"),
    ("""func.func @e(%x: tensor<3x4xf32> {microbatch = 0}) -> tensor<3x4xf32> {
  func.return %x
}""", 1, "argument 0 (%x) of @e has 3 elements along axis 0, fewer than the 4 micro-batches"),
    ("""func.func @r(%x: tensor<8xf32> {microbatch = 1}) -> tensor<8xf32> {
  func.return %x
}""", 1, "argument 0 (%x) of @r has rank 1: `microbatch = 1` names no axis of it"),
])
def test_located_errors(text: str, line: int, message: str):
    module = parse_source(text, "bad.fir")
    with pytest.raises(FirError) as e:
        MicrobatchPass(count=4).apply(make_context(), module)
    assert message in e.value.message
    assert e.value.loc is not None and e.value.loc.line == line


PLACED = """sbp.mesh @m = [2]
func.func @step(%x: tensor<8x4xf32> {microbatch = 0}, %w: tensor<4x3xf32>) -> tensor<8x3xf32> attributes {mesh = @m} {
  %y = flow.matmul %x, %w
  func.return %y
}
"""


def test_inferred_or_partitioned_programs_are_refused_or_left_alone():
    """After sbp-infer the pass refuses the function (located); device programs carry no marks and stay."""
    from fir.passes.sbp_infer import SbpInferPass

    module = parse_source(PLACED, "placed.fir")
    SbpInferPass().apply(make_context(), module)
    with pytest.raises(FirError, match="run microbatch before sbp-infer") as e:
        MicrobatchPass(count=2).apply(make_context(), module)
    assert e.value.loc.line == 3
    parted = distribute(parse_source(PLACED, "placed.fir"))
    assert print_fir(microbatched(parted, 2)) == print_fir(parted)


# ----------------------------------------------------------------------------------------------- random programs
def _close(got: np.ndarray, want: np.ndarray, dtype: str) -> bool:
    """Within the dtype's tolerance relative to the result's magnitude, on the reference's finite values
    (micro-batching reorders sums, as distribution does, and inf - inf differs from the sum of pieces)."""
    if got.shape != want.shape:
        return False
    g, w = got.astype(np.float64), want.astype(np.float64)
    finite = np.isfinite(w)
    rtol, atol = TOLERANCE[dtype]
    scale = max(1.0, float(np.max(np.abs(w[finite]), initial=0.0)))
    return bool(np.all(np.abs(g[finite] - w[finite]) <= rtol * scale + atol))


def _mark(module: ModuleOp, index: int) -> None:
    func = the_func(module)
    dicts = [{} for _ in func.body.blocks.first.args]
    dicts[index][MICROBATCH] = ARG_ATTRS[MICROBATCH].to_attr(0)
    func.arg_attrs = ArrayAttr([DictionaryAttr(d) for d in dicts])


@settings(max_examples=100, **SETTINGS)
@given(programs(max_ops=10), st.data(), st.integers(0, 2**32 - 1))
def test_random_programs_keep_their_results(prog: Program, data, seed: int):
    """A random argument with a leading axis of 2 or more micro-batched into 2..min(4, rows) pieces: the program
    computes the same results (on one device, or placed on a 2-device mesh and distributed), or the pass names
    an op that mixes micro-batches."""
    module = parse_source(prog.text, "<random>")
    func = the_func(module)
    rows = [i for i, a in enumerate(func.body.blocks.first.args) if a.type.get_shape() and a.type.get_shape()[0] >= 2]
    if not rows:
        return
    index = data.draw(st.sampled_from(rows))
    count = data.draw(st.integers(2, min(4, func.body.blocks.first.args[index].type.get_shape()[0])))
    placed = data.draw(st.booleans())
    if placed:  # on a 2-device mesh, the micro-batched program goes through the distribution pipeline
        module.body.block.insert_op_before(MeshOp.make("m", (2,), (0, 1)), module.body.block.first_op)
        func.attributes[MESH] = SymbolRefAttr("m")
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(tuple(a.type.get_shape())).astype(np.float32) for a in func.body.blocks.first.args]
    with np.errstate(all="ignore"):
        try:
            want = run_function(module, func, inputs)
        except FirError:
            return  # the program itself fails on these inputs (e.g. a gather out of range)
        _mark(module, index)
        try:
            mb = microbatched(module, count)
        except FirError as e:
            assert "mixes micro-batches" in e.message and e.loc is not None, e.message
            return
        out = the_func(mb)
        ops = body(out)
        assert {micro_of(op) for op in ops} == set(range(count)), print_fir(mb)
        got = run_partitioned(distribute(mb), out.sym_name.data, inputs, 2) if placed else run_function(mb, out, inputs)
    for i, (g, w, t) in enumerate(zip(got, want, result_types(out))):
        assert g.dtype == w.dtype and _close(g, w, _working_dtype(module, t)), \
            f"result {i}\n{prog.text}\n{print_fir(mb)}\n{g}\nvs\n{w}"
    # The micro-batched program reads back as it prints.
    assert print_fir(parse_source(print_fir(mb), "<again>")) == print_fir(mb)

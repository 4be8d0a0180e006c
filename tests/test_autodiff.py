"""autodiff: every op's vector-Jacobian rule against central finite differences in float64 and against PyTorch's
autograd (skipped without torch), on shapes with broadcasting and batching; random programs; the pass on whole
programs, up to a distributed GPT."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_random_programs import SETTINGS, programs, the_func
from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, FunctionType, ModuleOp
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Block, Region

from fir import api
from fir.dialects import dtypes
from fir.dialects.attr_schema import _bool_attr
from fir.dialects.base import from_tt, to_tt
from fir.dialects.dtypes import numpy_dtype
from fir.dialects.flow import OPS_BY_NAME
from fir.dialects.train import TRAINABLE
from fir.runtime.interpreter import run_function
from fir.syntax.diagnostics import FirError
from fir.syntax.frontend import parse_source, verify_module
from fir.syntax.printer import print_fir
from fir.training.autodiff import VJPS, Builder, differentiate_module, dt_of, shape_of

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from gpt_model import gpt_program  # noqa: E402

F = "f64"

# (op, operand shapes and dtypes, attributes, declared result or None); f64 operands are trained
CASES: list[tuple[str, list[tuple[tuple[int, ...], str]], dict[str, Any], Any]] = [
    ("flow.neg", [((3, 4), F)], {}, None),
    ("flow.exp", [((3, 4), F)], {}, None),
    ("flow.log", [((3, 4), F)], {}, None),
    ("flow.sqrt", [((3, 4), F)], {}, None),
    ("flow.rsqrt", [((3, 4), F)], {}, None),
    ("flow.tanh", [((3, 4), F)], {}, None),
    ("flow.relu", [((3, 4), F)], {}, None),
    ("flow.sigmoid", [((3, 4), F)], {}, None),
    ("flow.erf", [((3, 4), F)], {}, None),
    ("flow.gelu", [((3, 4), F)], {}, None),
    ("flow.gelu", [((3, 4), F)], {"approximate": "tanh"}, None),
    ("flow.cast", [((3, 4), F)], {}, ((3, 4), "f32")),
    ("flow.add", [((3, 4), F), ((4,), F)], {}, None),
    ("flow.sub", [((3, 1), F), ((1, 4), F)], {}, None),
    ("flow.mul", [((2, 3, 4), F), ((3, 1), F)], {}, None),
    ("flow.div", [((3, 4), F), ((), F)], {}, None),
    ("flow.max", [((3, 4), F), ((4,), F)], {}, None),
    ("flow.min", [((3, 4), F), ((3, 4), F)], {}, None),
    ("flow.pow", [((3, 4), F), ((4,), F)], {}, None),
    ("flow.matmul", [((3, 5), F), ((5, 4), F)], {}, None),
    ("flow.matmul", [((5, 3), F), ((4, 5), F)], {"transpose_a": True, "transpose_b": True}, None),
    ("flow.matmul", [((2, 3, 5), F), ((5, 4), F)], {}, None),
    ("flow.matmul", [((2, 1, 3, 5), F), ((3, 4, 5), F)], {"transpose_b": True}, None),
    ("flow.reduce_sum", [((2, 3, 4), F)], {"axes": [1]}, None),
    ("flow.reduce_mean", [((2, 3, 4), F)], {"axes": [0, 2], "keepdims": True}, None),
    ("flow.reduce_max", [((3, 4), F)], {"axes": [-1]}, None),
    ("flow.softmax", [((3, 4), F)], {"axis": 0}, None),
    ("flow.layernorm", [((3, 4), F), ((4,), F), ((4,), F)], {}, None),
    ("flow.layernorm", [((2, 3, 4), F), ((3, 4), F), ((3, 4), F)], {"axes": [1, 2]}, None),
    ("flow.transpose", [((2, 3, 4), F)], {"perm": [2, 0, 1]}, None),
    ("flow.reshape", [((3, 4), F)], {}, ((2, 6), F)),
    ("flow.broadcast_to", [((3, 1), F)], {}, ((2, 3, 4), F)),
    ("flow.concat", [((3, 2), F), ((3, 4), F)], {"axis": 1}, None),
    ("flow.slice", [((5, 6), F)], {"start": [1, 0], "limit": [4, 6]}, None),
    ("flow.slice", [((7, 6), F)], {"start": [1, 2], "limit": [7, 5], "stride": [2, 1]}, None),
    ("flow.slice", [((7, 9), F)], {"start": [0, 1], "limit": [6, 9], "stride": [3, 4]}, None),
    ("flow.gather", [((5, 3), F), ((6,), "i32")], {}, None),
    ("flow.gather", [((2, 4, 3), F), ((2, 2), "i64")], {"axis": 1}, None),
    ("flow.scatter_add", [((6, 3), F), ((6,), "i32")], {}, ((4, 3), F)),
    ("flow.scatter_add", [((2, 2, 3, 5), F), ((2, 3), "i32")], {"axis": 1}, ((2, 4, 5), F)),
    ("flow.cross_entropy", [((4, 5), F), ((4,), "i32")], {}, None),
    ("flow.cross_entropy", [((2, 3, 5), F), ((2, 3), "i64")], {"reduction": "sum"}, None),
    ("flow.cross_entropy", [((4, 5), F), ((4,), "i32")], {"reduction": "none"}, None),
]


def _case_id(case) -> str:
    op, ins, attrs, _ = case
    extra = "-".join(f"{k}={v}" for k, v in attrs.items() if k != "value")
    return op[5:] + "-" + "-".join("x".join(map(str, s)) or "s" for s, _ in ins) + (f"-{extra}" if extra else "")


def _loss_module(op_name: str, ins, attrs, result, dtype: str = F) -> ModuleOp:
    """@f(ins..., %r) = sum(op(ins) * r): every float operand trainable, r a fixed random cotangent."""
    types = [from_tt((s, dtype if dt == F else dt)) for s, dt in ins]
    declared = None if result is None else from_tt((result[0], dtype if result[1] == F else result[1]))
    block = Block(arg_types=types)
    op = OPS_BY_NAME[op_name].make(list(block.args), declared, **attrs)
    out_t = op.results[0].type
    block.insert_arg(out_t, len(types))
    for i, a in enumerate(block.args):
        a.name_hint = f"x{i}" if i < len(types) else "r"
    op.results[0].name_hint = "y"
    cast = op
    prod = OPS_BY_NAME["flow.mul"].make([op.results[0], block.args[-1]])
    rank = len(out_t.get_shape())
    total = OPS_BY_NAME["flow.reduce_sum"].make([prod.results[0]], axes=list(range(rank))) if rank else None
    loss = total.results[0] if total is not None else prod.results[0]
    loss.name_hint = "loss"
    ops = [cast, prod] + ([total] if total is not None else [])
    block.add_ops([*ops, ReturnOp(loss)])
    arg_attrs = ArrayAttr([DictionaryAttr({TRAINABLE: _bool_attr(True)} if (i < len(ins) and ins[i][1] == F) else {})
                           for i in range(len(block.args))])
    func = FuncOp("f", FunctionType.from_lists(list(block.arg_types), [loss.type]), Region(block), arg_attrs=arg_attrs)
    module = ModuleOp([func])
    verify_module(module)
    return module


def _inputs(op_name: str, ins, r_type, rng: np.random.Generator, dtype=np.float64, attrs_axis: int = 0
            ) -> list[np.ndarray]:
    """Random operands (positive where the op needs it, away from kinks and ties) and the cotangent r."""
    arrays = []
    for k, (shape, dt) in enumerate(ins):
        if dt != F:  # labels and indices (repeats included)
            if op_name == "flow.gather":
                bound = ins[0][0][attrs_axis]
            elif op_name == "flow.scatter_add":
                bound = to_tt(r_type)[0][attrs_axis]
            else:
                bound = ins[0][0][-1]
            arrays.append(rng.integers(0, bound, size=shape).astype(dt.replace("i", "int")))
            continue
        x = rng.standard_normal(shape)
        if op_name in ("flow.log", "flow.sqrt", "flow.rsqrt") or (op_name == "flow.pow" and k == 0):
            x = np.abs(x) + 0.5
        if op_name in ("flow.relu", "flow.max", "flow.min", "flow.reduce_max"):
            x = x + 0.05 * np.sign(x)  # keep away from kinks and ties, where finite differences are not derivatives
        arrays.append(x.astype(dtype))
    shape, dt = to_tt(r_type)
    arrays.append(rng.standard_normal(shape).astype(numpy_dtype(dt)))
    return arrays


def _grads(module: ModuleOp, inputs: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    diff = module.clone()
    differentiate_module(diff)
    verify_module(diff)
    func = next(f for f in diff.ops if isinstance(f, FuncOp))
    outs = run_function(diff, func, inputs)
    return float(outs[0]), outs[1:]


def _loss(module: ModuleOp, inputs: list[np.ndarray]) -> float:
    func = next(f for f in module.ops if isinstance(f, FuncOp))
    return float(run_function(module, func, inputs)[0])


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_every_rule_agrees_with_central_differences_in_f64(case):
    op, ins, attrs, result = case
    module = _loss_module(op, ins, attrs, result)
    func = next(f for f in module.ops if isinstance(f, FuncOp))
    rng = np.random.default_rng(sum(map(ord, _case_id(case))))
    inputs = _inputs(op, ins, func.body.blocks.first.args[-1].type, rng, attrs_axis=attrs.get("axis", 0))
    _, grads = _grads(module, inputs)
    trained = [k for k, (_, dt) in enumerate(ins) if dt == F]
    assert len(grads) == len(trained)
    h = 1e-2 if op == "flow.cast" else 1e-6  # the cast rounds to f32: a step far above its resolution (it is linear)
    for g, k in zip(grads, trained):
        assert g.shape == inputs[k].shape and g.dtype == np.float64
        fd = np.zeros_like(inputs[k])
        for idx in np.ndindex(*inputs[k].shape):
            plus = [a.copy() for a in inputs]
            minus = [a.copy() for a in inputs]
            plus[k][idx] += h
            minus[k][idx] -= h
            fd[idx] = (_loss(module, plus) - _loss(module, minus)) / (2 * h)
        tol = 1e-4 if op == "flow.cast" else 1e-6  # the cast case rounds through f32
        np.testing.assert_allclose(g, fd, rtol=tol, atol=tol, err_msg=f"operand {k}")


def test_every_differentiable_flow_op_has_a_rule_and_a_case():
    from fir.dialects.flow import FLOW_OPS

    no_gradient = {"flow.constant", "flow.fill", "flow.iota", "flow.greater", "flow.equal"}
    names = {op.name for op in FLOW_OPS}
    assert names - VJPS.keys() == {"flow.constant", "flow.fill", "flow.iota"}
    assert {c[0] for c in CASES} == names - no_gradient


# ----------------------------------------------------------------------------------------------- PyTorch
def _torch_loss(torch, op: str, attrs: dict, xs: list, r):
    """The same loss written in PyTorch."""
    t = torch
    a = xs
    if op in ("flow.neg", "flow.exp", "flow.log", "flow.sqrt", "flow.rsqrt", "flow.tanh", "flow.relu",
              "flow.sigmoid", "flow.erf"):
        fn = {"flow.neg": t.neg, "flow.exp": t.exp, "flow.log": t.log, "flow.sqrt": t.sqrt, "flow.rsqrt": t.rsqrt,
              "flow.tanh": t.tanh, "flow.relu": t.relu, "flow.sigmoid": t.sigmoid, "flow.erf": t.erf}[op]
        y = fn(a[0])
    elif op == "flow.gelu":
        y = t.nn.functional.gelu(a[0], approximate=attrs.get("approximate", "none"))
    elif op == "flow.cast":
        y = a[0].float()
    elif op in ("flow.add", "flow.sub", "flow.mul", "flow.div", "flow.max", "flow.min", "flow.pow"):
        fn = {"flow.add": t.add, "flow.sub": t.sub, "flow.mul": t.mul, "flow.div": t.div, "flow.max": t.maximum,
              "flow.min": t.minimum, "flow.pow": t.pow}[op]
        y = fn(a[0], a[1])
    elif op == "flow.matmul":
        x, w = a
        if attrs.get("transpose_a"):
            x = x.transpose(-1, -2)
        if attrs.get("transpose_b"):
            w = w.transpose(-1, -2)
        y = t.matmul(x, w)
    elif op in ("flow.reduce_sum", "flow.reduce_mean", "flow.reduce_max"):
        fn = {"flow.reduce_sum": t.sum, "flow.reduce_mean": t.mean, "flow.reduce_max": t.amax}[op]
        y = fn(a[0], dim=tuple(attrs["axes"]), keepdim=attrs.get("keepdims", False))
    elif op == "flow.softmax":
        y = t.softmax(a[0], dim=attrs.get("axis", -1))
    elif op == "flow.layernorm":
        n = len(attrs.get("axes", [-1]))
        y = t.nn.functional.layer_norm(a[0], a[0].shape[-n:], a[1], a[2], eps=1e-5)
    elif op == "flow.transpose":
        y = a[0].permute(*attrs["perm"])
    elif op == "flow.reshape":
        y = a[0].reshape(tuple(r.shape))
    elif op == "flow.broadcast_to":
        y = a[0].expand(tuple(r.shape))
    elif op == "flow.concat":
        y = t.cat(a, dim=attrs["axis"])
    elif op == "flow.slice":
        stride = attrs.get("stride", [1] * a[0].dim())
        y = a[0][tuple(slice(s, e, k) for s, e, k in zip(attrs["start"], attrs["limit"], stride))]
    elif op == "flow.gather":
        table, idx = a
        ax = attrs.get("axis", 0)
        shape = table.shape[:ax] + tuple(idx.shape) + table.shape[ax + 1:]
        y = table.index_select(ax, idx.reshape(-1).long()).reshape(shape)
    elif op == "flow.scatter_add":
        upd, idx = a
        ax = attrs.get("axis", 0)
        k = idx.dim()
        flat = upd.reshape(upd.shape[:ax] + (-1,) + upd.shape[ax + k:])
        y = t.zeros(tuple(r.shape), dtype=upd.dtype).index_add(ax, idx.reshape(-1).long(), flat)
    elif op == "flow.cross_entropy":
        logits, labels = a
        flat = t.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).long(),
                                             reduction=attrs.get("reduction", "mean"))
        y = flat.reshape(labels.shape) if attrs.get("reduction") == "none" else flat
    else:
        raise AssertionError(op)
    return (y.to(r.dtype) * r).sum()


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_every_rule_agrees_with_pytorch(case, dtype):
    torch = pytest.importorskip("torch", reason="PyTorch (test-only: pip install torch==2.13.0) is not installed")
    op, ins, attrs, result = case
    module = _loss_module(op, ins, attrs, result, dtype)
    func = next(f for f in module.ops if isinstance(f, FuncOp))
    rng = np.random.default_rng(7)
    npdt = np.float32 if dtype == "f32" else np.float64
    inputs = _inputs(op, ins, func.body.blocks.first.args[-1].type, rng, npdt, attrs.get("axis", 0))
    loss, grads = _grads(module, inputs)
    xs = [torch.tensor(x, requires_grad=(ins[k][1] == F)) if k < len(ins) else None for k, x in enumerate(inputs)]
    r = torch.tensor(inputs[-1])
    want = _torch_loss(torch, op, attrs, xs[:len(ins)], r)
    want.backward()
    tol = 2e-4 if dtype == "f32" or op == "flow.cast" else 1e-9  # the cast case computes in f32 after the cast
    np.testing.assert_allclose(loss, want.item(), rtol=tol, atol=tol)
    trained = [k for k, (_, dt) in enumerate(ins) if dt == F]
    for g, k in zip(grads, trained):
        np.testing.assert_allclose(g, xs[k].grad.numpy(), rtol=tol, atol=tol, err_msg=f"operand {k}")


# ----------------------------------------------------------------------------------------------- the pass
MLP = """
func.func @step(%x: tensor<8x4xf32>, %labels: tensor<8xi32>, %w1: tensor<4x16xf32> {trainable = true},
                %b1: tensor<16xf32> {trainable = true}, %w2: tensor<16x3xf32> {trainable = true},
                %unused: tensor<5xf32> {trainable = true}) -> tensor<f32> {
  %h = flow.matmul %x, %w1
  %hb = flow.add %h, %b1
  %a = flow.gelu %hb
  %logits = flow.matmul %a, %w2
  %loss = flow.cross_entropy %logits, %labels
  func.return %loss
}
"""


def test_the_pass_appends_named_gradients_that_round_trip():
    module = parse_source(MLP, "mlp.fir")
    differentiate_module(module)
    verify_module(module)
    text = print_fir(module)
    assert "-> (tensor<f32>, tensor<4x16xf32>, tensor<16xf32>, tensor<16x3xf32>, tensor<5xf32>)" in text
    assert "func.return %loss, %w1.grad, %b1.grad, %w2.grad, %unused.grad" in text
    assert print_fir(parse_source(text, "again.fir")) == text
    func = next(f for f in module.ops if isinstance(f, FuncOp))
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((8, 4)).astype(np.float32), rng.integers(0, 3, 8).astype(np.int32),
              rng.standard_normal((4, 16)).astype(np.float32), rng.standard_normal(16).astype(np.float32),
              rng.standard_normal((16, 3)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    outs = run_function(module, func, inputs)
    assert not outs[4].any()  # the loss does not depend on it: zeros


def test_errors_are_located(monkeypatch):
    monkeypatch.delitem(VJPS, "flow.gelu")  # an op without a rule on the way to the loss
    with pytest.raises(FirError, match="'flow.gelu' has no gradient rule") as e:
        differentiate_module(parse_source(MLP, "g.fir"))
    assert e.value.loc is not None and e.value.loc.line == 7
    monkeypatch.undo()
    not_scalar = MLP.replace("%loss = flow.cross_entropy %logits, %labels", "%loss = flow.cross_entropy %logits, %labels {reduction = \"none\"}").replace("-> tensor<f32>", "-> tensor<8xf32>")
    with pytest.raises(FirError, match="must be a rank-0 float tensor"):
        differentiate_module(parse_source(not_scalar, "s.fir"))
    int_param = MLP.replace("%labels: tensor<8xi32>", "%labels: tensor<8xi32> {trainable = true}")
    with pytest.raises(FirError, match="only float arguments have gradients"):
        differentiate_module(parse_source(int_param, "i.fir"))


# ----------------------------------------------------------------------------------------------- random programs
def _as_f64(text: str) -> str:
    """The program with every float type made f64 (so finite differences are meaningful)."""
    return re.sub(r"(?<=[x<])(f32|f16|bf16)>", "f64>", text)


@settings(max_examples=int(os.environ.get("FIR_AUTODIFF_EXAMPLES", "60")), derandomize=True, **SETTINGS)
@given(programs(max_ops=10), st.integers(0, 2**32 - 1))
def test_random_programs_differentiate_as_finite_differences_say(prog, seed):
    # Every float argument trainable; the loss a random weighting of every float result; the gradient of a few
    # elements of each argument against central differences (f64).
    try:
        module = parse_source(_as_f64(prog.text), "<random>")
    except FirError:
        assume(False)
    func = the_func(module)
    block = func.body.blocks.first
    floats = [a for a in block.args if dtypes.is_float(dt_of(a))]
    ret = block.last_op
    outs = list(dict.fromkeys(v for v in ret.operands if dtypes.is_float(dt_of(v))))
    assume(floats and outs)
    rng = np.random.default_rng(seed)
    b = Builder(ret)
    terms = []
    for v in outs:
        weight = rng.standard_normal(shape_of(v))
        r = b.op("flow.constant", [], v.type, value=weight.tolist() if weight.ndim else float(weight))
        prod = b.mul(v, r)
        terms.append(b.sum(prod, list(range(len(shape_of(v))))))
    loss = terms[0]
    for t in terms[1:]:
        loss = b.add(loss, t)
    block.insert_op_before(ReturnOp(loss), ret)
    block.erase_op(ret)
    func.function_type = FunctionType.from_lists(list(func.function_type.inputs.data), [loss.type])
    func.res_attrs = None
    func.arg_attrs = ArrayAttr([DictionaryAttr({TRAINABLE: _bool_attr(True)} if a in floats else {})
                                for a in block.args])
    verify_module(module)
    inputs = []
    for a in block.args:
        shape, dt = to_tt(a.type)
        x = rng.standard_normal(shape)
        inputs.append(x if dt == "f64" else x.astype(numpy_dtype(dt)))
    try:
        with np.errstate(all="ignore"):
            loss_value, grads = _grads(module, inputs)
    except FirError as e:
        assume("has no gradient rule" not in e.message)  # gather: its rule is still to come
        raise
    assume(np.isfinite(loss_value) and all(np.all(np.isfinite(g)) for g in grads))
    for g, a in zip(grads, floats):
        k = block.args.index(a)
        for idx in [tuple(rng.integers(0, n) for n in g.shape) for _ in range(3)] if g.size else []:
            fd = []
            for h in (1e-5, 1e-6):
                plus, minus = [x.copy() for x in inputs], [x.copy() for x in inputs]
                plus[k][idx] += h
                minus[k][idx] -= h
                with np.errstate(all="ignore"):
                    fd.append((_loss(module, plus) - _loss(module, minus)) / (2 * h))
            assume(np.isfinite(fd[0]) and abs(fd[0] - fd[1]) <= 1e-4 * (1 + abs(fd[0])))  # smooth here
            assert abs(g[idx] - fd[1]) <= 1e-4 * (1 + abs(fd[1])), (idx, g[idx], fd, module)


# ----------------------------------------------------------------------------------------------- a GPT
@pytest.mark.parametrize("stages,tp,dp,micro", [(1, 4, 1, 1), (1, 2, 2, 1), (2, 1, 1, 2), (2, 2, 1, 2)],
                         ids=["tp4", "dp2xtp2", "2-stages-2-micro", "2-stages-tp2"])
def test_gpt_gradients_distributed_equal_one_device(stages, tp, dp, micro):
    # The derived backward of a 2-layer GPT (embeddings through gather, attention, layernorm, GELU, the loss),
    # distributed by the same SBP machinery as the forward: every gradient equals the single-device reference
    text = gpt_program(2, hidden=32, heads=4, seq=8, batch=4, stages=stages, tp=tp, dp=dp, vocab=64,
                       microbatch=micro > 1, trainable=True)
    prog = api.parse(text, "gpt.fir").apply("autodiff")
    run = prog.run(seed=0, check=True, interleave="adversarial", microbatches=micro if micro > 1 else None)
    assert len(run.checks) == 1 + 2 + 2 * 12 + 3 and not run.mismatches()
    assert np.abs(run.outputs["wte.grad"]).sum() > 0


def test_gpt_gradients_agree_with_central_differences():
    # The whole derived backward, in f64 on one device, against finite differences of the forward
    text = _as_f64(gpt_program(2, hidden=16, heads=2, seq=4, batch=2, stages=1, tp=1, vocab=16, trainable=True))
    forward = api.parse(text, "gpt.fir")
    step = forward.apply("autodiff")
    inputs = forward.random_inputs(seed=3)
    grads = step.reference(inputs)
    rng = np.random.default_rng(0)
    h = 1e-6
    for name in ("wte", "wpe", "l0.w_qkv", "l1.ln2_g", "l1.w_proj", "w_head"):
        for _ in range(3):
            idx = tuple(int(rng.integers(0, n)) for n in inputs[name].shape)
            plus, minus = dict(inputs), dict(inputs)
            plus[name], minus[name] = inputs[name].copy(), inputs[name].copy()
            plus[name][idx] += h
            minus[name][idx] -= h
            fd = (forward.reference(plus)["loss"] - forward.reference(minus)["loss"]) / (2 * h)
            assert abs(grads[f"{name}.grad"][idx] - fd) <= 1e-6 * (1 + abs(fd)), (name, idx)

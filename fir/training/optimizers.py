"""Optimizers: a loss function becomes one training step (the work of the `train-step` pass).

The step's gradients are derived (fir.training.autodiff), then each trainable argument `%w` is updated by the
optimizer as ordinary elementwise flow ops (fuse makes one kernel of each parameter's update). The step takes the
training state as arguments and returns it updated, named after what it replaces:

- inputs: the function's own arguments, then the optimizer's state (`%w.momentum` for SGD with momentum; `%w.m`,
  `%w.v` and one `%step`, the number of steps taken so far, for AdamW);
- results: the function's own results (the loss first), then `%w.next` for every trainable argument, then the
  state's `.next` values. A training loop feeds result `X.next` back as argument `X` (fir-run's `--steps`).

The optimizer state is f32 whatever the parameter's dtype, and carries the parameter's placement (`mesh`, `sbp`):
state split like its parameter is an SBP choice, and the gradient is reduced to that layout by the boxing the
rules choose. The update formulas are PyTorch's (`torch.optim.SGD`, `torch.optim.AdamW`):

- SGD: `g = grad + weight_decay * w`; with momentum `buf = momentum * buf + g` (the first step's `buf` is `g`,
  as the state starts at zero) and `g = buf`; `w = w - lr * g`.
- AdamW: `w = w * (1 - lr * weight_decay)`; `m = beta1 m + (1 - beta1) grad`; `v = beta2 v + (1 - beta2) grad^2`;
  with `t = step + 1`, `w = w - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, FunctionType, ModuleOp
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import BlockArgument, Operation, SSAValue

from fir.dialects.base import from_tt
from fir.dialects.sbp import MESH, SBP, SBP_IN, BroadcastAttr, meshes_of
from fir.syntax.diagnostics import FirError, loc_of
from fir.training.autodiff import Builder, differentiate, dt_of, shape_of, trainable_args

OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class Optimizer:
    """An optimizer and its hyper-parameters (PyTorch's defaults where it has them)."""

    kind: str
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def check(self) -> None:
        """FirError for an unknown optimizer or a hyper-parameter out of its range."""
        if self.kind not in OPTIMIZERS:
            raise FirError(f"train-step: unknown optimizer \"{self.kind}\" (choose {' or '.join(OPTIMIZERS)})")
        for name, value, lo, hi in (("lr", self.lr, 0.0, None), ("momentum", self.momentum, 0.0, 1.0),
                                    ("weight_decay", self.weight_decay, 0.0, None), ("beta1", self.beta1, 0.0, 1.0),
                                    ("beta2", self.beta2, 0.0, 1.0), ("eps", self.eps, 0.0, None)):
            if not (value >= lo and (hi is None or value < hi)):
                bound = f"in [{lo}, {hi})" if hi is not None else f"at least {lo}"
                raise FirError(f"train-step: {name} must be {bound}, got {value}")


def _layout(func: FuncOp, index: int, meshes: dict) -> ArrayAttr | None:
    """The parameter's nd-SBP as an attribute: its own `sbp`, else B on every axis of its mesh (None when the
    function is not placed)."""
    d = func.arg_attrs.data[index].data if func.arg_attrs is not None else {}
    if SBP in d:
        return d[SBP]  # type: ignore[return-value]
    mesh = d.get(MESH) or func.attributes.get(MESH)
    name = mesh.root_reference.data if mesh is not None else None  # type: ignore[attr-defined]
    if name not in meshes:
        return None
    return ArrayAttr([BroadcastAttr()] * len(meshes[name].shape))


def _hint(op_result: SSAValue, nd: ArrayAttr | None, operands_nd: bool = False) -> None:
    """Ask sbp-infer to compute an update op in its parameter's layout (and, with `operands_nd`, to read its
    operands so: the gradient is then reduced once, where it enters the update, not term by term)."""
    op = op_result.owner
    if nd is None or not isinstance(op, Operation):
        return
    op.attributes[SBP] = nd
    if operands_nd:
        op.attributes[SBP_IN] = ArrayAttr([nd if shape_of(v) else ArrayAttr([BroadcastAttr()] * len(nd.data))
                                           for v in op.operands])


def _state_attrs(func: FuncOp, index: int) -> DictionaryAttr:
    """A state argument's attributes: its parameter's placement (not `trainable`)."""
    if func.arg_attrs is None:
        return DictionaryAttr({})
    d = func.arg_attrs.data[index]
    return DictionaryAttr({k: v for k, v in d.data.items() if k in (MESH, SBP)})


class _State:
    """The optimizer-state arguments added to one function, with their attributes."""

    def __init__(self, func: FuncOp):
        self.block = func.body.blocks.first
        self.arg_attrs = list(func.arg_attrs.data) if func.arg_attrs is not None else \
            [DictionaryAttr({}) for _ in self.block.args]  # type: ignore[union-attr]

    def add(self, name: str, like: SSAValue, attrs: DictionaryAttr, shape=None) -> BlockArgument:
        """A new f32 state argument shaped like `like` (or `shape`)."""
        t = (tuple(shape_of(like)) if shape is None else shape, "f32")
        arg = self.block.insert_arg(from_tt(t), len(self.block.args))  # type: ignore[union-attr]
        arg.name_hint = name
        self.arg_attrs.append(attrs)
        return arg


def make_train_step(func: FuncOp, opt: Optimizer, meshes: dict | None = None) -> None:
    """Turn a loss function with trainable arguments into one training step of `opt` (see the module docstring)."""
    block = func.body.blocks.first
    assert block is not None
    params_idx = trainable_args(func)
    if not params_idx:
        raise FirError(f"train-step: @{func.sym_name.data} has no trainable argument (mark the parameters "
                       "`trainable = true`)", loc_of(func.location))
    params = [block.args[i] for i in params_idx]
    n_results = len(func.function_type.outputs.data)
    differentiate(func)
    ret = block.last_op
    assert isinstance(ret, ReturnOp)
    kept, grads = list(ret.operands[:n_results]), list(ret.operands[n_results:])
    b = Builder(ret)
    state = _State(func)
    updated: list[SSAValue] = []
    states: list[SSAValue] = []
    counter = None
    if opt.kind == "adamw":  # the step number and the bias corrections, once for every parameter
        counter = state.add("step", params[0], DictionaryAttr({}), ())
        t = b.add(counter, b.fill(1.0, (), "f32"))
        t.name_hint = "step.next"
        one = b.fill(1.0, (), "f32")
        c1 = b.sub(one, b.op("flow.pow", [b.fill(opt.beta1, (), "f32"), t]))
        root_c2 = b.op("flow.sqrt", [b.sub(one, b.op("flow.pow", [b.fill(opt.beta2, (), "f32"), t]))])
        step_size = b.div(b.fill(opt.lr, (), "f32"), c1)
    for i, p, g in zip(params_idx, params, grads):
        name = p.name_hint or f"arg{i}"
        attrs = _state_attrs(func, i)
        nd = _layout(func, i, meshes or {})
        b.mesh = attrs.data.get(MESH)
        dt = dt_of(p)
        g32 = b.cast(g, "f32")
        p32 = b.cast(p, "f32")
        if opt.kind == "sgd":
            d = g32
            if opt.weight_decay:
                d = b.add(g32, b.scale(p32, opt.weight_decay))
                _hint(d, nd, operands_nd=True)
            if opt.momentum:
                buf = state.add(f"{name}.momentum", p, attrs)
                d = b.add(b.scale(buf, opt.momentum), d)
                _hint(d, nd, operands_nd=True)
                d.name_hint = f"{name}.momentum.next"
                states.append(d)
            scaled = b.scale(d, opt.lr)
            _hint(scaled, nd, operands_nd=True)
            new = b.sub(p32, scaled)
        else:
            m, v = state.add(f"{name}.m", p, attrs), state.add(f"{name}.v", p, attrs)
            g_term = b.scale(g32, 1.0 - opt.beta1)
            square = b.mul(g32, g32)
            _hint(g_term, nd, operands_nd=True)
            _hint(square, nd, operands_nd=True)
            m_next = b.add(b.scale(m, opt.beta1), g_term)
            v_next = b.add(b.scale(v, opt.beta2), b.scale(square, 1.0 - opt.beta2))
            m_next.name_hint, v_next.name_hint = f"{name}.m.next", f"{name}.v.next"
            states += [m_next, v_next]
            decayed = b.scale(p32, 1.0 - opt.lr * opt.weight_decay) if opt.weight_decay else p32
            denom = b.add(b.div(b.op("flow.sqrt", [v_next]), root_c2), b.fill(opt.eps, (), "f32"))
            new = b.sub(decayed, b.mul(step_size, b.div(m_next, denom)))
        _hint(new, nd)
        new = b.cast(new, dt)
        new.name_hint = f"{name}.next"
        updated.append(new)
    b.mesh = None
    if counter is not None:
        states.append(t)
    results = kept + updated + states
    block.insert_op_before(ReturnOp(*results), ret)
    block.erase_op(ret)
    func.function_type = FunctionType.from_lists([a.type for a in block.args], [r.type for r in results])
    func.arg_attrs = ArrayAttr(state.arg_attrs)
    if func.res_attrs is not None:
        res = list(func.res_attrs.data[:n_results])
        func.res_attrs = ArrayAttr(res + [DictionaryAttr({}) for _ in results[n_results:]])


def make_train_steps(module: ModuleOp, opt: Optimizer) -> None:
    """Turn every function with trainable arguments into a training step."""
    opt.check()
    funcs = [op for op in module.ops if isinstance(op, FuncOp) and trainable_args(op)]
    if not funcs:
        raise FirError("train-step: no function has a trainable argument (mark the parameters `trainable = true`)")
    meshes = meshes_of(module)
    for f in funcs:
        make_train_step(f, opt, meshes)


__all__ = ["OPTIMIZERS", "Optimizer", "make_train_step", "make_train_steps"]

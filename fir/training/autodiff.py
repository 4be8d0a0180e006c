"""Reverse-mode automatic differentiation of flow programs: the work of the `autodiff` pass.

A function whose first result is a rank-0 float loss and some of whose arguments are marked `{trainable = true}`
gets, after its results, the gradient of the loss with respect to each trainable argument, in argument order
(`%w.grad`). The gradient is built by reverse mode as ordinary flow ops, appended before the return: the loss's
cotangent is 1, every op's vector-Jacobian product (VJP) turns the cotangent of its result into those of its
operands, and the cotangents of a value used several times are summed. Every later pass treats the result as
any other program.

The VJP rules are data, one per op name in `VJPS` (as the SBP rules are in fir.distribution.rules): a rule gets a
`Builder` positioned before the return, the forward op, the cotangent of its result, and which operands need
one, and returns the operands' cotangents (None where there is none). Integer and boolean values carry no
cotangent; a trainable argument the loss does not depend on gets zeros; an op on the way from a trainable
argument to the loss that has no rule is a located error.

Placement: every op built for a forward op carries its `mesh` (so pipeline stages keep their backward), and no
SBP hint (sbp-infer chooses the backward's layouts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, FunctionType, ModuleOp
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Attribute, Operation, SSAValue

from fir.dialects import dtypes
from fir.dialects.base import from_tt, to_tt
from fir.dialects.flow import OPS_BY_NAME, FusedOp
from fir.dialects.sbp import MESH
from fir.dialects.shape_inference import normalize_axes
from fir.dialects.train import TRAINABLE
from fir.syntax.diagnostics import FirError, loc_of

Shape = tuple[int, ...]


class Builder:
    """Builds flow ops before the function's return, carrying the forward op's `mesh`."""

    def __init__(self, ret: ReturnOp):
        self.ret = ret
        self.mesh: Attribute | None = None

    def op(self, name: str, operands: Sequence[SSAValue], result_type=None, hint: str | None = None,
           **attrs) -> SSAValue:
        """A new flow op `name` (result type inferred unless given); its result."""
        new = OPS_BY_NAME[name].make(list(operands), from_tt(result_type) if isinstance(result_type, tuple)
                                     else result_type, **attrs)
        if self.mesh is not None:
            new.attributes[MESH] = self.mesh
        if hint:
            new.results[0].name_hint = hint
        self.ret.parent_block().insert_op_before(new, self.ret)  # type: ignore[union-attr]
        return new.results[0]

    # -- small helpers -----------------------------------------------------------------------------------------
    def fill(self, value: float, shape: Shape, dt: str) -> SSAValue:
        """A constant tensor."""
        return self.op("flow.fill", [], (tuple(shape), dt), value=value)

    def scalar(self, value: float, like: SSAValue) -> SSAValue:
        """A rank-0 constant of `like`'s dtype."""
        return self.fill(value, (), dt_of(like))

    def add(self, a: SSAValue, b: SSAValue) -> SSAValue:
        return self.op("flow.add", [a, b])

    def sub(self, a: SSAValue, b: SSAValue) -> SSAValue:
        return self.op("flow.sub", [a, b])

    def mul(self, a: SSAValue, b: SSAValue) -> SSAValue:
        return self.op("flow.mul", [a, b])

    def div(self, a: SSAValue, b: SSAValue) -> SSAValue:
        return self.op("flow.div", [a, b])

    def neg(self, a: SSAValue) -> SSAValue:
        return self.op("flow.neg", [a])

    def scale(self, a: SSAValue, c: float) -> SSAValue:
        """a * c."""
        return self.mul(a, self.scalar(c, a))

    def mask(self, cond: SSAValue, like: SSAValue) -> SSAValue:
        """An i1 tensor as 0 / 1 in `like`'s dtype."""
        return self.op("flow.cast", [cond], (shape_of(cond), dt_of(like)))

    def reshape(self, a: SSAValue, shape: Shape) -> SSAValue:
        return a if shape_of(a) == tuple(shape) else self.op("flow.reshape", [a], (tuple(shape), dt_of(a)))

    def sum(self, a: SSAValue, axes: Sequence[int], keepdims: bool = False) -> SSAValue:
        if not axes:
            return a
        return self.op("flow.reduce_sum", [a], axes=list(axes), keepdims=keepdims)

    def mean(self, a: SSAValue, axes: Sequence[int]) -> SSAValue:
        return self.op("flow.reduce_mean", [a], axes=list(axes), keepdims=True)

    def broadcast(self, a: SSAValue, shape: Shape) -> SSAValue:
        return a if shape_of(a) == tuple(shape) else self.op("flow.broadcast_to", [a], (tuple(shape), dt_of(a)))

    def unbroadcast(self, g: SSAValue, shape: Shape) -> SSAValue:
        """The cotangent of an operand of shape `shape` that numpy broadcasting stretched to g's shape: g summed
        over the axes the operand lacks or had as 1."""
        gs = shape_of(g)
        lead = len(gs) - len(shape)
        axes = list(range(lead)) + [lead + i for i, d in enumerate(shape) if d == 1 and gs[lead + i] != 1]
        return self.reshape(self.sum(g, axes), tuple(shape))

    def cast(self, a: SSAValue, dt: str) -> SSAValue:
        return a if dt_of(a) == dt else self.op("flow.cast", [a], (shape_of(a), dt))


def shape_of(v: SSAValue) -> Shape:
    return to_tt(v.type)[0]


def dt_of(v: SSAValue) -> str:
    return to_tt(v.type)[1]


def differentiable(v: SSAValue) -> bool:
    """Whether a value carries a cotangent: floating-point values only."""
    return dtypes.is_float(dt_of(v))


# ----------------------------------------------------------------------------------------------- rules
Grads = list[SSAValue | None]
Vjp = Callable[[Builder, Operation, SSAValue, Sequence[bool]], Grads]
VJPS: dict[str, Vjp] = {}


def vjp(*names: str) -> Callable[[Vjp], Vjp]:
    """Register a rule for the ops `names`."""
    def register(fn: Vjp) -> Vjp:
        for n in names:
            VJPS[f"flow.{n}"] = fn
        return fn
    return register


def _res(op: Operation) -> SSAValue:
    return op.results[0]


@vjp("neg")
def _neg(b, op, g, want):
    return [b.neg(g)]


@vjp("exp")
def _exp(b, op, g, want):
    return [b.mul(g, _res(op))]


@vjp("log")
def _log(b, op, g, want):
    return [b.div(g, op.operands[0])]


@vjp("sqrt")
def _sqrt(b, op, g, want):
    return [b.div(g, b.scale(_res(op), 2.0))]  # d sqrt(x) = 1 / (2 sqrt(x))


@vjp("rsqrt")
def _rsqrt(b, op, g, want):
    y = _res(op)  # d x^(-1/2) = -x^(-3/2) / 2 = -y^3 / 2
    return [b.mul(g, b.scale(b.mul(y, b.mul(y, y)), -0.5))]


@vjp("tanh")
def _tanh(b, op, g, want):
    y = _res(op)
    return [b.mul(g, b.sub(b.scalar(1.0, y), b.mul(y, y)))]


@vjp("sigmoid")
def _sigmoid(b, op, g, want):
    y = _res(op)
    return [b.mul(g, b.mul(y, b.sub(b.scalar(1.0, y), y)))]


@vjp("relu")
def _relu(b, op, g, want):
    x = op.operands[0]  # the subgradient 0 at 0, as PyTorch
    return [b.mul(g, b.mask(b.op("flow.greater", [x, b.scalar(0.0, x)]), g))]


@vjp("erf")
def _erf(b, op, g, want):
    x = op.operands[0]  # 2 / sqrt(pi) e^(-x^2)
    return [b.mul(g, b.scale(b.op("flow.exp", [b.neg(b.mul(x, x))]), 2.0 / math.sqrt(math.pi)))]


@vjp("gelu")
def _gelu(b, op, g, want):
    x = op.operands[0]
    if op.attr_values()["approximate"] == "tanh":
        # y = x/2 (1 + t), t = tanh(c (x + k x^3)): y' = (1 + t)/2 + x/2 (1 - t^2) c (1 + 3 k x^2)
        c, k = math.sqrt(2.0 / math.pi), 0.044715
        x2 = b.mul(x, x)
        t = b.op("flow.tanh", [b.scale(b.add(x, b.scale(b.mul(x2, x), k)), c)])
        one = b.scalar(1.0, x)
        left = b.scale(b.add(one, t), 0.5)
        right = b.mul(b.scale(x, 0.5 * c), b.mul(b.sub(one, b.mul(t, t)), b.add(one, b.scale(x2, 3 * k))))
        return [b.mul(g, b.add(left, right))]
    # y = x Phi(x): y' = Phi(x) + x phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2, phi(x) = e^(-x^2/2) / sqrt(2 pi)
    phi_cdf = b.scale(b.add(b.scalar(1.0, x), b.op("flow.erf", [b.scale(x, 1 / math.sqrt(2.0))])), 0.5)
    pdf = b.scale(b.op("flow.exp", [b.scale(b.mul(x, x), -0.5)]), 1 / math.sqrt(2 * math.pi))
    return [b.mul(g, b.add(phi_cdf, b.mul(x, pdf)))]


@vjp("cast")
def _cast(b, op, g, want):
    x = op.operands[0]
    return [b.cast(g, dt_of(x)) if differentiable(x) else None]


@vjp("add")
def _add(b, op, g, want):
    return [b.unbroadcast(g, shape_of(v)) if w else None for v, w in zip(op.operands, want)]


@vjp("sub")
def _sub(b, op, g, want):
    x, y = op.operands
    return [b.unbroadcast(g, shape_of(x)) if want[0] else None,
            b.unbroadcast(b.neg(g), shape_of(y)) if want[1] else None]


@vjp("mul")
def _mul(b, op, g, want):
    x, y = op.operands
    return [b.unbroadcast(b.mul(g, y), shape_of(x)) if want[0] else None,
            b.unbroadcast(b.mul(g, x), shape_of(y)) if want[1] else None]


@vjp("div")
def _div(b, op, g, want):
    x, y = op.operands  # d(x/y) = dx / y - (x/y) dy / y
    gy = b.div(g, y)
    return [b.unbroadcast(gy, shape_of(x)) if want[0] else None,
            b.unbroadcast(b.neg(b.mul(gy, _res(op))), shape_of(y)) if want[1] else None]


def _select_grad(b: Builder, g: SSAValue, x: SSAValue, y: SSAValue) -> SSAValue:
    """g where x > y, half of g where x == y (ties share the gradient, as PyTorch's maximum and minimum)."""
    share = b.add(b.mask(b.op("flow.greater", [x, y]), g), b.scale(b.mask(b.op("flow.equal", [x, y]), g), 0.5))
    return b.mul(g, share)


@vjp("max")
def _max(b, op, g, want):
    x, y = op.operands
    return [b.unbroadcast(_select_grad(b, g, x, y), shape_of(x)) if want[0] else None,
            b.unbroadcast(_select_grad(b, g, y, x), shape_of(y)) if want[1] else None]


@vjp("min")
def _min(b, op, g, want):
    x, y = op.operands
    return [b.unbroadcast(_select_grad(b, g, y, x), shape_of(x)) if want[0] else None,
            b.unbroadcast(_select_grad(b, g, x, y), shape_of(y)) if want[1] else None]


@vjp("pow")
def _pow(b, op, g, want):
    x, y = op.operands  # d x^y = y x^(y-1) dx + x^y log(x) dy
    out: Grads = [None, None]
    if want[0]:
        out[0] = b.unbroadcast(b.mul(g, b.mul(y, b.op("flow.pow", [x, b.sub(y, b.scalar(1.0, y))]))), shape_of(x))
    if want[1]:
        out[1] = b.unbroadcast(b.mul(g, b.mul(_res(op), b.op("flow.log", [x]))), shape_of(y))
    return out


@vjp("matmul")
def _matmul(b, op, g, want):
    x, y = op.operands
    vals = op.attr_values()
    ta, tb = vals["transpose_a"], vals["transpose_b"]
    out: Grads = [None, None]
    # C = A' B' with A' = A^ta, B' = B^tb: dA' = g B'^T, dB' = A'^T g; a transposed operand takes the transpose.
    if want[0]:
        da = (b.op("flow.matmul", [y, g], transpose_a=tb, transpose_b=True) if ta else
              b.op("flow.matmul", [g, y], transpose_b=not tb))
        out[0] = b.unbroadcast(da, shape_of(x))  # summed over the batch axes broadcasting gave it
    if want[1]:
        db = (b.op("flow.matmul", [g, x], transpose_a=True, transpose_b=ta) if tb else
              b.op("flow.matmul", [x, g], transpose_a=not ta))
        out[1] = b.unbroadcast(db, shape_of(y))
    return out


def _kept(shape: Shape, axes: Sequence[int]) -> Shape:
    """The shape with the reduced axes kept as 1."""
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


@vjp("reduce_sum", "reduce_mean")
def _reduce_sum(b, op, g, want):
    x = op.operands[0]
    shape = shape_of(x)
    axes = normalize_axes(op.attr_values()["axes"], len(shape))
    d = b.broadcast(b.reshape(g, _kept(shape, axes)), shape)
    if op.name == "flow.reduce_mean":
        d = b.scale(d, 1.0 / math.prod(shape[a] for a in axes))
    return [d]


@vjp("reduce_max")
def _reduce_max(b, op, g, want):
    x = op.operands[0]
    shape = shape_of(x)
    axes = normalize_axes(op.attr_values()["axes"], len(shape))
    kept = _kept(shape, axes)
    hit = b.mask(b.op("flow.equal", [x, b.reshape(_res(op), kept)]), x)  # ties share the gradient
    count = b.sum(hit, axes, keepdims=True)
    return [b.mul(b.div(b.reshape(g, kept), count), hit)]


@vjp("softmax")
def _softmax(b, op, g, want):
    y = _res(op)  # dx = y (g - sum(g y))
    axis = op.attr_values()["axis"] % len(shape_of(y))
    return [b.mul(y, b.sub(g, b.sum(b.mul(g, y), [axis], keepdims=True)))]


@vjp("layernorm")
def _layernorm(b, op, g, want):
    x, gamma, _ = op.operands
    shape = shape_of(x)
    axes = normalize_axes(op.attr_values()["axes"], len(shape))
    eps = op.attr_values()["eps"]
    centred = b.sub(x, b.mean(x, axes))
    rstd = b.op("flow.rsqrt", [b.add(b.mean(b.mul(centred, centred), axes), b.scalar(eps, x))])
    xhat = b.mul(centred, rstd)
    out: Grads = [None, None, None]
    if want[0]:
        # dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = g gamma
        dxhat = b.mul(g, gamma)
        inner = b.sub(b.sub(dxhat, b.mean(dxhat, axes)), b.mul(xhat, b.mean(b.mul(dxhat, xhat), axes)))
        out[0] = b.mul(rstd, inner)
    if want[1]:
        out[1] = b.unbroadcast(b.mul(g, xhat), shape_of(gamma))
    if want[2]:
        out[2] = b.unbroadcast(g, shape_of(op.operands[2]))
    return out


@vjp("transpose")
def _transpose(b, op, g, want):
    perm = op.attr_values()["perm"]
    inverse = [perm.index(i) for i in range(len(perm))]
    return [b.op("flow.transpose", [g], perm=inverse)]


@vjp("reshape")
def _reshape(b, op, g, want):
    return [b.reshape(g, shape_of(op.operands[0]))]


@vjp("broadcast_to")
def _broadcast_to(b, op, g, want):
    return [b.unbroadcast(g, shape_of(op.operands[0]))]


@vjp("concat")
def _concat(b, op, g, want):
    axis = op.attr_values()["axis"] % len(shape_of(g))
    out: Grads = []
    at = 0
    for v, w in zip(op.operands, want):
        n = shape_of(v)[axis]
        if w:
            start, limit = [0] * len(shape_of(g)), list(shape_of(g))
            start[axis], limit[axis] = at, at + n
            out.append(b.op("flow.slice", [g], start=start, limit=limit))
        else:
            out.append(None)
        at += n
    return out


@vjp("slice")
def _slice(b, op, g, want):
    # Put g back where the slice took it: per axis, stride gaps then the zeros before and after.
    x = op.operands[0]
    vals = op.attr_values()
    d = g
    for axis, (start, stride, full) in enumerate(zip(vals["start"], vals["stride"], shape_of(x))):
        shape = list(shape_of(d))
        n = shape[axis]
        if n and stride > 1:
            # interleave stride - 1 zeros after each element: [n, 1] ++ [n, stride-1] -> n * stride, cut to the span
            col = b.reshape(d, tuple(shape[:axis + 1]) + (1,) + tuple(shape[axis + 1:]))
            gap = b.fill(0.0, tuple(shape[:axis + 1]) + (stride - 1,) + tuple(shape[axis + 1:]), dt_of(g))
            wide = b.op("flow.concat", [col, gap], axis=axis + 1)
            shape[axis] = n * stride
            d = b.reshape(wide, tuple(shape))
            span = (n - 1) * stride + 1
            lo, hi = [0] * len(shape), list(shape)
            hi[axis] = span
            d = b.op("flow.slice", [d], start=lo, limit=hi)
            shape[axis] = span
        used = shape[axis] if n else 0
        before, after = (start if n else 0), full - (start if n else 0) - used
        parts = []
        if before:
            parts.append(b.fill(0.0, tuple(shape[:axis]) + (before,) + tuple(shape[axis + 1:]), dt_of(g)))
        if used:
            parts.append(d)
        if after:
            parts.append(b.fill(0.0, tuple(shape[:axis]) + (after,) + tuple(shape[axis + 1:]), dt_of(g)))
        d = parts[0] if len(parts) == 1 else b.op("flow.concat", parts, axis=axis)
    return [d]


@vjp("gather")
def _gather(b, op, g, want):
    table, indices = op.operands  # each selected row's cotangent added back at its index (repeats accumulate)
    return [b.op("flow.scatter_add", [g, indices], table.type, axis=op.attr_values()["axis"]), None]


@vjp("scatter_add")
def _scatter_add(b, op, g, want):
    updates, indices = op.operands  # the transpose of gather, and gather of scatter_add
    return [b.op("flow.gather", [g, indices], axis=op.attr_values()["axis"]), None]


@vjp("cross_entropy")
def _cross_entropy(b, op, g, want):
    logits, labels = op.operands
    shape = shape_of(logits)
    rows = shape[:-1]
    # d loss_i / d logits_i = softmax(logits_i) - onehot(label_i), times the row's cotangent
    p = b.op("flow.softmax", [logits], axis=-1)
    classes = b.op("flow.iota", [], (shape, dt_of(labels)), axis=-1)
    onehot = b.mask(b.op("flow.equal", [classes, b.reshape(labels, rows + (1,))]), logits)
    reduction = op.attr_values()["reduction"]
    if reduction == "none":
        row_g = b.reshape(g, rows + (1,))
    else:
        row_g = g if reduction == "sum" else b.scale(g, 1.0 / max(1, math.prod(rows)))
    return [b.mul(b.sub(p, onehot), row_g), None]


@vjp("greater", "equal")
def _no_gradient(b, op, g, want):
    return [None] * len(op.operands)


# ----------------------------------------------------------------------------------------------- the transform
def trainable_args(func: FuncOp) -> list[int]:
    """The indices of the arguments marked `trainable = true`."""
    if func.arg_attrs is None:
        return []
    out = []
    for i, d in enumerate(func.arg_attrs.data):
        attr = d.data.get(TRAINABLE) if isinstance(d, DictionaryAttr) else None
        if attr is not None and bool(attr.value.data):  # type: ignore[attr-defined]
            out.append(i)
    return out


def differentiate(func: FuncOp) -> None:
    """Append to `func` the gradient of its first result (the loss) with respect to each trainable argument."""
    block = func.body.blocks.first
    assert block is not None
    ret = block.last_op
    assert isinstance(ret, ReturnOp)
    where = loc_of(func.location)
    params = [block.args[i] for i in trainable_args(func)]
    if not params:
        return
    if not ret.operands:
        raise FirError(f"@{func.sym_name.data} has trainable arguments but no result: autodiff differentiates "
                       "its first result, the loss", where)
    loss = ret.operands[0]
    if shape_of(loss) != () or not differentiable(loss):
        raise FirError(f"@{func.sym_name.data}: autodiff differentiates the first result, the loss, which must be "
                       f"a rank-0 float tensor, not {loss.type}", loc_of(ret.location))
    for p in params:
        if not differentiable(p):
            raise FirError(f"@{func.sym_name.data}: trainable argument %{p.name_hint or p.index} is {p.type}; only "
                           "float arguments have gradients", where)
    # The values a trainable argument reaches (forward), and those that reach the loss (backward).
    ops = [op for op in block.ops if op is not ret]
    if any(isinstance(op, FusedOp) for op in ops):
        raise FirError(f"@{func.sym_name.data} holds flow.fused groups: run autodiff before fuse", where)
    reached: set[SSAValue] = set(params)
    for op in ops:
        if any(v in reached for v in op.operands):
            reached.update(r for r in op.results if differentiable(r))
    b = Builder(ret)
    cot: dict[SSAValue, SSAValue] = {loss: b.fill(1.0, (), dt_of(loss))}
    if loss in reached:
        cot[loss].name_hint = f"{loss.name_hint or 'loss'}.grad"
    for op in reversed(ops):
        if not op.results or op.results[0] not in cot:
            continue
        want = [v in reached for v in op.operands]
        if not any(want):
            continue
        rule = VJPS.get(op.name)
        if rule is None:
            raise FirError(f"autodiff: '{op.name}' has no gradient rule, and the loss depends through it on a "
                           "trainable argument", loc_of(op.location))
        g = cot[op.results[0]]
        if g.name_hint is None and op.results[0].name_hint:  # its users are done: g is the whole cotangent
            g.name_hint = f"{op.results[0].name_hint}.grad"
        b.mesh = op.attributes.get(MESH)
        grads = rule(b, op, g, want)
        b.mesh = None
        for v, w, d in zip(op.operands, want, grads):
            if not w or d is None:
                continue
            if d.type != v.type:  # a rule's bug, not the user's: say which
                raise FirError(f"autodiff: the gradient rule of '{op.name}' gave {d.type} for an operand of type "
                               f"{v.type}", loc_of(op.location))
            cot[v] = b.add(cot[v], d) if v in cot else d
    grads = []
    for p in params:
        d = cot.get(p)
        if d is None:  # the loss does not depend on it
            d = b.fill(0.0, shape_of(p), dt_of(p))
        if d.owner is not ret and isinstance(d.owner, Operation) and d is not p:
            d.name_hint = f"{p.name_hint or 'arg' + str(p.index)}.grad"
        grads.append(d)
    new_ret = ReturnOp(*ret.operands, *grads)
    block.insert_op_before(new_ret, ret)
    block.erase_op(ret)
    outputs = [*func.function_type.outputs.data, *(g.type for g in grads)]
    func.function_type = FunctionType.from_lists(list(func.function_type.inputs.data), outputs)
    if func.res_attrs is not None:
        func.res_attrs = ArrayAttr([*func.res_attrs.data, *(DictionaryAttr({}) for _ in grads)])


def differentiate_module(module: ModuleOp) -> None:
    """Differentiate every function of the module that has trainable arguments."""
    for op in module.ops:
        if isinstance(op, FuncOp):
            differentiate(op)


__all__ = ["VJPS", "Builder", "differentiate", "differentiate_module", "trainable_args"]

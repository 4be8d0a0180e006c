"""The `flow` dialect: logical tensor ops of a fir program.

Every op is pure and works on ranked, statically shaped tensors. Each op class declares its .fir attributes
(`FIR_ATTRS`), and one `infer` rule that both the .fir frontend (to fill in omitted result types) and the
verifier (to check the IR after any pass) use, so the two never disagree.
"""

from __future__ import annotations

import math

from collections.abc import Sequence
from typing import Any, ClassVar

from xdsl.dialects.builtin import DenseIntOrFPElementsAttr, Float64Type, IntegerType, TensorType, i64
from xdsl.ir import Attribute, Dialect, Operation
from xdsl.irdl import (
    IRDLOperation,
    irdl_op_definition,
    operand_def,
    prop_def,
    region_def,
    result_def,
    traits_def,
    var_operand_def,
)
from xdsl.dialects.builtin import I64, BoolAttr, DenseArrayBase, FloatAttr, IntegerAttr, StringAttr
from xdsl.traits import HasCanonicalizationPatternsTrait, HasParent, IsolatedFromAbove, IsTerminator, Pure
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern
from xdsl.utils.exceptions import VerifyException

from fir.dialects import dtypes
from fir.dialects import shape_inference as si
from fir.dialects.plan import INSTR_ATTRS
from fir.dialects.attr_schema import (
    AttrError,
    AttrSpec,
    BoolSpec,
    FloatSpec,
    IntListSpec,
    IntSpec,
    StrSpec,
    format_literal,
)
from fir.dialects.shape_inference import ShapeError
from fir.dialects import sbp as sbp_dialect
from fir.dialects.base import TT, FirOp, fmt_tt, to_tt
from fir.distribution.sbp import Split

FLOATS = ("f32", "f16", "bf16", "f64")
NUMERIC = ("f32", "f16", "bf16", "f64", "i32", "i64")
INTS = ("i32", "i64")


def _check_int_range(v: int, dt: str) -> None:
    lo, hi = {"i1": (0, 1), "i32": (-(2**31), 2**31 - 1), "i64": (-(2**63), 2**63 - 1)}[dt]
    if not lo <= v <= hi:
        raise ShapeError(f"value {v} does not fit in {dt} (range {lo} to {hi})")


def _check_dtype(op: str, what: str, dt: str, allowed: Sequence[str]) -> None:
    if dt not in allowed:
        raise ShapeError(f"{op} does not accept {what} of dtype {dt} (allowed: {', '.join(allowed)})")


class FlowOp(FirOp):
    """Base of the flow ops; besides their own attributes they may carry placement and SBP annotations."""

    DISCARDABLE: ClassVar[frozenset[str]] = frozenset(sbp_dialect.OP_ATTRS) | frozenset(INSTR_ATTRS)

    def verify_(self) -> None:
        super().verify_()
        if self.attributes:
            check_distribution_attrs(self.attributes, [to_tt(o.type)[0] for o in self.operands],
                                     to_tt(self.results[0].type)[0])


def check_distribution_attrs(attrs: dict[str, Attribute], operand_shapes: list, result_shape) -> None:
    """Check an op's placement/SBP annotations against its operands and result; raise VerifyException."""
    values = {n: sbp_dialect.OP_ATTRS[n].to_python(a) for n, a in attrs.items() if n in sbp_dialect.OP_ATTRS}
    nds = []
    if sbp_dialect.SBP in values:
        nds.append(("the result", values[sbp_dialect.SBP], result_shape))
    if sbp_dialect.SBP_IN in values:
        ins = values[sbp_dialect.SBP_IN]
        if len(ins) != len(operand_shapes):
            raise VerifyException(f"sbp_in has {len(ins)} entries but the op has {len(operand_shapes)} operand(s)")
        nds += [(f"operand {i}", nd, shape) for i, (nd, shape) in enumerate(zip(ins, operand_shapes))]
    for what, nd, shape in nds:
        for s in nd:
            if isinstance(s, Split) and s.axis >= len(shape):
                raise VerifyException(f"sbp of {what} splits axis {s.axis}, but it has rank {len(shape)}")
        if len(nd) != len(nds[0][1]):
            raise VerifyException(f"sbp of {what} has {len(nd)} entries but sbp of {nds[0][0]} has {len(nds[0][1])}")


# ----------------------------------------------------------------------------------------------- canonicalization
class _FlowCanonicalization(HasCanonicalizationPatternsTrait):
    """Looks up the op's canonicalization patterns (`_PATTERNS`, at the end of this file: they name the op classes)."""

    @classmethod
    def get_canonicalization_patterns(cls):  # pragma: no cover - the trait API wants it; get_patterns is used
        return ()

    def get_patterns(self, op: type[IRDLOperation]):
        return _PATTERNS.get(op, ())


_TRAITS = traits_def(Pure(), _FlowCanonicalization())

# Property constraints: exactly the storage the attribute schema writes (i64 ints, i1 bools, f64 floats).
INT_PROP = IntegerAttr[I64]
BOOL_PROP = BoolAttr
FLOAT_PROP = FloatAttr[Float64Type]
INT_LIST_PROP = DenseArrayBase.constr(i64)

# Classes made with type() declare their constants the way IRDL wants them: UPPER_CASE and ClassVar.
_CONST_ANNOTATIONS = {"ALLOWED": ClassVar[tuple[str, ...]], "FIR_ATTRS": ClassVar[dict[str, AttrSpec]]}


# ----------------------------------------------------------------------------------------------- elementwise unary
class UnaryOp(FlowOp):
    """Elementwise op with one operand; the result has the operand's shape and dtype."""

    input = operand_def(TensorType)
    result = result_def(TensorType)
    traits = _TRAITS
    ALLOWED: ClassVar[tuple[str, ...]] = FLOATS

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        _check_dtype(cls.name, "an operand", ins[0][1], cls.ALLOWED)
        return ins[0]


def _unary(op_name: str, summary: str, allowed: tuple[str, ...] = FLOATS, attrs: dict[str, AttrSpec] | None = None):
    cls = type(
        "".join(p.capitalize() for p in op_name.split("_")) + "Op",
        (UnaryOp,),
        {"name": f"flow.{op_name}", "ALLOWED": allowed, "FIR_ATTRS": attrs or {}, "__doc__": summary,
         "__module__": __name__, "__annotations__": _CONST_ANNOTATIONS},
    )
    if attrs:
        for n, spec in attrs.items():
            setattr(cls, n, prop_def(_prop_constraint(spec)))
    return irdl_op_definition(cls)


def _prop_constraint(spec: AttrSpec) -> Any:
    if isinstance(spec, IntSpec):
        return INT_PROP
    if isinstance(spec, IntListSpec):
        return INT_LIST_PROP
    if isinstance(spec, FloatSpec):
        return FLOAT_PROP
    if isinstance(spec, BoolSpec):
        return BOOL_PROP
    if isinstance(spec, StrSpec):
        return StringAttr
    raise TypeError(spec)


NegOp = _unary("neg", "-x", NUMERIC)
ExpOp = _unary("exp", "e^x")
LogOp = _unary("log", "natural logarithm")
SqrtOp = _unary("sqrt", "square root")
RsqrtOp = _unary("rsqrt", "1 / sqrt(x)")
TanhOp = _unary("tanh", "hyperbolic tangent")
ReluOp = _unary("relu", "max(x, 0)", NUMERIC)
SigmoidOp = _unary("sigmoid", "1 / (1 + e^-x)")
ErfOp = _unary("erf", "the error function")
GeluOp = _unary(
    "gelu",
    "x * Phi(x); approximate = \"tanh\" uses the tanh approximation",
    FLOATS,
    {"approximate": StrSpec(default="none", choices=("none", "tanh"))},
)


@irdl_op_definition
class CastOp(FlowOp):
    """Convert elements to the dtype of the result type (floats to ints truncate toward zero)."""

    name = "flow.cast"
    input = operand_def(TensorType)
    result = result_def(TensorType)
    traits = _TRAITS
    NEEDS_RESULT_TYPE: ClassVar[bool] = True

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        if declared is None:
            raise ShapeError("flow.cast needs a result type, e.g. `: tensor<4xbf16>`")
        if declared[0] != ins[0][0]:
            raise ShapeError(f"cast keeps the shape: operand is {fmt_tt(ins[0])} but the result is {fmt_tt(declared)}")
        return declared


# ----------------------------------------------------------------------------------------------- elementwise binary
class BinaryOp(FlowOp):
    """Elementwise op on two operands of one dtype with numpy broadcasting."""

    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)
    traits = _TRAITS
    ALLOWED: ClassVar[tuple[str, ...]] = NUMERIC

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        dt = si.check_same_dtype(cls.name, [ins[0][1], ins[1][1]])
        _check_dtype(cls.name, "operands", dt, cls.ALLOWED)
        return si.broadcast_shapes(ins[0][0], ins[1][0]), dt


def _binary(op_name: str, summary: str, allowed: tuple[str, ...] = NUMERIC):
    cls = type(
        op_name.capitalize() + "Op",
        (BinaryOp,),
        {"name": f"flow.{op_name}", "ALLOWED": allowed, "__doc__": summary, "__module__": __name__,
         "__annotations__": _CONST_ANNOTATIONS},
    )
    return irdl_op_definition(cls)


AddOp = _binary("add", "a + b")
SubOp = _binary("sub", "a - b")
MulOp = _binary("mul", "a * b")
DivOp = _binary("div", "a / b", FLOATS)
MaxOp = _binary("max", "elementwise maximum")
MinOp = _binary("min", "elementwise minimum")
PowOp = _binary("pow", "a ** b", FLOATS)


class CompareOp(BinaryOp):
    """Elementwise comparison of two operands of one dtype with numpy broadcasting; the result is i1."""

    ALLOWED: ClassVar[tuple[str, ...]] = (*NUMERIC, "i1")

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        shape, _ = super().infer(ins, attrs, declared)
        return shape, "i1"


def _compare(op_name: str, summary: str):
    cls = type(
        op_name.capitalize() + "Op",
        (CompareOp,),
        {"name": f"flow.{op_name}", "__doc__": summary, "__module__": __name__},
    )
    return irdl_op_definition(cls)


GreaterOp = _compare("greater", "a > b (false where either is NaN)")
EqualOp = _compare("equal", "a == b (false where either is NaN)")


# ----------------------------------------------------------------------------------------------- matmul
@irdl_op_definition
class MatmulOp(FlowOp):
    """(Batched) matrix product; batch dimensions broadcast like numpy.matmul."""

    name = "flow.matmul"
    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)
    transpose_a = prop_def(BOOL_PROP)
    transpose_b = prop_def(BOOL_PROP)
    traits = _TRAITS
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {
        "transpose_a": BoolSpec(default=False, doc="use the transpose of the last two axes of lhs"),
        "transpose_b": BoolSpec(default=False, doc="use the transpose of the last two axes of rhs"),
    }

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        dt = si.check_same_dtype(cls.name, [ins[0][1], ins[1][1]])
        _check_dtype(cls.name, "operands", dt, NUMERIC)
        return si.matmul_shape(ins[0][0], ins[1][0], attrs["transpose_a"], attrs["transpose_b"]), dt


# ----------------------------------------------------------------------------------------------- reductions
class ReduceOp(FlowOp):
    """Reduction over `axes`, dropping them unless keepdims."""

    input = operand_def(TensorType)
    result = result_def(TensorType)
    axes = prop_def(INT_LIST_PROP)
    keepdims = prop_def(BOOL_PROP)
    traits = _TRAITS
    ALLOWED: ClassVar[tuple[str, ...]] = NUMERIC
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {
        "axes": IntListSpec(doc="axes to reduce (negative counts from the end)"),
        "keepdims": BoolSpec(default=False, doc="keep reduced axes with size 1"),
    }

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        _check_dtype(cls.name, "an operand", ins[0][1], cls.ALLOWED)
        return si.reduce_shape(ins[0][0], attrs["axes"], attrs["keepdims"]), ins[0][1]


def _reduce(op_name: str, summary: str, allowed: tuple[str, ...] = NUMERIC):
    cls = type(
        "".join(p.capitalize() for p in op_name.split("_")) + "Op",
        (ReduceOp,),
        {"name": f"flow.{op_name}", "ALLOWED": allowed, "__doc__": summary, "__module__": __name__,
         "__annotations__": _CONST_ANNOTATIONS},
    )
    return irdl_op_definition(cls)


ReduceSumOp = _reduce("reduce_sum", "sum over axes")
ReduceMeanOp = _reduce("reduce_mean", "mean over axes", FLOATS)
ReduceMaxOp = _reduce("reduce_max", "maximum over axes")


# ----------------------------------------------------------------------------------------------- normalisation
@irdl_op_definition
class SoftmaxOp(FlowOp):
    """exp(x - max) / sum(exp(x - max)) along one axis."""

    name = "flow.softmax"
    input = operand_def(TensorType)
    result = result_def(TensorType)
    axis = prop_def(INT_PROP)
    traits = _TRAITS
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {"axis": IntSpec(default=-1, doc="the softmax axis")}

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        _check_dtype(cls.name, "an operand", ins[0][1], FLOATS)
        si.normalize_axis(attrs["axis"], len(ins[0][0]))
        return ins[0]


@irdl_op_definition
class LayerNormOp(FlowOp):
    """(x - mean) / sqrt(var + eps) * gamma + beta over the trailing `axes` (biased variance)."""

    name = "flow.layernorm"
    input = operand_def(TensorType)
    gamma = operand_def(TensorType)
    beta = operand_def(TensorType)
    result = result_def(TensorType)
    axes = prop_def(INT_LIST_PROP)
    eps = prop_def(FLOAT_PROP)
    traits = _TRAITS
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {
        "axes": IntListSpec(default=[-1], doc="the normalised (trailing) axes"),
        "eps": FloatSpec(default=1e-5, doc="added to the variance"),
    }

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        dt = si.check_same_dtype(cls.name, [t[1] for t in ins])
        _check_dtype(cls.name, "operands", dt, FLOATS)
        if attrs["eps"] < 0:
            raise ShapeError(f"eps must not be negative, got {attrs['eps']}")
        return si.layernorm_shapes(ins[0][0], ins[1][0], ins[2][0], attrs["axes"]), dt


# ----------------------------------------------------------------------------------------------- layout
@irdl_op_definition
class TransposeOp(FlowOp):
    """Permute axes: result.shape[i] = input.shape[perm[i]]."""

    name = "flow.transpose"
    input = operand_def(TensorType)
    result = result_def(TensorType)
    perm = prop_def(INT_LIST_PROP)
    traits = _TRAITS
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {"perm": IntListSpec(doc="result axis i is input axis perm[i]")}

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        return si.transpose_shape(ins[0][0], attrs["perm"]), ins[0][1]


def _declared_with_operand_dtype(op: str, ins: list[TT], declared: TT | None) -> TT:
    """The written result type of a shape-changing op, which must keep the operand's dtype."""
    if declared is None:
        raise ShapeError(f"{op} needs a result type, e.g. `: tensor<8x16xf32>`")
    if declared[1] != ins[0][1]:
        raise ShapeError(f"{op} keeps the dtype: operand is {ins[0][1]}, result is {declared[1]}")
    return declared


@irdl_op_definition
class ReshapeOp(FlowOp):
    """Same elements in row-major order, new shape (the result type)."""

    name = "flow.reshape"
    input = operand_def(TensorType)
    result = result_def(TensorType)
    traits = _TRAITS
    NEEDS_RESULT_TYPE: ClassVar[bool] = True

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        declared = _declared_with_operand_dtype(cls.name, ins, declared)
        si.check_reshape(ins[0][0], declared[0])
        return declared


@irdl_op_definition
class BroadcastToOp(FlowOp):
    """Broadcast to the result type's shape with numpy rules."""

    name = "flow.broadcast_to"
    input = operand_def(TensorType)
    result = result_def(TensorType)
    traits = _TRAITS
    NEEDS_RESULT_TYPE: ClassVar[bool] = True

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        declared = _declared_with_operand_dtype(cls.name, ins, declared)
        si.check_broadcast_to(ins[0][0], declared[0])
        return declared


@irdl_op_definition
class ConcatOp(FlowOp):
    """Concatenate operands along `axis`."""

    name = "flow.concat"
    inputs = var_operand_def(TensorType)
    result = result_def(TensorType)
    axis = prop_def(INT_PROP)
    traits = _TRAITS
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {"axis": IntSpec(doc="the axis to join along")}

    @classmethod
    def is_variadic(cls) -> bool:
        return True

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        if not ins:
            raise ShapeError("flow.concat needs at least one operand")
        dt = si.check_same_dtype(cls.name, [t[1] for t in ins])
        return si.concat_shape([t[0] for t in ins], attrs["axis"]), dt


@irdl_op_definition
class SliceOp(FlowOp):
    """input[start:limit:stride] on every axis."""

    name = "flow.slice"
    input = operand_def(TensorType)
    result = result_def(TensorType)
    start = prop_def(INT_LIST_PROP)
    limit = prop_def(INT_LIST_PROP)
    stride = prop_def(INT_LIST_PROP)
    traits = _TRAITS
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {
        "start": IntListSpec(doc="first index per axis"),
        "limit": IntListSpec(doc="one past the last index per axis"),
        "stride": IntListSpec(default=lambda ins: [1] * len(ins[0][0]) if ins else [], doc="step per axis (all 1)"),
    }

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        return si.slice_shape(ins[0][0], attrs["start"], attrs["limit"], attrs["stride"]), ins[0][1]


@irdl_op_definition
class GatherOp(FlowOp):
    """numpy.take(table, indices, axis): embedding lookup when axis = 0."""

    name = "flow.gather"
    table = operand_def(TensorType)
    indices = operand_def(TensorType)
    result = result_def(TensorType)
    axis = prop_def(INT_PROP)
    traits = _TRAITS
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {"axis": IntSpec(default=0, doc="the table axis the indices select along")}

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        _check_dtype(cls.name, "indices", ins[1][1], INTS)
        return si.gather_shape(ins[0][0], ins[1][0], attrs["axis"]), ins[0][1]


@irdl_op_definition
class ScatterAddOp(FlowOp):
    """The transpose of gather: a zero tensor of the result type with each update added at its index along
    `axis` (numpy.add.at; repeated indices accumulate). The gradient of an embedding lookup."""

    name = "flow.scatter_add"
    updates = operand_def(TensorType)
    indices = operand_def(TensorType)
    result = result_def(TensorType)
    axis = prop_def(INT_PROP)
    traits = _TRAITS
    NEEDS_RESULT_TYPE: ClassVar[bool] = True
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {"axis": IntSpec(default=0, doc="the result axis the indices select along")}

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        if declared is None:
            raise ShapeError("flow.scatter_add needs a result type (the shape of the table), e.g. `: tensor<100x8xf32>`")
        _check_dtype(cls.name, "indices", ins[1][1], INTS)
        _check_dtype(cls.name, "updates", ins[0][1], NUMERIC)
        if declared[1] != ins[0][1]:
            raise ShapeError(f"the result dtype {declared[1]} differs from the updates' {ins[0][1]}")
        want = si.gather_shape(declared[0], ins[1][0], attrs["axis"])
        if tuple(ins[0][0]) != want:
            raise ShapeError(f"updates of shape {si.fmt_shape(ins[0][0])} do not fit: gathering the result "
                             f"{si.fmt_shape(declared[0])} along axis {attrs['axis']} with indices "
                             f"{si.fmt_shape(ins[1][0])} gives {si.fmt_shape(want)}")
        return declared


# ----------------------------------------------------------------------------------------------- sources
class _DenseSpec(AttrSpec):
    """A constant's value: a scalar (splat) or nested lists matching the result shape."""

    def kind(self) -> str:
        return "a number or nested lists of numbers"

    def to_python(self, attr: Attribute) -> Any:
        assert isinstance(attr, DenseIntOrFPElementsAttr)
        et = attr.get_element_type()
        if not isinstance(et, (Float64Type, IntegerType)) or (isinstance(et, IntegerType) and et.width.data != 64):
            raise ShapeError(f"value must be stored as f64 (float results) or i64 (integer results), not {et}")
        import numpy as np

        vals = attr.get_values()
        return np.array(vals, dtype=np.float64 if isinstance(et, Float64Type) else np.int64).reshape(attr.get_shape())

    def format(self, value: Any) -> str:
        import numpy as np

        arr = np.asarray(value)
        # A splat needs identical elements, not just equal ones: -0.0 == 0.0.
        if arr.size > 0 and np.all(arr == arr.flat[0]) and np.all(np.signbit(arr) == np.signbit(arr.flat[0])):
            return format_literal(arr.flat[0].item())
        return format_literal(arr.tolist())


@irdl_op_definition
class ConstantOp(FlowOp):
    """A tensor literal: one number for every element, or nested lists giving each element."""

    name = "flow.constant"
    result = result_def(TensorType)
    value = prop_def(DenseIntOrFPElementsAttr)
    traits = _TRAITS
    NEEDS_RESULT_TYPE: ClassVar[bool] = True
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {"value": _DenseSpec(doc="a number (every element) or nested lists (each element)")}

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        if declared is None:
            raise ShapeError("flow.constant needs a result type, e.g. `: tensor<2x2xf32>`")
        value = attrs["value"]
        is_array = dtypes.is_numpy(value)
        if is_array and (value.dtype.name == "float64") != dtypes.is_float(declared[1]):
            want = "f64" if dtypes.is_float(declared[1]) else "i64"
            raise ShapeError(f"value must be stored as {want} elements for a {declared[1]} result")
        if is_array and value.shape != declared[0]:
            raise ShapeError(f"value has shape {si.fmt_shape(value.shape)} but the result type is {fmt_tt(declared)}")
        return declared

    @classmethod
    def attr_from_literal(cls, name: str, value: Any, declared: TT | None) -> Attribute:
        assert declared is not None
        return dense_value(value, declared)

    def attr_values(self) -> dict[str, Any]:
        return {"value": self.FIR_ATTRS["value"].to_python(self.value)}


def _nested_shape(value: Any) -> tuple[int, ...] | None:
    """Shape of a rectangular nested list of numbers, None if ragged or not numbers."""
    if isinstance(value, list):
        shapes = {_nested_shape(v) for v in value}
        if len(shapes) > 1 or None in shapes:
            return None
        inner = shapes.pop() if shapes else ()
        return (len(value),) + inner
    if isinstance(value, (bool, int, float)):
        return ()
    return None


def dense_value(value: Any, declared: TT) -> DenseIntOrFPElementsAttr:
    """Store a constant literal as a dense f64 (float dtypes) or i64 (int, i1) attribute of the result shape."""
    import numpy as np

    shape, dt = declared
    if isinstance(value, np.ndarray):
        value = value.tolist()
    nested = _nested_shape(value)
    if nested is None:
        raise AttrError("expects a number or rectangular nested lists of numbers")
    if nested not in ((), tuple(shape)):
        raise AttrError(f"has shape {si.fmt_shape(nested)} but the result type has shape {si.fmt_shape(shape)}")
    arr = np.broadcast_to(np.array(value, dtype=object), shape)
    n = si.numel(shape)
    if dtypes.is_float(dt):
        # -0.0 becomes 0.0: MLIR's printer folds elements that compare equal into a splat, which would drop
        # the sign on a round trip through the generic syntax.
        flat = [float(v) + 0.0 for v in arr.reshape(n)]
        if not all(np.isfinite(flat)):
            # MLIR prints non-finite dense elements in hex, which xDSL reads back as integers.
            raise AttrError("must hold finite numbers (make inf or nan with flow.fill)")
        return DenseIntOrFPElementsAttr.from_list(TensorType(Float64Type(), list(shape)), flat)
    if any(isinstance(v, float) for v in arr.reshape(n)):
        raise AttrError(f"holds a float but the result dtype {dt} is an integer type")
    ints = [int(v) for v in arr.reshape(n)]
    for v in ints:
        try:
            _check_int_range(v, dt)
        except ShapeError:
            raise AttrError(f"holds {v}, which does not fit in {dt}") from None
    return DenseIntOrFPElementsAttr.from_list(TensorType(i64, list(shape)), ints)


@irdl_op_definition
class FillOp(FlowOp):
    """Every element equal to `value`."""

    name = "flow.fill"
    result = result_def(TensorType)
    value = prop_def(FLOAT_PROP)
    traits = _TRAITS
    NEEDS_RESULT_TYPE: ClassVar[bool] = True
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {"value": FloatSpec(doc="the value of every element (inf, -inf and nan allowed)")}

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        if declared is None:
            raise ShapeError("flow.fill needs a result type, e.g. `: tensor<4x4xf32>`")
        v = attrs["value"]
        if not dtypes.is_float(declared[1]):
            if not (math.isfinite(v) and float(v).is_integer()):
                raise ShapeError(f"value {v} is not an integer, but the result dtype is {declared[1]}")
            _check_int_range(int(v), declared[1])
        return declared

    def format_attr(self, name: str) -> str | None:
        v = self.attr_values()["value"]
        dt = to_tt(self.result.type)[1]
        # Integer fills print as integers, so the text says what the tensor holds.
        return str(int(v)) if not dtypes.is_float(dt) else self.FIR_ATTRS[name].format(v)


@irdl_op_definition
class IotaOp(FlowOp):
    """Element at index (i0, i1, ...) is i_axis: a counter along one axis."""

    name = "flow.iota"
    result = result_def(TensorType)
    axis = prop_def(INT_PROP)
    traits = _TRAITS
    NEEDS_RESULT_TYPE: ClassVar[bool] = True
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {"axis": IntSpec(default=0, doc="the axis whose index is stored")}

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        if declared is None:
            raise ShapeError("flow.iota needs a result type, e.g. `: tensor<128xi32>`")
        _check_dtype(cls.name, "a result", declared[1], NUMERIC)
        si.normalize_axis(attrs["axis"], len(declared[0]))
        return declared


# ----------------------------------------------------------------------------------------------- loss
@irdl_op_definition
class CrossEntropyOp(FlowOp):
    """Softmax cross-entropy of logits (classes on the last axis) against integer labels."""

    name = "flow.cross_entropy"
    logits = operand_def(TensorType)
    labels = operand_def(TensorType)
    result = result_def(TensorType)
    reduction = prop_def(StringAttr)
    traits = _TRAITS
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {"reduction": StrSpec(default="mean", choices=("mean", "sum", "none"), doc="how losses combine")}

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        _check_dtype(cls.name, "logits", ins[0][1], FLOATS)
        _check_dtype(cls.name, "labels", ins[1][1], INTS)
        return si.cross_entropy_shape(ins[0][0], ins[1][0], attrs["reduction"]), ins[0][1]


# ----------------------------------------------------------------------------------------------- fusion
@irdl_op_definition
class FusedOp(FlowOp):
    """A group of elementwise ops that runs as one kernel (made by the fuse pass): the body's block arguments
    are the operands, in order; its flow.yield gives the result. The body is isolated from above."""

    name = "flow.fused"
    inputs = var_operand_def(TensorType)
    result = result_def(TensorType)
    body = region_def("single_block")
    traits = traits_def(Pure(), IsolatedFromAbove())
    NEEDS_RESULT_TYPE: ClassVar[bool] = True

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        if declared is None:
            raise ShapeError("flow.fused needs a result type (its flow.yield's)")
        return declared

    @classmethod
    def is_variadic(cls) -> bool:
        return True

    def verify_(self) -> None:
        super().verify_()
        block = self.body.block
        if len(block.args) != len(self.inputs):
            raise VerifyException(f"the body has {len(block.args)} argument(s) but the op has "
                                  f"{len(self.inputs)} operand(s)")
        for i, (a, v) in enumerate(zip(block.args, self.inputs)):
            if a.type != v.type:
                raise VerifyException(f"body argument {i} has type {dtypes.format_type(a.type)} but operand {i} "
                                      f"has {dtypes.format_type(v.type)}")
        last = block.last_op
        if not isinstance(last, YieldOp):
            raise VerifyException("the body must end with flow.yield")
        if last.operands[0].type != self.results[0].type:
            raise VerifyException(f"flow.yield gives {dtypes.format_type(last.operands[0].type)} but the result "
                                  f"is {dtypes.format_type(self.results[0].type)}")
        for op in block.ops:
            if op is last:
                continue
            if not isinstance(op, FUSIBLE_OPS):
                raise VerifyException(f"'{op.name}' cannot be fused (a fused body holds elementwise, broadcast_to "
                                      "and fill ops)")
            if op.attributes:
                raise VerifyException(f"'{op.name}' in a fused body carries attribute '{next(iter(op.attributes))}' "
                                      "(placement, SBP and plan attributes belong on flow.fused)")
            try:
                si.check_broadcast_to(to_tt(op.results[0].type)[0], to_tt(self.results[0].type)[0])
            except ShapeError:
                raise VerifyException(f"'{op.name}' in a fused body has shape "
                                      f"{si.fmt_shape(to_tt(op.results[0].type)[0])}, which does not broadcast to "
                                      f"the result's") from None

    def body_ops(self) -> list[FlowOp]:
        """The body's ops without the flow.yield."""
        return [op for op in self.body.block.ops if not isinstance(op, YieldOp)]


@irdl_op_definition
class YieldOp(IRDLOperation):
    """The result of a flow.fused body."""

    name = "flow.yield"
    value = operand_def(TensorType)
    traits = traits_def(IsTerminator(), HasParent(FusedOp))


FLOW_OPS: list[type[FlowOp]] = [
    NegOp, ExpOp, LogOp, SqrtOp, RsqrtOp, TanhOp, ReluOp, SigmoidOp, ErfOp, GeluOp, CastOp,
    AddOp, SubOp, MulOp, DivOp, MaxOp, MinOp, PowOp, GreaterOp, EqualOp,
    MatmulOp,
    ReduceSumOp, ReduceMeanOp, ReduceMaxOp,
    SoftmaxOp, LayerNormOp,
    TransposeOp, ReshapeOp, BroadcastToOp, ConcatOp, SliceOp, GatherOp, ScatterAddOp,
    ConstantOp, FillOp, IotaOp,
    CrossEntropyOp,
]  # fmt: skip

# The logical ops above, plus the fuse pass's kernel groups.
Flow = Dialect("flow", [*FLOW_OPS, FusedOp, YieldOp], [])

OPS_BY_NAME: dict[str, type[FlowOp]] = {op.name: op for op in FLOW_OPS}

ELEMENTWISE_UNARY: tuple[type[FlowOp], ...] = (
    NegOp, ExpOp, LogOp, SqrtOp, RsqrtOp, TanhOp, ReluOp, SigmoidOp, ErfOp, GeluOp, CastOp)  # fmt: skip
ELEMENTWISE_BINARY: tuple[type[FlowOp], ...] = (AddOp, SubOp, MulOp, DivOp, MaxOp, MinOp, PowOp, GreaterOp,
                                                EqualOp)
# What a flow.fused body may hold: ops whose output element i reads operand elements at i's broadcast position.
FUSIBLE_OPS: tuple[type[FlowOp], ...] = (*ELEMENTWISE_UNARY, *ELEMENTWISE_BINARY, BroadcastToOp, FillOp)

__all__ = [op.__name__ for op in FLOW_OPS] + ["Flow", "FlowOp", "FusedOp", "YieldOp", "OPS_BY_NAME", "dense_value"]


# ------------------------------------------------------------------------------ canonicalization patterns
class _IdentityToInput(RewritePattern):
    """An op whose result type equals its input type and does nothing (reshape, broadcast_to, cast, full slice,
    identity transpose, single-operand concat) is replaced by its input."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        if not isinstance(op, (ReshapeOp, BroadcastToOp, CastOp, TransposeOp, SliceOp,
                               ConcatOp)):
            return
        if len(op.operands) != 1 or op.operands[0].type != op.results[0].type:
            return
        if isinstance(op, TransposeOp) and op.attr_values()["perm"] != sorted(op.attr_values()["perm"]):
            return
        if isinstance(op, SliceOp):
            a = op.attr_values()
            shape = op.operand_tts()[0][0]
            if any(s != 0 for s in a["start"]) or list(a["limit"]) != list(shape) or any(t != 1 for t in a["stride"]):
                return
        rewriter.replace(op, [], [op.operands[0]])


class _FoldTransposeChain(RewritePattern):
    """transpose(transpose(x, p), q) -> transpose(x, p[q])."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: TransposeOp, rewriter: PatternRewriter) -> None:
        inner = op.input.owner
        if not isinstance(inner, TransposeOp):
            return
        p = inner.attr_values()["perm"]
        q = op.attr_values()["perm"]
        new = TransposeOp.make([inner.input], perm=[p[i] for i in q])
        new.location = op.location
        rewriter.replace(op, new)


class _FoldReshapeChain(RewritePattern):
    """reshape(reshape(x)) -> reshape(x): only the final shape matters."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ReshapeOp, rewriter: PatternRewriter) -> None:
        inner = op.input.owner
        if not isinstance(inner, ReshapeOp):
            return
        new = ReshapeOp.make([inner.input], op.result.type)
        new.location = op.location
        rewriter.replace(op, new)


class _FoldDoubleNeg(RewritePattern):
    """neg(neg(x)) -> x."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: NegOp, rewriter: PatternRewriter) -> None:
        inner = op.input.owner
        if isinstance(inner, NegOp):
            rewriter.replace(op, [], [inner.input])


_IDENTITY = _IdentityToInput()
_PATTERNS: dict[type[Operation], tuple[RewritePattern, ...]] = {
    TransposeOp: (_IDENTITY, _FoldTransposeChain()),
    ReshapeOp: (_IDENTITY, _FoldReshapeChain()),
    NegOp: (_FoldDoubleNeg(),),
    BroadcastToOp: (_IDENTITY,),
    CastOp: (_IDENTITY,),
    SliceOp: (_IDENTITY,),
    ConcatOp: (_IDENTITY,),
}

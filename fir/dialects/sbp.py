"""The `sbp` dialect: device meshes and the SBP attributes that say how a tensor lives on a mesh.

* `sbp.mesh @name = [2, 4] {devices = [...]}` declares a mesh (devices default to 0..n-1); a mesh over some
  of the devices is a sub-mesh, e.g. a pipeline stage.
* `#sbp.S<axis>`, `#sbp.B`, `#sbp.P<sum|max>` are one mesh axis' SBP; an nd-SBP is an array of them.
* `%c = sbp.position {mesh = @m, axis = 0} : tensor<i32>` is the coordinate of the device running the program
  along one mesh axis: how an SPMD program (`spmd-partition`) computes what depends on its position.

Ops, arguments and results carry placement and SBP in their discardable attributes (names below); the
Python values they hold are fir.distribution.sbp's.
"""

from __future__ import annotations

from typing import Any, ClassVar

from xdsl.dialects.builtin import (
    I64,
    ArrayAttr,
    DenseArrayBase,
    IntAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    SymbolRefAttr,
    TensorType,
    i64,
)
from xdsl.ir import Attribute, Dialect, ParametrizedAttribute
from xdsl.irdl import IRDLOperation, irdl_attr_definition, irdl_op_definition, prop_def, result_def, traits_def
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.traits import SymbolOpInterface
from xdsl.utils.exceptions import VerifyException

from fir.dialects.attr_schema import AttrError, AttrSpec, IntSpec, SymbolRef, describe
from fir.dialects import dtypes
from fir.dialects.base import TT, FirOp
from fir.dialects.shape_inference import ShapeError
from fir.distribution.sbp import PARTIAL_OPS, Broadcast, Mesh, NdSbp, Partial, Sbp, SbpSyntaxError, Split, format_nd, nd_from_literal

# Discardable attribute names. On a flow op: `sbp` is its result's nd-SBP (a hint when the user writes it),
# `sbp_in` the nd-SBP its signature needs of each operand, `mesh` its placement, `sbp_cost` the boxing bytes
# its chosen signature costs. On arguments and results: `sbp` and `mesh`. On functions: `mesh`.
SBP = "sbp"
SBP_IN = "sbp_in"
MESH = "mesh"
SBP_COST = "sbp_cost"


@irdl_attr_definition
class SplitAttr(ParametrizedAttribute):
    """S(axis)."""

    name = "sbp.S"
    axis: IntAttr

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> list[Attribute]:
        parser.parse_punctuation("<")
        axis = parser.parse_integer(allow_negative=False, allow_boolean=False)
        parser.parse_punctuation(">")
        return [IntAttr(axis)]

    def print_parameters(self, printer: Printer) -> None:
        printer.print_string(f"<{self.axis.data}>")


@irdl_attr_definition
class BroadcastAttr(ParametrizedAttribute):
    """B."""

    name = "sbp.B"


@irdl_attr_definition
class PartialAttr(ParametrizedAttribute):
    """P (sum) or P(max)."""

    name = "sbp.P"
    op: StringAttr

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> list[Attribute]:
        parser.parse_punctuation("<")
        op = parser.parse_identifier()
        parser.parse_punctuation(">")
        return [StringAttr(op)]

    def print_parameters(self, printer: Printer) -> None:
        printer.print_string(f"<{self.op.data}>")

    def verify(self) -> None:
        if self.op.data not in PARTIAL_OPS:
            raise VerifyException(f"partial reduction must be sum or max, not {self.op.data}")


def sbp_to_attr(s: Sbp) -> Attribute:
    """The attribute of one SBP."""
    if isinstance(s, Split):
        return SplitAttr(IntAttr(s.axis))
    if isinstance(s, Broadcast):
        return BroadcastAttr()
    return PartialAttr(StringAttr(s.op))


def nd_to_attr(nd: NdSbp) -> ArrayAttr:
    """The array attribute of an nd-SBP."""
    return ArrayAttr([sbp_to_attr(s) for s in nd])


def nd_from_attr(attr: Attribute) -> NdSbp:
    """The nd-SBP an attribute holds; raise VerifyException when it is not one."""
    if not isinstance(attr, ArrayAttr) or not attr.data:
        raise VerifyException(f"expected a non-empty array of SBPs, got {attr}")
    out: list[Sbp] = []
    for a in attr.data:
        if isinstance(a, SplitAttr):
            out.append(Split(a.axis.data))
        elif isinstance(a, BroadcastAttr):
            out.append(Broadcast())
        elif isinstance(a, PartialAttr):
            out.append(Partial(a.op.data))
        else:
            raise VerifyException(f"expected an SBP (#sbp.S<i>, #sbp.B, #sbp.P<sum|max>), got {a}")
    return tuple(out)


class NdSbpSpec(AttrSpec):
    """An nd-SBP such as [S(0), B]."""

    def kind(self) -> str:
        return "an SBP list such as [S(0)] or [S(0), B]"

    def to_attr(self, value: Any) -> Attribute:
        if isinstance(value, tuple) and value and all(isinstance(s, (Split, Broadcast, Partial)) for s in value):
            return nd_to_attr(value)  # a Python nd-SBP, as passes and verifiers hold it
        try:
            return nd_to_attr(nd_from_literal(value))
        except SbpSyntaxError as e:
            raise AttrError(str(e)) from None

    def to_python(self, attr: Attribute) -> Any:
        return nd_from_attr(attr)

    def format(self, value: Any) -> str:
        return format_nd(value)


class SymbolSpec(AttrSpec):
    """A symbol such as @tp (stored as a SymbolRefAttr, held in Python as the bare name)."""

    def kind(self) -> str:
        return "a symbol such as @tp"

    def to_attr(self, value: Any) -> Attribute:
        if not isinstance(value, SymbolRef):
            raise AttrError(f"expects a symbol such as @tp, got {describe(value)}")
        return SymbolRefAttr(value.name)

    def to_python(self, attr: Attribute) -> Any:
        if not isinstance(attr, SymbolRefAttr) or attr.nested_references.data:
            raise VerifyException(f"expected a flat symbol reference, got {attr}")
        return SymbolRef(attr.root_reference.data)

    def format(self, value: Any) -> str:
        return f"@{value.name}"


class NdSbpListSpec(AttrSpec):
    """A list of nd-SBPs, one per operand, such as [[S(0)], [B]]."""

    def kind(self) -> str:
        return "a list with one SBP list per operand, such as [[S(0)], [B]]"

    def to_attr(self, value: Any) -> Attribute:
        if not isinstance(value, list):
            raise AttrError(f"expects {self.kind()}, got {describe(value)}")
        return ArrayAttr([NdSbpSpec().to_attr(v) for v in value])

    def to_python(self, attr: Attribute) -> Any:
        if not isinstance(attr, ArrayAttr):
            raise VerifyException(f"expected an array of SBP arrays, got {attr}")
        return [nd_from_attr(a) for a in attr.data]

    def format(self, value: Any) -> str:
        return "[" + ", ".join(format_nd(v) for v in value) + "]"


class IntValueSpec(AttrSpec):
    """A non-negative integer kept as a discardable attribute."""

    def kind(self) -> str:
        return "a non-negative integer"

    def to_attr(self, value: Any) -> Attribute:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise AttrError(f"expects a non-negative integer, got {describe(value)}")
        return IntegerAttr(value, i64)

    def to_python(self, attr: Attribute) -> Any:
        if not isinstance(attr, IntegerAttr):
            raise VerifyException(f"expected an integer, got {attr}")
        return attr.value.data


# The discardable attributes each kind of IR object accepts, and how each is written.
OP_ATTRS: dict[str, AttrSpec] = {SBP: NdSbpSpec(), SBP_IN: NdSbpListSpec(), MESH: SymbolSpec(), SBP_COST: IntValueSpec()}
VALUE_ATTRS: dict[str, AttrSpec] = {SBP: NdSbpSpec(), MESH: SymbolSpec()}


@irdl_op_definition
class MeshOp(IRDLOperation):
    """A named mesh of devices: its shape, and the device ids in row-major order."""

    name = "sbp.mesh"
    sym_name = prop_def(StringAttr)
    shape = prop_def(DenseArrayBase.constr(i64))
    devices = prop_def(DenseArrayBase.constr(i64))
    traits = traits_def(SymbolOpInterface())

    def verify_(self) -> None:
        shape = self.shape_values()
        devices = self.device_values()
        if not shape or len(shape) > 2:
            raise VerifyException(f"a mesh has 1 or 2 axes, got {len(shape)}")
        if any(d < 1 for d in shape):
            raise VerifyException(f"mesh axes must have at least one device, got {list(shape)}")
        n = 1
        for d in shape:
            n *= d
        if len(devices) != n:
            raise VerifyException(f"mesh of shape {list(shape)} needs {n} devices, got {len(devices)}")
        if any(d < 0 for d in devices):
            raise VerifyException("device ids must be non-negative")
        if len(set(devices)) != len(devices):
            raise VerifyException(f"device ids must be distinct, got {list(devices)}")

    def shape_values(self) -> tuple[int, ...]:
        """The mesh shape."""
        return tuple(int(x) for x in self.shape.get_values())

    def device_values(self) -> tuple[int, ...]:
        """The device ids."""
        return tuple(int(x) for x in self.devices.get_values())

    def mesh(self) -> Mesh:
        """The mesh as a fir.distribution.sbp.Mesh."""
        return Mesh(self.sym_name.data, self.shape_values(), self.device_values())

    @staticmethod
    def make(name: str, shape: tuple[int, ...], devices: tuple[int, ...]) -> MeshOp:
        """Build a mesh declaration."""
        return MeshOp.create(properties={
            "sym_name": StringAttr(name),
            "shape": DenseArrayBase.from_list(i64, shape),
            "devices": DenseArrayBase.from_list(i64, devices),
        })


@irdl_op_definition
class PositionOp(FirOp):
    """The running device's coordinate along one axis of a mesh (a rank-0 integer tensor)."""

    name = "sbp.position"
    result = result_def(TensorType)
    mesh = prop_def(SymbolRefAttr)
    axis = prop_def(IntegerAttr[I64])
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {
        "mesh": SymbolSpec(doc="the mesh"),
        "axis": IntSpec(doc="the mesh axis"),
    }
    NEEDS_RESULT_TYPE: ClassVar[bool] = True
    # In a plan: its micro-batch, stream and arena offset (plan.INSTR_ATTRS, named here: plan imports this file).
    DISCARDABLE: ClassVar[frozenset[str]] = frozenset({"micro", "stream", "offset"})

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        if declared is None or declared[0] != () or dtypes.is_float(declared[1]) or declared[1] == "i1":
            raise ShapeError("sbp.position yields a rank-0 integer tensor: write `: tensor<i32>` or `: tensor<i64>`")
        if attrs["axis"] < 0:
            raise ShapeError(f"axis must be a mesh axis (non-negative), got {attrs['axis']}")
        return declared


def meshes_of(module: ModuleOp) -> dict[str, Mesh]:
    """Every mesh the module declares, by name."""
    return {op.sym_name.data: op.mesh() for op in module.ops if isinstance(op, MeshOp)}


def value_attr(attrs: dict[str, Attribute] | None, name: str) -> Any:
    """A Python value from a dictionary of discardable attributes (None when absent)."""
    if not attrs or name not in attrs:
        return None
    return VALUE_ATTRS.get(name, OP_ATTRS.get(name)).to_python(attrs[name])


Sbp_ = Dialect("sbp", [MeshOp, PositionOp], [SplitAttr, BroadcastAttr, PartialAttr])

__all__ = [
    "SBP", "SBP_IN", "MESH", "SBP_COST", "SplitAttr", "BroadcastAttr", "PartialAttr", "MeshOp", "PositionOp", "Sbp_",
    "nd_to_attr", "nd_from_attr", "sbp_to_attr", "meshes_of", "value_attr", "OP_ATTRS", "VALUE_ATTRS",
    "NdSbpSpec", "SymbolSpec", "NdSbpListSpec",
]

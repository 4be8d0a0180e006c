"""The base of fir's ops: a typed attribute schema, one shape/dtype rule, and the verifier built on both.

Each op class declares its .fir attributes (`FIR_ATTRS`) and one `infer` rule that both the .fir frontend (to
fill in omitted result types) and the verifier (to check the IR after any pass) use, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from xdsl.dialects.builtin import TensorType
from xdsl.ir import Attribute, SSAValue
from xdsl.irdl import IRDLOperation
from xdsl.utils.exceptions import VerifyException

from fir.dialects import dtypes
from fir.dialects import shape_inference as si
from fir.dialects.attr_schema import AttrError, AttrSpec
from fir.dialects.shape_inference import ShapeError

# (shape, dtype name): the view of a tensor type that shape rules work on.
TT = tuple[tuple[int, ...], str]


def to_tt(t: Attribute) -> TT:
    """(shape, dtype) of a tensor type; raise ShapeError for anything else."""
    # Types are immutable and shared (fir.dialects.dtypes builds each once), and verification asks for the same
    # one thousands of times: remember the answer by identity (the entry keeps the type alive, so its id stays
    # its own).
    hit = _TT_BY_ID.get(id(t))
    if hit is not None and hit[0] is t:
        return hit[1]
    tt = _to_tt(t)
    if len(_TT_BY_ID) > 65536:
        _TT_BY_ID.clear()
    _TT_BY_ID[id(t)] = (t, tt)
    return tt


_TT_BY_ID: dict[int, tuple[Attribute, TT]] = {}


def _to_tt(t: Attribute) -> TT:
    if not isinstance(t, TensorType):
        raise ShapeError(f"expected a tensor type, got {t}")
    try:
        dt = dtypes.dtype_name(t.element_type)
    except KeyError:
        raise ShapeError(f"unsupported element type {t.element_type}; fir has {', '.join(dtypes.DTYPE_NAMES)}") from None
    shape = tuple(t.get_shape())
    if len(shape) > dtypes.MAX_RANK:
        raise ShapeError(f"tensor of rank {len(shape)}: fir accepts ranks up to {dtypes.MAX_RANK}")
    if any(d < 0 for d in shape):
        raise ShapeError("dynamic dimensions ('?') are not supported: fir shapes are static")
    if si.numel(shape) > dtypes.MAX_ELEMENTS:
        raise ShapeError(f"tensor of {si.fmt_shape(shape)} has more than {dtypes.MAX_ELEMENTS} elements")
    return shape, dt


def from_tt(tt: TT) -> TensorType:
    """Tensor type from (shape, dtype)."""
    return dtypes.tensor_type(tt[0], tt[1])


def fmt_tt(tt: TT) -> str:
    """A (shape, dtype) pair printed as a tensor type."""
    return dtypes.format_type(from_tt(tt))


class FirOp(IRDLOperation):
    """Base of fir's ops: attribute schema, shape/dtype inference and the verifier built on it."""

    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {}
    # Ops whose result type cannot be inferred (reshape, cast, constants) must be written with one.
    NEEDS_RESULT_TYPE: ClassVar[bool] = False
    # Attributes kept in the op's discardable dictionary (placement and SBP annotations), checked by subclasses.
    DISCARDABLE: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        """Result (shape, dtype) from operand types, attribute values and the declared type (if any)."""
        raise NotImplementedError

    @classmethod
    def default_attr(cls, name: str, ins: list[TT]) -> Any:
        """The default value of an optional attribute, which may depend on the operand types."""
        d = cls.FIR_ATTRS[name].default
        return d(ins) if callable(d) else d

    @classmethod
    def attr_from_literal(cls, name: str, value: Any, declared: TT | None) -> Attribute:
        """Convert a parsed literal for attribute `name`; raise AttrError if it does not fit."""
        return cls.FIR_ATTRS[name].to_attr(value)

    def attr_values(self) -> dict[str, Any]:
        """The op's attributes as Python values."""
        return {n: spec.to_python(self.properties[n]) for n, spec in self.FIR_ATTRS.items() if n in self.properties}

    def operand_tts(self) -> list[TT]:
        """(shape, dtype) of each operand."""
        return [to_tt(o.type) for o in self.operands]

    def _verify_attrs(self) -> None:
        missing = [n for n, spec in self.FIR_ATTRS.items() if spec.required and n not in self.properties]
        if missing:
            raise VerifyException(f"missing attribute '{missing[0]}'")
        extra = [n for n in self.properties if n not in self.FIR_ATTRS]
        extra += [n for n in self.attributes if n not in self.DISCARDABLE]
        if extra:
            known = ", ".join([*self.FIR_ATTRS, *sorted(self.DISCARDABLE)]) or "none"
            raise VerifyException(f"unknown attribute '{extra[0]}' (known: {known})")
        out = to_tt(self.results[0].type) if self.results else None
        for name, value in self.attr_values().items():
            try:  # the literal must be one the .fir syntax accepts (e.g. a string among its choices)
                self.attr_from_literal(name, value, out)
            except AttrError as e:
                raise VerifyException(f"attribute '{name}' {e}") from None

    def verify_(self) -> None:
        self._verify_attrs()
        out = to_tt(self.results[0].type)
        inferred = self.infer(self.operand_tts(), self.attr_values(), out)
        if inferred != out:
            raise ShapeError(f"result type {fmt_tt(out)} does not match the inferred type {fmt_tt(inferred)}")

    @classmethod
    def make(cls, operands: Sequence[SSAValue], result_type: Attribute | None = None, **attrs: Any) -> FirOp:
        """Build the op from operands and Python attribute values, inferring the result type if not given."""
        ins = [to_tt(o.type) for o in operands]
        values: dict[str, Any] = {}
        for name, spec in cls.FIR_ATTRS.items():
            if name in attrs:
                values[name] = attrs.pop(name)
            elif not spec.optional:
                values[name] = cls.default_attr(name, ins)
        if attrs:
            raise AttrError(f"unknown attribute '{next(iter(attrs))}' for {cls.name}")
        declared = to_tt(result_type) if result_type is not None else None
        out = cls.infer(ins, values, declared)
        props = {n: cls.attr_from_literal(n, v, out) for n, v in values.items()}
        return cls.build(operands=[list(operands)] if cls.is_variadic() else list(operands),
                         result_types=[from_tt(out)] if out is not None else [], properties=props)

    @classmethod
    def is_variadic(cls) -> bool:
        """True for ops with one variadic operand list (concat)."""
        return False

    def format_attr(self, name: str) -> str | None:
        """The .fir text of one attribute value, or None when it equals its default and is left out."""
        spec = self.FIR_ATTRS[name]
        if name not in self.properties:
            return None
        value = spec.to_python(self.properties[name])
        if not spec.required and not spec.optional and value == self.default_attr(name, self.operand_tts()):
            return None
        return spec.format(value)

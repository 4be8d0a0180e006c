"""Typed attribute declarations shared by the .fir parser, the .fir printer and the op verifiers.

An op lists its attributes as `name -> AttrSpec`. A spec turns a literal parsed from .fir text into an
xDSL attribute (with a clear error when it does not fit), turns the attribute back into a Python value
for verifiers and backends, and prints that value in .fir syntax.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

from xdsl.dialects.builtin import (
    BoolAttr,
    DenseArrayBase,
    Float64Type,
    FloatAttr,
    IntegerAttr,
    StringAttr,
    i64,
)
from xdsl.ir import Attribute


class AttrError(Exception):
    """A literal that does not fit the attribute it is given for."""


REQUIRED = object()
# The default of an attribute that may be absent (it then has no value at all).
OPTIONAL = object()


@dataclass(frozen=True)
class SymbolRef:
    """A literal `@name`."""

    name: str


@dataclass(frozen=True)
class Ident:
    """A bare identifier literal such as `B`."""

    name: str


@dataclass(frozen=True)
class Call:
    """A call-like literal such as `S(0)`."""

    name: str
    args: list




def format_float(v: float) -> str:
    """A float literal that reads back to exactly the same double."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    r = repr(float(v))
    return r if any(c in r for c in ".en") else r + ".0"


_SPECIAL = re.compile(r'[\\"\x00-\x1f\x7f-\x9f]')
_NAMED = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def quote(v: str, limit: int | None = None) -> str:
    """A string literal in .fir syntax: quotes and backslashes escaped, control characters as escapes (so that
    printed text reads back, and no raw control character reaches a terminal or generated source). With
    `limit`, for messages: at most that many characters of `v`, then an ellipsis."""
    if limit is not None and len(v) > limit:
        return quote(v[:limit]) + f"... ({len(v)} characters)"
    return '"' + _SPECIAL.sub(lambda m: _NAMED.get(m.group(), f"\\u{ord(m.group()):04x}"), v) + '"'


def format_literal(v: Any) -> str:
    """Print a Python literal (bool, int, float, str, nested list) in .fir syntax."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format_float(v)
    if isinstance(v, str):
        return quote(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_literal(x) for x in v) + "]"
    raise TypeError(f"no .fir literal for {v!r}")


def describe(v: Any) -> str:
    """A short description of a literal's kind, for error messages."""
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, SymbolRef):
        return f"the symbol @{v.name}"
    if isinstance(v, Ident):
        return f"the name {v.name}"
    if isinstance(v, Call):
        return f"{v.name}(...)"
    return type(v).__name__


# Attributes are immutable and verify themselves when built: programs repeat a few values, so share them.
@functools.lru_cache(maxsize=1024)
def _int_attr(v: int) -> Attribute:
    return IntegerAttr(v, i64)


@functools.lru_cache(maxsize=1024)
def _int_list_attr(v: tuple[int, ...]) -> Attribute:
    return DenseArrayBase.from_list(i64, v)


@functools.lru_cache(maxsize=1024)
def _float_attr(v: float) -> Attribute:
    return FloatAttr(v, Float64Type())


@functools.lru_cache(maxsize=2)
def _bool_attr(v: bool) -> Attribute:
    return BoolAttr.from_bool(v)


@dataclass(frozen=True)
class AttrSpec:
    """Base of the attribute kinds; `default` is REQUIRED when the attribute must be written, OPTIONAL when it
    may be absent."""

    default: Any = REQUIRED
    doc: str = ""

    @property
    def required(self) -> bool:
        """True when the attribute has no default."""
        return self.default is REQUIRED

    @property
    def optional(self) -> bool:
        """True when the attribute may be absent."""
        return self.default is OPTIONAL

    def to_attr(self, value: Any) -> Attribute:
        """Convert a parsed literal to an xDSL attribute; raise AttrError if it does not fit."""
        raise NotImplementedError

    def to_python(self, attr: Attribute) -> Any:
        """Convert an xDSL attribute back to the Python value."""
        raise NotImplementedError

    def format(self, value: Any) -> str:
        """Print the Python value in .fir syntax."""
        return format_literal(value)

    def kind(self) -> str:
        """What the attribute holds, in words."""
        raise NotImplementedError


@dataclass(frozen=True)
class IntSpec(AttrSpec):
    """A 64-bit integer."""

    def kind(self) -> str:
        return "an integer"

    def to_attr(self, value: Any) -> Attribute:
        if isinstance(value, bool) or not isinstance(value, int):
            raise AttrError(f"expects an integer, got {describe(value)}")
        if not -(2**63) <= value < 2**63:
            raise AttrError(f"must fit in 64 bits, but {value} does not")
        return _int_attr(value)

    def to_python(self, attr: Attribute) -> Any:
        assert isinstance(attr, IntegerAttr)
        return attr.value.data


@dataclass(frozen=True)
class IntListSpec(AttrSpec):
    """A list of 64-bit integers (stored as array<i64: ...>)."""

    def kind(self) -> str:
        return "a list of integers"

    def to_attr(self, value: Any) -> Attribute:
        if not isinstance(value, list) or any(isinstance(x, bool) or not isinstance(x, int) for x in value):
            raise AttrError(f"expects a list of integers such as [0, 1], got {describe(value)}")
        if any(not -(2**63) <= x < 2**63 for x in value):
            raise AttrError("must hold integers that fit in 64 bits")
        return _int_list_attr(tuple(value))

    def to_python(self, attr: Attribute) -> Any:
        assert isinstance(attr, DenseArrayBase)
        return [int(x) for x in attr.get_values()]


@dataclass(frozen=True)
class FloatSpec(AttrSpec):
    """A double-precision float (integers are accepted and widened)."""

    def kind(self) -> str:
        return "a float"

    def to_attr(self, value: Any) -> Attribute:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AttrError(f"expects a number, got {describe(value)}")
        if isinstance(value, int) and (abs(value) > 2**1023 or float(value) != value):
            raise AttrError(f"must be exactly representable as a 64-bit float, but {value} is not")
        return _float_attr(float(value))

    def to_python(self, attr: Attribute) -> Any:
        assert isinstance(attr, FloatAttr)
        return float(attr.value.data)


@dataclass(frozen=True)
class BoolSpec(AttrSpec):
    """true or false."""

    def kind(self) -> str:
        return "a boolean"

    def to_attr(self, value: Any) -> Attribute:
        if not isinstance(value, bool):
            raise AttrError(f"expects true or false, got {describe(value)}")
        return _bool_attr(value)

    def to_python(self, attr: Attribute) -> Any:
        assert isinstance(attr, IntegerAttr)
        return bool(attr.value.data)


@dataclass(frozen=True)
class StrSpec(AttrSpec):
    """A string, optionally one of a fixed set of choices."""

    choices: tuple[str, ...] = ()

    def kind(self) -> str:
        return "one of " + ", ".join(f'"{c}"' for c in self.choices) if self.choices else "a string"

    def to_attr(self, value: Any) -> Attribute:
        if not isinstance(value, str):
            raise AttrError(f"expects {self.kind()}, got {describe(value)}")
        if self.choices and value not in self.choices:
            raise AttrError(f"must be {self.kind()}, not {quote(value, 40)}")
        return StringAttr(value)

    def to_python(self, attr: Attribute) -> Any:
        assert isinstance(attr, StringAttr)
        return attr.data

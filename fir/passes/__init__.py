"""The pass registry of fir-opt: xDSL's generic passes that work on flow ops, and fir's own passes."""

from __future__ import annotations

from collections.abc import Callable

from xdsl.passes import ModulePass


def _cse() -> type[ModulePass]:
    from xdsl.transforms.common_subexpression_elimination import CommonSubexpressionElimination

    return CommonSubexpressionElimination


def _dce() -> type[ModulePass]:
    from xdsl.transforms.dead_code_elimination import DeadCodeElimination

    return DeadCodeElimination


def _canonicalize() -> type[ModulePass]:
    from xdsl.transforms.canonicalize import CanonicalizePass

    return CanonicalizePass


def available_passes() -> dict[str, Callable[[], type[ModulePass]]]:
    """Pass name -> factory of the pass class, as xDSLOptMain expects."""
    return {"canonicalize": _canonicalize, "cse": _cse, "dce": _dce}

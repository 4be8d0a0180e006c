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


def _sbp_infer() -> type[ModulePass]:
    from fir.passes.sbp_infer import SbpInferPass

    return SbpInferPass


def _insert_boxing() -> type[ModulePass]:
    from fir.passes.insert_boxing import InsertBoxingPass

    return InsertBoxingPass


def _partition() -> type[ModulePass]:
    from fir.passes.partition import PartitionPass

    return PartitionPass


# The passes that turn a logical program into device programs, in order (fir-run applies them).
DISTRIBUTION_PIPELINE = ("sbp-infer", "insert-boxing", "partition")


def available_passes() -> dict[str, Callable[[], type[ModulePass]]]:
    """Pass name -> factory of the pass class, as xDSLOptMain expects."""
    return {"canonicalize": _canonicalize, "cse": _cse, "dce": _dce, "sbp-infer": _sbp_infer,
            "insert-boxing": _insert_boxing, "partition": _partition}

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


def _microbatch() -> type[ModulePass]:
    from fir.passes.microbatch import MicrobatchPass

    return MicrobatchPass


def _fuse() -> type[ModulePass]:
    from fir.passes.fuse import FusePass

    return FusePass


def _schedule() -> type[ModulePass]:
    from fir.passes.schedule import SchedulePass

    return SchedulePass


def _plan_memory() -> type[ModulePass]:
    from fir.passes.plan_memory import PlanMemoryPass

    return PlanMemoryPass


def _cost_report() -> type[ModulePass]:
    from fir.passes.cost_report import CostReportPass

    return CostReportPass


# The passes that turn a logical program into device programs, in order (fir-run applies them).
DISTRIBUTION_PIPELINE = ("sbp-infer", "insert-boxing", "partition")
# The passes that turn device programs into execution plans, in order.
PLAN_PIPELINE = ("fuse", "schedule", "plan-memory")


def available_passes() -> dict[str, Callable[[], type[ModulePass]]]:
    """Pass name -> factory of the pass class, as xDSLOptMain expects."""
    return {"canonicalize": _canonicalize, "cse": _cse, "dce": _dce, "sbp-infer": _sbp_infer,
            "insert-boxing": _insert_boxing, "partition": _partition, "microbatch": _microbatch,
            "fuse": _fuse, "schedule": _schedule, "plan-memory": _plan_memory, "cost-report": _cost_report}

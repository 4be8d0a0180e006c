"""The pass registry of fir-opt: xDSL's generic passes that work on flow ops, and fir's own passes."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable

from xdsl.passes import ModulePass

from fir.syntax.diagnostics import FirError


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


def _spmd_partition() -> type[ModulePass]:
    from fir.passes.spmd_partition import SpmdPartitionPass

    return SpmdPartitionPass


def _expand_devices() -> type[ModulePass]:
    from fir.passes.expand_devices import ExpandDevicesPass

    return ExpandDevicesPass


def _autodiff() -> type[ModulePass]:
    from fir.passes.autodiff import AutodiffPass

    return AutodiffPass


def _train_step() -> type[ModulePass]:
    from fir.passes.train_step import TrainStepPass

    return TrainStepPass


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


# The passes that turn a logical program into per-device programs, in order.
DISTRIBUTION_PIPELINE = ("sbp-infer", "insert-boxing", "partition")
# The same into SPMD programs (one per class of devices): what fir-run compiles with.
SPMD_PIPELINE = ("sbp-infer", "insert-boxing", "spmd-partition")
# The passes that turn device programs (per-device or SPMD) into execution plans, in order.
PLAN_PIPELINE = ("fuse", "schedule", "plan-memory")
# fir-run's pipeline: SPMD programs planned once per class, which every device of the class runs.
RUN_PIPELINE = SPMD_PIPELINE + PLAN_PIPELINE


def available_passes() -> dict[str, Callable[[], type[ModulePass]]]:
    """Pass name -> factory of the pass class, as xDSLOptMain expects."""
    return {"canonicalize": _canonicalize, "cse": _cse, "dce": _dce, "sbp-infer": _sbp_infer,
            "insert-boxing": _insert_boxing, "partition": _partition, "spmd-partition": _spmd_partition,
            "expand-devices": _expand_devices, "microbatch": _microbatch, "autodiff": _autodiff,
            "train-step": _train_step,
            "fuse": _fuse, "schedule": _schedule, "plan-memory": _plan_memory, "cost-report": _cost_report}


def did_you_mean(word: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_pipeline(spec: str) -> list[ModulePass]:
    """The passes of a pipeline in fir-opt's `-p` syntax (`a,b{opt=value},c`); FirError for an unknown pass,
    an unknown option, a value of the wrong type or a missing option, in plain words."""
    from xdsl.utils.arg_spec import parse_pipeline as parse_specs
    from xdsl.utils.exceptions import ArgSpecParseError

    try:
        specs = list(parse_specs(spec))
    except ArgSpecParseError as e:  # derives from BaseException: catch it by name
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise FirError(f"bad pass pipeline '{spec}': {lines[-1].strip() if lines else e}") from None
    passes = available_passes()
    out = []
    for s in specs:
        if s.name not in passes:
            raise FirError(f"unknown pass '{s.name}'{did_you_mean(s.name, list(passes))}; the passes are "
                           f"{', '.join(sorted(passes))}")
        cls = passes[s.name]()
        out.append(cls(**_options(s.name, cls, s.parameters)))
    return out


def _options(name: str, cls: type[ModulePass], given: dict[str, tuple]) -> dict[str, object]:
    """Keyword arguments for a pass class from its parsed options, each checked against the field's type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    options: dict[str, object] = {}
    for key, values in given.items():
        key = key.replace("-", "_")
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise FirError(f"pass '{name}' has no option '{key}'{did_you_mean(key, list(fields))}; its options: "
                           f"{known}")
        want = hints[key]
        value = values[0] if len(values) == 1 else values
        if want is bool and values == ():
            value = True  # `pass{flag}` turns a flag on, as in MLIR
        elif want is bool and not isinstance(value, bool):
            raise FirError(f"option '{key}' of pass '{name}' is true or false, not {_shown(values)}")
        elif want is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise FirError(f"option '{key}' of pass '{name}' is a whole number, not {_shown(values)}")
        elif want is str and not isinstance(value, str):
            raise FirError(f"option '{key}' of pass '{name}' is a string (e.g. {key}=\"...\"), not {_shown(values)}")
        options[key] = value
    missing = [f for f, fld in fields.items() if f not in options and fld.default is dataclasses.MISSING
               and fld.default_factory is dataclasses.MISSING]
    if missing:
        raise FirError(f"pass '{name}' needs option {', '.join(repr(m) for m in missing)} "
                       f"(e.g. {name}{{{missing[0]}=...}})")
    return options


def _shown(values: tuple) -> str:
    """Option values as the user wrote them, near enough."""
    if values == ():
        return "nothing"
    return ",".join(str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, str) else str(v)
                    for v in values)

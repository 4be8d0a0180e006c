"""The whole compiler as one call: a logical module to execution plans (what fir-run executes)."""

from __future__ import annotations

import os

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from fir import progress
from fir.syntax.frontend import make_context, verify_module
from fir.passes import DISTRIBUTION_PIPELINE, RUN_PIPELINE, SPMD_PIPELINE, available_passes
from fir.distribution.placement import placed_functions


def plan_passes(microbatches: int = 1, order: str = "1f1b", expand: bool = False) -> list[ModulePass]:
    """The passes from a logical module to plans: microbatch (when asked), sbp-infer, insert-boxing,
    spmd-partition, fuse, schedule and plan-memory (one plan per class of devices), then with `expand`
    expand-devices (every device's plan)."""
    passes = available_passes()
    options = {"microbatch": {"count": microbatches}, "schedule": {"order": order}}
    names = (("microbatch",) if microbatches > 1 else ()) + RUN_PIPELINE + (("expand-devices",) if expand else ())
    return [passes[name]()(**options.get(name, {})) for name in names]


def distribute(module: ModuleOp, ctx: Context | None = None) -> ModuleOp:
    """A partitioned copy of a logical module: sbp-infer, insert-boxing and partition, verified after each."""
    ctx = ctx or make_context()
    out = module.clone()
    passes = available_passes()
    for name in DISTRIBUTION_PIPELINE:
        passes[name]()().apply(ctx, out)
        verify_module(out)
    return out


def verify_each_default() -> bool:
    """Whether compiles verify the IR after every pass when not told: FIR_VERIFY_EACH=1 (the tests set it)."""
    return os.environ.get("FIR_VERIFY_EACH", "") not in ("", "0")


def compile_plan(module: ModuleOp, microbatches: int = 1, order: str = "1f1b",
                 ctx: Context | None = None, verify_each: bool | None = None, expand: bool = False) -> ModuleOp:
    """A planned copy of a logical module (distribution passes only run when the module places something on a
    mesh): one SPMD plan per class of devices (what fir-run executes and simulates), verified once, or after
    every pass with `verify_each` (default: verify_each_default()): the verifier costs about as much as the
    passes. expand=True then writes every device's plan (expand-devices), after verifying the SPMD plans once (a
    device's plan is its class's verified plan with its own constants), so the cost follows the model, not the
    mesh."""
    ctx = ctx or make_context()
    out = module.clone()
    each = verify_each_default() if verify_each is None else verify_each
    passes = [p for p in plan_passes(microbatches, order, expand)
              if p.name not in SPMD_PIPELINE or placed_functions(out)[1]]
    verified = False
    with progress.task("compile", total=len(passes)) as step:
        for p in passes:
            step.note(p.name)
            if p.name == "expand-devices" and not each:
                verify_module(out)
                verified = True
            p.apply(ctx, out)
            if each:
                verify_module(out)
            step()
    if not each and not verified:
        verify_module(out)
    return out

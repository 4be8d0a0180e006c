"""plan-memory: an offset in one arena per device for every buffer of a plan (the work is in fir.planning.arena)."""

from __future__ import annotations

from dataclasses import dataclass
import sys
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import FuncOp
from xdsl.passes import ModulePass
from fir.dialects.plan import ARENA_SIZE
from fir.planning.plan_ir import is_plan
from fir.planning.arena import plan_function, verify_memory


@dataclass(frozen=True)
class PlanMemoryPass(ModulePass):
    """Place every device buffer of every plan function in its device's arena."""

    name = "plan-memory"
    # Print each plan's arena, lower bound, no-reuse total, winning ordering, in-place reuses and events to stderr.
    report: bool = False

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        funcs = [f for f in op.ops if isinstance(f, FuncOp)]
        if funcs and not any(is_plan(f) for f in funcs):
            # Not an error (a pipeline may run it on anything), but a silent no-op would puzzle: say why.
            print("plan-memory: note: no function is an execution plan yet, so nothing was placed; plans come from "
                  "the schedule pass (-p schedule,plan-memory)", file=sys.stderr)
        for func in funcs:
            if not is_plan(func):
                continue
            if ARENA_SIZE in func.attributes:
                verify_memory(func)
                continue
            rep = plan_function(func)
            if self.report:
                print(rep.text(), file=sys.stderr)

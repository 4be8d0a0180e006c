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
        for func in op.ops:
            if not isinstance(func, FuncOp) or not is_plan(func):
                continue
            if ARENA_SIZE in func.attributes:
                verify_memory(func)
                continue
            rep = plan_function(func)
            if self.report:
                print(rep.text(), file=sys.stderr)

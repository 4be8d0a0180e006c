"""microbatch: split a step into micro-batches for pipelining (the work is in fir.distribution.microbatching)."""

from __future__ import annotations

from dataclasses import dataclass
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import FuncOp
from xdsl.passes import ModulePass
from fir.syntax.diagnostics import FirError
from fir.distribution.placement import DEVICE
from fir.distribution.microbatching import microbatch_axes, microbatch_function


@dataclass(frozen=True)
class MicrobatchPass(ModulePass):
    """Split every function with a `microbatch` argument into `count` micro-batches."""

    name = "microbatch"
    # How many micro-batches (1 leaves every function as it is).
    count: int

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        if self.count < 1:
            raise FirError(f"microbatch: count must be at least 1, got {self.count}")
        if self.count == 1:
            return
        for func in list(op.ops):
            if isinstance(func, FuncOp) and DEVICE not in func.attributes and microbatch_axes(func):
                microbatch_function(func, self.count)

"""insert-boxing: make every layout change explicit as comm ops (the work is in fir.distribution.box_insertion)."""

from __future__ import annotations

from dataclasses import dataclass
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from fir.distribution.placement import placed_functions
from fir.distribution.box_insertion import box_function


@dataclass(frozen=True)
class InsertBoxingPass(ModulePass):
    """Make every layout change explicit as comm ops."""

    name = "insert-boxing"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        meshes, funcs = placed_functions(op)
        for func in funcs:
            box_function(func, meshes)

"""sbp-infer: give every value of a distributed function an SBP (the work is in fir.distribution.inference)."""

from __future__ import annotations

from dataclasses import dataclass
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from fir.distribution.placement import placed_functions
from fir.distribution.inference import infer_function


@dataclass(frozen=True)
class SbpInferPass(ModulePass):
    """Choose an SBP signature for every op of every distributed function."""

    name = "sbp-infer"
    # Print every op's candidate signatures and their costs to stderr.
    report: bool = False

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        meshes, funcs = placed_functions(op)
        for func in funcs:
            infer_function(func, meshes, self.report)

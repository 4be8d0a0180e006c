"""autodiff: the gradient of the loss with respect to every trainable argument (the work is in
fir.training.autodiff)."""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from fir.training.autodiff import differentiate_module


@dataclass(frozen=True)
class AutodiffPass(ModulePass):
    """Append to every function with `trainable` arguments the gradients of its first result, the loss."""

    name = "autodiff"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        differentiate_module(op)

"""train-step: a loss function becomes one training step of an optimizer (the work is in
fir.training.optimizers)."""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from fir.training.optimizers import Optimizer, make_train_steps


@dataclass(frozen=True)
class TrainStepPass(ModulePass):
    """Derive the gradients of every function with trainable arguments and update them with the optimizer."""

    name = "train-step"
    # "sgd" or "adamw", and their hyper-parameters (PyTorch's meanings and defaults).
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        make_train_steps(op, Optimizer(self.optimizer, self.lr, self.momentum, self.weight_decay, self.beta1,
                                       self.beta2, self.eps))

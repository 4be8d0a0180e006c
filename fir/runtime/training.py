"""A training loop over a compiled training step (the `train-step` pass's output): the plan runs once per step,
each result `X.next` fed back as argument `X`.

The arguments of a step are of two kinds: the **training state** (every argument X with a result named `X.next`:
parameters and optimizer state) and the **batch** (the others). The state starts from a safetensors file keyed by
argument name (`--state`), or else parameters (`trainable = true`) are random from the seed and optimizer state is
zero; the batch is the same every step (from `--inputs` or the seed), or step k takes batch k mod K of an .npz of
stacked batches (`--batches`: per batch argument an array of shape [K, ...]). The final state can be saved as
safetensors (`--save-state`). Nothing here is random beyond the seed: two runs give the same bits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from xdsl.dialects.func import FuncOp

from fir.dialects.base import to_tt
from fir.dialects.dtypes import dtype_of_numpy
from fir.dialects.train import TRAINABLE
from fir.runtime.compare import Comparison
from fir.runtime.inputs import arg_names, result_names
from fir.syntax.diagnostics import FirError, loc_of


@dataclass
class TrainRun:
    """What a training loop produced: the first result (the loss) of every step, the final training state, and
    with checking, every step's comparisons with the single-device reference."""

    losses: list[float]
    state: dict[str, np.ndarray]
    checks: list[dict[str, Comparison]] = field(default_factory=list)

    def mismatches(self) -> list[tuple[int, str]]:
        """(step, result) of every result that differed from the reference."""
        return [(k, n) for k, c in enumerate(self.checks) for n, x in c.items() if not x.ok]


def state_names(func: FuncOp) -> list[str]:
    """The training-state arguments of a step: those with a result named after them plus `.next`."""
    results = set(result_names(func))
    names = [n for n in arg_names(func) if f"{n}.next" in results]
    if not names:
        raise FirError(f"@{func.sym_name.data} is not a training step: no result is named after an argument plus "
                       "`.next` (make one with the train-step pass)", loc_of(func.location))
    return names


def safetensors_numpy(flag: str):
    """safetensors' numpy module, or a FirError saying how to install it (an optional extra)."""
    try:
        import safetensors.numpy
    except ImportError as e:
        raise FirError(f"{flag} needs the safetensors package ({e}): pip install 'fir[train]'") from None
    return safetensors.numpy


def load_state(path: str, func: FuncOp) -> dict[str, np.ndarray]:
    """Training state from a safetensors file, checked against the step's arguments."""
    load_file = safetensors_numpy("--state").load_file
    try:
        data = load_file(path)
    except FileNotFoundError:
        raise FirError(f"cannot read state '{path}': no such file") from None
    except Exception as e:  # safetensors raises its own error types for a malformed file
        raise FirError(f"cannot read state '{path}': not a valid safetensors file ({e})") from None
    names = state_names(func)
    types = _arg_types(func)
    for k, v in data.items():
        if k not in names:
            raise FirError(f"state '{path}' holds '{k}', which is not a training-state argument of "
                           f"@{func.sym_name.data} (those are {', '.join(names)})")
        if (tuple(v.shape), dtype_of_numpy(v.dtype)) != types[k]:
            raise FirError(f"state '{k}' in '{path}' is {v.shape} {v.dtype}, but the argument is "
                           f"{types[k][0]} {types[k][1]}")
    return data


def _arg_types(func: FuncOp) -> dict[str, tuple[tuple[int, ...], str]]:
    """(shape, dtype) of each argument, by name."""
    return dict(zip(arg_names(func), (to_tt(a.type) for a in func.body.blocks.first.args)))  # type: ignore


def state_writer(state: dict[str, np.ndarray]) -> Callable:
    """What writes the training state as safetensors."""
    save = safetensors_numpy("--save-state").save
    return lambda f: f.write(save({k: np.array(v, order="C") for k, v in state.items()}))  # keeps rank 0


def initial_inputs(func: FuncOp, inputs: dict[str, np.ndarray], state: dict[str, np.ndarray] | None
                   ) -> dict[str, np.ndarray]:
    """Step 0's arguments: the given state over the random (or given) inputs, optimizer state zero unless given."""
    out = dict(inputs)
    names = state_names(func)
    attrs = func.arg_attrs.data if func.arg_attrs is not None else [None] * len(out)
    for name, a in zip(arg_names(func), attrs):
        if name in names and not (a is not None and TRAINABLE in a.data) and name not in (state or {}):
            out[name] = np.zeros_like(out[name])
    out.update(state or {})
    return out


def stacked_batches(data: dict[str, np.ndarray], func: FuncOp, where: str) -> list[dict[str, np.ndarray]]:
    """The batches of an .npz of stacked batch arguments (each [K, ...]), one dict per batch."""
    names = state_names(func)
    types = _arg_types(func)
    counts = set()
    for k, v in data.items():
        if k not in types or k in names:
            raise FirError(f"{where} holds '{k}', which is not a batch argument of @{func.sym_name.data}")
        if tuple(v.shape[1:]) != types[k][0] or dtype_of_numpy(v.dtype) != types[k][1] or v.ndim < 1:
            raise FirError(f"'{k}' in {where} is {v.shape} {v.dtype}: stacked batches of the argument are "
                           f"[K, {', '.join(map(str, types[k][0]))}] {types[k][1]}")
        counts.add(v.shape[0])
    if len(counts) > 1 or 0 in counts:
        raise FirError(f"the arrays of {where} stack different numbers of batches ({sorted(counts)})")
    k = counts.pop() if counts else 0
    return [{n: v[i] for n, v in data.items()} for i in range(k)]


def train(step_fn: Callable[[dict[str, np.ndarray]], tuple[dict[str, np.ndarray], dict | None]],
          func: FuncOp, inputs: dict[str, np.ndarray], steps: int,
          batches: list[dict[str, np.ndarray]] | None = None,
          on_step: Callable[[int, float], None] | None = None) -> TrainRun:
    """Run `steps` steps: `step_fn(arguments)` gives (results, checks or None); results `X.next` become `X`."""
    names = state_names(func)
    loss_name = result_names(func)[0]
    current = dict(inputs)
    run = TrainRun([], {})
    for k in range(steps):
        if batches:
            current.update(batches[k % len(batches)])
        outputs, checks = step_fn(current)
        loss = outputs[loss_name]
        run.losses.append(float(np.asarray(loss, np.float64).reshape(-1)[0]) if loss.size else float("nan"))
        if checks is not None:
            run.checks.append(checks)
        for n in names:
            current[n] = outputs[f"{n}.next"]
        if on_step is not None:
            on_step(k, run.losses[-1])
    run.state = {n: current[n] for n in names}
    return run


__all__ = ["TrainRun", "safetensors_numpy", "state_names", "load_state", "state_writer", "initial_inputs", "stacked_batches", "train"]

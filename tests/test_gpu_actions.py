"""The lowering of plans to GPU actions (fir.runtime.gpu_actions), executed with numpy: every example's
results equal the reference whichever order the streams run in that the events allow, and a dropped event
shows as wrong numbers. The same actions run on a GPU in tests/test_cuda_backend.py."""

from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np
import pytest

from fir.compile import compile_plan
from fir.syntax.diagnostics import FirError
from fir.syntax.frontend import parse_source
from fir.runtime.gpu_actions import ORDERS, BoxCopy, GroupReduce, Wait, lower, run_actions
from fir.runtime.inputs import random_inputs
from fir.runtime.interpreter import find_function, run_function
from fir.runtime.plan_executor import device_inputs, logical_outputs

EXAMPLES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "examples", "*.fir")))


def setup(path: str, microbatches: int = 1):
    with open(path, encoding="utf-8") as f:
        module = parse_source(f.read(), os.path.basename(path))
    func = find_function(module, None)
    inputs = random_inputs(func, 0)
    planned = compile_plan(module, microbatches=microbatches)
    entry = func.sym_name.data
    plans, partitioned, args = device_inputs(planned, entry, inputs)
    lowered = lower(plans)

    def results(actions_lowered, order: str, seed: int = 0):
        return logical_outputs(planned, entry, plans, partitioned, run_actions(actions_lowered, args, order, seed))

    return run_function(module, func, inputs), lowered, results


def close(got, want) -> bool:
    return all(np.allclose(np.asarray(g, np.float64), np.asarray(w, np.float64), rtol=1e-3, atol=1e-4)
               for g, w in zip(got, want))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: os.path.basename(p))
def test_examples_run_from_the_actions_in_any_order(path: str):
    with open(path, encoding="utf-8") as f:
        micro = 2 if "microbatch" in f.read() else 1
    want, lowered, results = setup(path, micro)
    for order in ORDERS:
        assert close(results(lowered, order, 7), want), order


def test_collectives_become_copies_and_reductions():
    _, lowered, _ = setup(os.path.join(os.path.dirname(__file__), "..", "examples", "tp_mlp.fir"))
    kinds = {type(a).__name__ for a in lowered.actions}
    assert {"GroupReduce", "BoxCopy", "Record", "Wait", "LaunchOp", "HostToDevice", "DeviceToHost"} <= kinds
    # Every record comes before its waits in issue order (CUDA waits on nothing otherwise).
    recorded = set()
    for a in lowered.actions:
        if type(a).__name__ == "Record":
            recorded.add(a.event)
        elif isinstance(a, Wait):
            assert a.event in recorded
    for a in lowered.actions:
        if isinstance(a, (BoxCopy, GroupReduce)):
            assert a.kernel("k").name == "k"


def test_a_dropped_wait_gives_wrong_numbers():
    want, lowered, results = setup(os.path.join(os.path.dirname(__file__), "..", "examples", "dp_mlp.fir"))
    waits = [i for i, a in enumerate(lowered.actions) if isinstance(a, Wait)]
    assert waits
    for i in waits:
        mutant = dataclasses.replace(lowered, actions=lowered.actions[:i] + lowered.actions[i + 1:])
        try:
            assert not close(results(mutant, "latest"), want), f"dropping action {i} went unnoticed"
        except FirError:
            pass  # a deadlock is noticed too

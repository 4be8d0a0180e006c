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
from fir.dialects.sbp import meshes_of
from fir.runtime.gpu_actions import ORDERS, BoxCopy, GroupReduce, HostToDevice, LaunchOp, Wait, lower, run_actions
from fir.runtime.inputs import random_inputs
from fir.runtime.interpreter import find_function, run_function
from fir.runtime.plan_executor import device_inputs, logical_outputs

EXAMPLES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "examples", "*.fir")))
SPMD_POSITIONS = os.path.join(os.path.dirname(__file__), "data", "spmd_positions.fir")


def setup(path: str, microbatches: int = 1, spmd: bool = False):
    """The reference results, the lowered actions, and a function running actions to logical results; with `spmd`
    from the SPMD plans fir-run compiles (one per class of devices), else from every device's expanded plan."""
    with open(path, encoding="utf-8") as f:
        module = parse_source(f.read(), os.path.basename(path))
    func = find_function(module, None)
    inputs = random_inputs(func, 0)
    planned = compile_plan(module, microbatches=microbatches, expand=not spmd)
    entry = func.sym_name.data
    plans, partitioned, args = device_inputs(planned, entry, inputs)
    lowered = lower(plans, meshes_of(planned))

    def results(actions_lowered, order: str, seed: int = 0):
        return logical_outputs(planned, entry, plans, partitioned, run_actions(actions_lowered, args, order, seed))

    return run_function(module, func, inputs), lowered, results


def close(got, want) -> bool:
    return all(np.allclose(np.asarray(g, np.float64), np.asarray(w, np.float64), rtol=1e-3, atol=1e-4)
               for g, w in zip(got, want))


@pytest.mark.parametrize("spmd", [False, True], ids=["per-device", "spmd"])
@pytest.mark.parametrize("path", EXAMPLES + [SPMD_POSITIONS], ids=lambda p: os.path.basename(p))
def test_examples_run_from_the_actions_in_any_order(path: str, spmd: bool):
    with open(path, encoding="utf-8") as f:
        micro = 2 if "microbatch" in f.read() else 1
    want, lowered, results = setup(path, micro, spmd)
    for order in ORDERS:
        assert close(results(lowered, order, 7), want), order


def test_spmd_plans_share_their_code_and_launch_with_each_devices_values():
    # devices 1 and 2 run one SPMD plan: one DeviceCode, launches with their own coordinate and piece start
    _, lowered, _ = setup(SPMD_POSITIONS, spmd=True)
    assert lowered.codes[1] is lowered.codes[2] and lowered.codes[0] is not lowered.codes[1]
    values = {}
    for a in lowered.actions:
        if isinstance(a, LaunchOp) and a.values:
            values.setdefault(a.op.name, {})[a.stream[0]] = a.values
    # coordinates 0, 1, 2; rows 7 split 3, 2, 2 start at 0, 3, 5
    assert values == {"sbp.position": {0: (0,), 1: (1,), 2: (2,)}, "comm.slice": {0: (0,), 1: (3,), 2: (5,)}}
    boxes = {a.stream[0]: a.box for a in lowered.actions if isinstance(a, HostToDevice) and a.box is not None
             and a.dst.shape[1] == 4}
    assert boxes == {0: ((0, 3), (0, 4)), 1: ((3, 5), (0, 4)), 2: ((5, 7), (0, 4))}


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


@pytest.mark.parametrize("spmd", [False, True], ids=["per-device", "spmd"])
def test_a_dropped_wait_gives_wrong_numbers(spmd: bool):
    want, lowered, results = setup(os.path.join(os.path.dirname(__file__), "..", "examples", "dp_mlp.fir"), 1, spmd)
    waits = [i for i, a in enumerate(lowered.actions) if isinstance(a, Wait)]
    assert waits
    for i in waits:
        mutant = dataclasses.replace(lowered, actions=lowered.actions[:i] + lowered.actions[i + 1:])
        try:
            assert not close(results(mutant, "latest"), want), f"dropping action {i} went unnoticed"
        except FirError:
            pass  # a deadlock is noticed too

"""Benchmark: fir-run's numpy execution path on many virtual devices, SPMD plans run directly against every device's
expanded plan.

A small GPT-2-style model (bench/gpt_model.py: 2 layers, hidden 64, 4 heads, sequence 16, vocabulary 256) on a
[dp, 4] DP x TP mesh of 8 to 64 virtual devices, each configuration in a fresh process: compile to SPMD plans (as
fir-run does, verified once), then either run them (every device runs its class's plan with its own coordinates;
fir-run's path since issue 13) or first write every device's plan with expand-devices and run those (the path
before). Both runs use the in-order interleaving and must give bit-identical results (checked). Recorded: CPU
seconds of compiling, expanding and running, and the number of plan functions executed.

Usage: python bench/run_bench.py [--devices 8 16 32 64] [--out bench/results/run_bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from results_file import machine, write_result

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from gpt_model import gpt_program
from xdsl.dialects.func import FuncOp
from fir.compile import compile_plan
from fir.dialects.sbp import meshes_of
from fir.distribution.expansion import expand_module
from fir.runtime.inputs import random_inputs
from fir.runtime.interpreter import find_function
from fir.runtime.plan_executor import execute_plan
from fir.syntax.frontend import parse_source

devices, expand = int(sys.argv[2]), sys.argv[3] == "1"
dp = devices // 4
text = gpt_program(2, hidden=64, heads=4, seq=16, batch=dp, stages=1, tp=4, dp=dp, vocab=256)
out = {"devices": devices, "mesh": [dp, 4], "path": "expanded" if expand else "spmd", "cpu_s": {}}

def timed(name, fn):
    t0 = time.process_time()
    r = fn()
    out["cpu_s"][name] = round(time.process_time() - t0, 3)
    return r

module = parse_source(text, "gpt.fir")
func = find_function(module, None)
inputs = random_inputs(func, 0)
planned = timed("compile", lambda: compile_plan(module, verify_each=False))
if expand:
    timed("expand", lambda: expand_module(planned, meshes_of(planned)))
out["plans"] = sum(1 for f in planned.ops if isinstance(f, FuncOp))
run = timed("run", lambda: execute_plan(planned, func.sym_name.data, inputs, interleaving="in-order"))
out["total_cpu_s"] = round(sum(out["cpu_s"].values()), 3)
out["loss"] = float(run.outputs[0])
print(json.dumps(out))
"""


def run_one(devices: int, expand: bool) -> dict:
    """One configuration in a fresh process."""
    here = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run([sys.executable, "-c", CHILD, here, str(devices), str(int(expand))], capture_output=True,
                          text=True)
    if done.returncode != 0:
        return {"devices": devices, "expand": expand, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run both paths on every mesh and write the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "run_bench.json"))
    args = ap.parse_args()
    rows = []
    for devices in args.devices:
        pair = [run_one(devices, expand) for expand in (False, True)]
        if all("loss" in r for r in pair) and pair[0]["loss"] != pair[1]["loss"]:
            raise SystemExit(f"{devices} devices: the SPMD and expanded plans disagree: {pair}")
        for row in pair:
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_result(args.out, {
        "benchmark": "run",
        "note": "CPU seconds of fir-run's numpy path (in-order interleaving) in one fresh process per row: compile "
                "to SPMD plans, then run them directly (spmd) or expand every device's plan first (expanded)",
        "rows": rows,
        "machine": machine(),
    })


if __name__ == "__main__":
    main()

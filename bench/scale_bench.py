"""Benchmark: how compile time, IR size and compiler memory grow with the number of devices (issue 13's yardstick).

The GPT-2-style generator (bench/gpt_model.py) on meshes of growing size, in three layouts:
  - `dp`: 1-D data parallelism on one stage (`dp` = devices);
  - `dp_tp`: a 2-D mesh [devices / 4, 4] on one stage (Megatron over 4, the batch over the rest; GPT-2's
    12 heads split 4 ways);
  - `dp_tp_pp`: the same on 4 pipeline stages ([devices / 16, 4] each) with 4 micro-batches.
Each (layout, layers, devices) runs in a fresh Python process: parse, then the whole pipeline to plans as fir-run
compiles (`fir.compile.plan_passes`: spmd-partition, fuse, schedule and plan-memory on one program per class of
devices, the SPMD plans verified once, then expand-devices writes every device's plan), then the simulator on the
H100 preset grown to the device count. Recorded: CPU seconds of parsing, of every pass, of the verification and
of the simulation; `spmd_plans_cpu_s`, everything before expand-devices (what grows with the model, not the
mesh); the number of functions and top-level ops after spmd-partition, plan-memory and expand-devices; the
process's peak RSS (VmHWM). A configuration that exceeds --timeout is recorded as such and the larger ones of that series
are skipped. The batch is at least the data-parallel width (every device gets a sample).

Usage: python bench/scale_bench.py [--devices 8 64 256] [--layers 2 12] [--layouts dp dp_tp dp_tp_pp]
                                   [--timeout 600] [--out bench/results/scale_bench.json]
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
from gpt_model import gpt_program
from fir.compile import plan_passes
from fir.distribution.placement import placed_functions
from fir.passes import SPMD_PIPELINE
from fir.planning.simulator import simulate
from fir.syntax.frontend import make_context, parse_source, verify_module
from xdsl.dialects.func import FuncOp

layout, layers, devices = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tp = 1 if layout == "dp" else 4
stages = 4 if layout == "dp_tp_pp" else 1
dp = devices // (tp * stages)
micro = 4 if stages > 1 else 1
text = gpt_program(layers, stages=stages, tp=tp, dp=dp, batch=max(8, dp * micro), microbatch=micro > 1)
out = {"layout": layout, "layers": layers, "devices": devices, "mesh_per_stage": [dp, tp], "stages": stages,
       "microbatches": micro, "cpu_s": {}, "ops": {}}

def timed(name, fn):
    t0 = time.process_time()
    r = fn()
    out["cpu_s"][name] = round(time.process_time() - t0, 3)
    return r

def size(module, name):
    funcs = [f for f in module.ops if isinstance(f, FuncOp)]
    out["ops"][name] = {"functions": len(funcs), "top_level_ops": sum(len(list(f.body.ops)) for f in funcs)}

module = timed("parse+verify", lambda: parse_source(text, "gpt.fir"))
ctx = make_context()
for p in plan_passes(micro, "1f1b"):
    if p.name in SPMD_PIPELINE and not placed_functions(module)[1]:
        continue
    if p.name == "expand-devices":  # as compile_plan: the SPMD plans are verified, then expanded
        timed("verify", lambda: verify_module(module))
        out["spmd_plans_cpu_s"] = round(sum(out["cpu_s"].values()), 3)
    timed(p.name, lambda: p.apply(ctx, module))
    if p.name in ("spmd-partition", "plan-memory", "expand-devices"):
        size(module, p.name)
res = timed("simulate", lambda: simulate(module, "gpt", "h100-ib"))
out["compile_cpu_s"] = round(sum(v for k, v in out["cpu_s"].items() if k != "simulate"), 3)
out["simulated_step_ms"] = round(res.step_time * 1e3, 3)
out["hardware"] = res.hardware
out["peak_rss_mib"] = round(next(int(l.split()[1]) for l in open("/proc/self/status")
                                 if l.startswith("VmHWM:")) / 1024, 1)
print(json.dumps(out))
"""


def run_one(layout: str, layers: int, devices: int, timeout: float) -> dict:
    """One configuration in a fresh process."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, here, layout, str(layers), str(devices)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"layout": layout, "layers": layers, "devices": devices, "timeout_s": timeout}
    if done.returncode != 0:
        return {"layout": layout, "layers": layers, "devices": devices,
                "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run the grid and write the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, nargs="+", default=[8, 64, 256])
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 12])
    ap.add_argument("--layouts", nargs="+", default=["dp", "dp_tp", "dp_tp_pp"],
                    choices=["dp", "dp_tp", "dp_tp_pp"])
    ap.add_argument("--timeout", type=float, default=600, help="seconds per configuration")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "scale_bench.json"))
    args = ap.parse_args()
    rows = []
    for layout in args.layouts:
        for layers in args.layers:
            for devices in sorted(args.devices):
                need = {"dp": 1, "dp_tp": 4, "dp_tp_pp": 16}[layout]
                if devices % need or layers < (4 if layout == "dp_tp_pp" else 1):
                    continue
                row = run_one(layout, layers, devices, args.timeout)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if "timeout_s" in row or "error" in row:
                    break  # larger meshes of this series would take longer still
    result = {
        "benchmark": "scale",
        "note": "CPU seconds per stage of one fresh process per row; compile_cpu_s sums parsing, the passes and "
                "the verification of the SPMD plans (fir-run's default: verify once); spmd_plans_cpu_s is all of "
                "it before expand-devices",
        "rows": rows,
        "machine": machine(),
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()

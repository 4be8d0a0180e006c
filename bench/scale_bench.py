"""Benchmark: how compile time, IR size and compiler memory grow with the number of devices (issue 13's yardstick).

The GPT-2-style generator (bench/gpt_model.py) on meshes of growing size, in four layouts:
  - `dp`: 1-D data parallelism on one stage (`dp` = devices);
  - `dp_tp`: a 2-D mesh [devices / 4, 4] on one stage (Megatron over 4, the batch over the rest; GPT-2's
    12 heads split 4 ways);
  - `dp_tp_pp`: the same on 4 pipeline stages ([devices / 16, 4] each) with 4 micro-batches;
  - `gpt3`: GPT-3 shapes (hidden 12288, 96 heads, sequence 2048) on 16 stages of [devices / 128, 8] with 4
    micro-batches (8-way TP x 16 stages x 8-way DP on 1,024 devices).
Each (layout, layers, devices) runs in a fresh Python process: parse, then the pipeline to plans as fir-run
compiles (`fir.compile.plan_passes`: spmd-partition, fuse, schedule and plan-memory on one program per class of
devices, the SPMD plans verified once), then the simulator replaying each class once on the H100 preset grown to
the device count (what `fir-run --simulate` does). Recorded: CPU seconds of parsing, of every pass, of the
verification and of the simulation; `compile_cpu_s` (everything but the simulation) and
`compile_simulate_cpu_s`; the number of functions and top-level ops after spmd-partition and plan-memory; the
process's peak RSS (VmHWM). With --expand, expand-devices (every device's plan, which executing needs: O(devices))
is timed too. A configuration that exceeds --timeout is recorded as such and the larger ones of that series are
skipped. The batch is at least the data-parallel width times the micro-batches (every device gets a sample).

Usage: python bench/scale_bench.py [--devices 8 64 256 1024 4096] [--layers 12 48 96]
                                   [--layouts dp dp_tp dp_tp_pp gpt3] [--expand] [--timeout 600]
                                   [--out bench/results/scale_bench.json]
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

layout, layers, devices, expand = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
tp = {"dp": 1, "gpt3": 8}.get(layout, 4)
stages = {"dp_tp_pp": 4, "gpt3": 16}.get(layout, 1)
dp = devices // (tp * stages)
micro = 4 if stages > 1 else 1
shape = dict(hidden=12288, heads=96, seq=2048) if layout == "gpt3" else {}
text = gpt_program(layers, stages=stages, tp=tp, dp=dp, batch=max(8, dp * micro), microbatch=micro > 1, **shape)
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
expander = None
for p in plan_passes(micro, "1f1b", expand=True):
    if p.name in SPMD_PIPELINE and not placed_functions(module)[1]:
        continue
    if p.name == "expand-devices":  # as compile_plan: the SPMD plans are verified, then expanded
        expander = p
        continue
    timed(p.name, lambda: p.apply(ctx, module))
    if p.name in ("spmd-partition", "plan-memory"):
        size(module, p.name)
timed("verify", lambda: verify_module(module))
out["compile_cpu_s"] = round(sum(out["cpu_s"].values()), 3)
res = timed("simulate", lambda: simulate(module, "gpt", "h100-ib"))
out["compile_simulate_cpu_s"] = round(out["compile_cpu_s"] + out["cpu_s"]["simulate"], 3)
if expand and expander is not None:
    timed("expand-devices", lambda: expander.apply(ctx, module))
    size(module, "expand-devices")
out["simulated_step_ms"] = round(res.step_time * 1e3, 3)
out["hardware"] = res.hardware
out["peak_rss_mib"] = round(next(int(l.split()[1]) for l in open("/proc/self/status")
                                 if l.startswith("VmHWM:")) / 1024, 1)
print(json.dumps(out))
"""


def run_one(layout: str, layers: int, devices: int, timeout: float, expand: bool = False) -> dict:
    """One configuration in a fresh process."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, here, layout, str(layers), str(devices), str(int(expand))],
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
    ap.add_argument("--devices", type=int, nargs="+", default=[8, 64, 256, 1024, 4096])
    ap.add_argument("--layers", type=int, nargs="+", default=[12, 48, 96])
    ap.add_argument("--layouts", nargs="+", default=["dp", "dp_tp", "dp_tp_pp", "gpt3"],
                    choices=["dp", "dp_tp", "dp_tp_pp", "gpt3"])
    ap.add_argument("--expand", action="store_true", help="also time expand-devices (every device's plan)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per configuration")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "scale_bench.json"))
    args = ap.parse_args()
    rows = []
    for layout in args.layouts:
        for layers in args.layers:
            for devices in sorted(args.devices):
                need = {"dp": 1, "dp_tp": 4, "dp_tp_pp": 16, "gpt3": 128}[layout]
                if devices % need or layers < {"dp_tp_pp": 4, "gpt3": 16}.get(layout, 1):
                    continue
                row = run_one(layout, layers, devices, args.timeout, args.expand)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if "timeout_s" in row or "error" in row:
                    break  # larger meshes of this series would take longer still
    result = {
        "benchmark": "scale",
        "note": "CPU seconds per stage of one fresh process per row; compile_cpu_s sums parsing, the passes to "
                "SPMD plans and their verification (fir-run's default: verify once); simulate replays each class "
                "of devices once (fir-run --simulate)",
        "rows": rows,
        "machine": machine(),
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()

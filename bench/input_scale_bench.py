"""Benchmark: time and memory fir spends on inputs of growing size, to show both grow linearly.

Families, each at sizes n, 4n, 16n (every measurement in a fresh Python process, CPU seconds and peak RSS):
  - `relu_chain`: n chained flow.relu, parsed and run by the API (fuse makes it one kernel), checked against the
    reference: the fuse pass was quadratic here (3,000 ops took 59 s);
  - `matmul_chain`: n alternating flow.matmul and flow.softmax (no fusion), compiled to a plan and run;
  - `string_literal`: one attribute string of n bytes, rejected with a located error (the lexer took 370x the
    input's size in memory);
  - `deep_brackets`: n nested brackets, rejected with a located error (this was a RecursionError);
  - `npz_bomb`: an .npz member of n MiB of zeros whose header names the wrong shape, refused from its header.
The result lists, per family and size, CPU seconds, peak RSS and CPU per unit of size; `growth` is the CPU ratio
between consecutive sizes divided by the size ratio (1.0 is linear; quadratic shows as about 4), null where the
work is too small to time.

Usage: python bench/input_scale_bench.py [--scale 1] [--out bench/results/input_scale_bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from results_file import machine, write_result
import tempfile

# Each family's base size (the measurements use 1x, 4x and 16x it).
FAMILIES = {
    "relu_chain": 2000,
    "matmul_chain": 500,
    "string_literal": 1_000_000,
    "deep_brackets": 100_000,
    "npz_bomb": 16,
}


def make_input(family: str, n: int, folder: str) -> list[str]:
    """Write the input of one measurement; return the paths the child gets."""
    prog = os.path.join(folder, f"{family}_{n}.fir")
    extra: list[str] = []
    if family == "relu_chain":
        body = "".join(f"  %v{i} = flow.relu {'%x' if i == 0 else f'%v{i - 1}'}\n" for i in range(n))
        text = f"func.func @f(%x: tensor<4x4xf32>) -> tensor<4x4xf32> {{\n{body}  func.return %v{n - 1}\n}}\n"
    elif family == "matmul_chain":
        lines = []
        for i in range(n):
            prev = "%x" if i == 0 else f"%v{i - 1}"
            lines.append(f"  %v{i} = flow.matmul {prev}, %w\n" if i % 2 else f"  %v{i} = flow.softmax {prev}\n")
        text = ("func.func @f(%x: tensor<4x4xf32>, %w: tensor<4x4xf32>) -> tensor<4x4xf32> {\n" + "".join(lines)
                + f"  func.return %v{n - 1}\n}}\n")
    elif family == "string_literal":
        text = ('func.func @f(%x: tensor<4xf32>) -> tensor<4xf32> {\n  %y = flow.gelu %x {approximate = "'
                + "a" * n + '"}\n  func.return %y\n}\n')
    elif family == "deep_brackets":
        text = ("func.func @f(%x: tensor<4xf32>) -> tensor<4xf32> {\n  %y = flow.transpose %x {perm = "
                + "[" * n + "]" * n + "}\n  func.return %y\n}\n")
    else:  # npz_bomb
        import io
        import zipfile

        import numpy as np

        text = "func.func @f(%x: tensor<4xf32>) -> tensor<4xf32> {\n  %y = flow.relu %x\n  func.return %y\n}\n"
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                      "shape": ((n << 20) // 4,)})
        bomb = os.path.join(folder, f"bomb_{n}.npz")
        with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("x.npy", header.getvalue() + bytes(n << 20))
        extra = [bomb]
    with open(prog, "w") as f:
        f.write(text)
    return [prog, *extra]


CHILD = r"""
import json, sys, time
family, paths = sys.argv[1], sys.argv[2:]
from fir import api
from fir.syntax.diagnostics import FirError
t0 = time.process_time()
outcome = "ok"
try:
    prog = api.load(paths[0])
    if family in ("relu_chain", "matmul_chain"):
        assert prog.run(check=True).mismatches() == []
    elif family == "npz_bomb":
        prog.run(paths[1])
except FirError as e:
    outcome = "error: " + e.message[:80]
cpu = time.process_time() - t0
# VmHWM is this process image's own peak (ru_maxrss would carry the parent's over the exec).
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"cpu_s": round(cpu, 3), "peak_rss_mib": round(hwm / 1024, 1), "outcome": outcome}))
"""


def measure(family: str, paths: list[str]) -> dict:
    """Run one measurement in a fresh process."""
    done = subprocess.run([sys.executable, "-c", CHILD, family, *paths], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run every family at three sizes and write the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every base size by this")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "input_scale_bench.json"))
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        baseline = measure("none", make_input("relu_chain", 1, folder))  # the imports and a one-op program
        for family, base in FAMILIES.items():
            rows = []
            for k in (1, 4, 16):
                n = max(1, int(base * args.scale)) * k
                row = {"size": n, **measure(family, make_input(family, n, folder))}
                row["cpu_per_unit_us"] = round(1e6 * max(row["cpu_s"] - baseline["cpu_s"], 0) / n, 3)
                rows.append(row)
                print(family, row, flush=True)
            work = [r["cpu_s"] - baseline["cpu_s"] for r in rows]
            # Below 20 ms of work beyond the baseline the ratio is noise: reported as null.
            growth = [round(b / a / 4, 2) if a > 0.02 and b > 0.02 else None for a, b in zip(work, work[1:])]
            results[family] = {"rows": rows, "growth": growth}
    out = {
        "benchmark": "input_scale",
        "note": "CPU seconds and peak RSS (VmHWM) of one fresh process per row; cpu_per_unit_us and growth "
                "subtract the CPU of loading a one-op program (baseline).",
        "baseline": baseline,
        "families": results,
        "machine": machine(),
    }
    write_result(args.out, out)


if __name__ == "__main__":
    main()

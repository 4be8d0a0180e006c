"""Benchmark: parse + verify + print time of a generated 10,000-op .fir program (and the MLIR generic path).

Usage: python bench/parse_bench.py [--ops N] [--repeat R] [--out bench/results/parse_bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from io import StringIO

from xdsl.printer import Printer

from fir.syntax.parser import parse_fir
from fir.syntax.printer import print_fir
from fir.syntax.frontend import parse_mlir, verify_module


def generate(n_ops: int) -> str:
    """A straight-line program of n_ops flow ops: a residual MLP-like chain mixing op kinds."""
    lines = ["func.func @big(%x: tensor<64x256xf32>, %w: tensor<256x256xf32>, %g: tensor<256xf32>, "
             "%b: tensor<256xf32>) -> tensor<64x256xf32> {"]
    cur, n = "%x", 0
    cycle = [
        lambda c, i: f"  %v{i} = flow.matmul {c}, %w : tensor<64x256xf32>",
        lambda c, i: f"  %v{i} = flow.add {c}, %b",
        lambda c, i: f"  %v{i} = flow.gelu {c}",
        lambda c, i: f"  %v{i} = flow.layernorm {c}, %g, %b {{eps = 1e-05}}",
        lambda c, i: f"  %v{i} = flow.mul {c}, {c}",
        lambda c, i: f"  %v{i} = flow.softmax {c} {{axis = -1}}",
        lambda c, i: f"  %v{i} = flow.transpose {c} {{perm = [1, 0]}} : tensor<256x64xf32>",
        lambda c, i: f"  %v{i} = flow.transpose {c} {{perm = [1, 0]}}",
        lambda c, i: f"  %v{i} = flow.reshape {c} : tensor<64x256xf32>",
        lambda c, i: f"  %v{i} = flow.sub {c}, %x",
    ]
    while n < n_ops:
        lines.append(cycle[n % len(cycle)](cur, n))
        cur = f"%v{n}"
        n += 1
    lines.append(f"  func.return {cur} : tensor<64x256xf32>")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _time(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    """Run the benchmark and write its JSON result."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ops", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "parse_bench.json"))
    args = ap.parse_args()

    text = generate(args.ops)
    t_parse, module = _time(lambda: parse_fir(text, "big.fir"), args.repeat)
    t_verify, _ = _time(lambda: verify_module(module), args.repeat)
    t_print, printed = _time(lambda: print_fir(module), args.repeat)
    assert parse_fir(printed, "again.fir") is not None

    def print_generic():
        s = StringIO()
        Printer(stream=s, print_generic_format=True).print_op(module)
        return s.getvalue()

    t_print_mlir, generic = _time(print_generic, args.repeat)
    t_parse_mlir, _ = _time(lambda: parse_mlir(generic, "big.mlir"), args.repeat)

    result = {
        "benchmark": "parse_verify_print",
        "ops": args.ops,
        "source_bytes": len(text),
        "repeat": args.repeat,
        "median_seconds": {
            "fir_parse_and_build": round(t_parse, 4),
            "verify": round(t_verify, 4),
            "fir_print": round(t_print, 4),
            "fir_total": round(t_parse + t_verify + t_print, 4),
            "mlir_generic_print": round(t_print_mlir, 4),
            "mlir_generic_parse": round(t_parse_mlir, 4),
        },
        "ops_per_second_fir_total": round(args.ops / (t_parse + t_verify + t_print)),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

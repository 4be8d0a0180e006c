"""Benchmark: compile time of fir's whole pipeline on generated GPT-2-style models (bench/gpt_model.py).

For each model size, in a fresh process (so that no cache or heap of an earlier model helps or hurts): generate
the .fir text, then time each stage on its own: parse + verify (fir.syntax.frontend.parse_source), and each pass of
`microbatch{count=M}`, `sbp-infer`, `insert-boxing`, `spmd-partition`, `fuse`, `schedule`, `plan-memory` (fir-run's
pipeline up to its SPMD plans, one per class of devices; expand-devices, which writes every device's plan for the
executors, is left out: scale_bench times it), each followed by
fir.syntax.frontend.verify_module, timed separately (`total_*` count the verifier after every pass, as
`--verify-each` does; `verify_once_cpu_seconds` counts it once, after the last pass, as fir-run compiles). Every
pass runs on a fresh clone of its input (cloning is not timed); with --repeat R each stage is timed R times and the median reported (the first run fills the rule and
boxing caches, later ones find them warm). A pass that does not exist yet, or fails, is recorded as
`"skipped": reason`, and the pipeline goes on from the module before it.

Usage: python bench/compile_bench.py [--layers 12 48] [--out bench/results/compile_bench.json]
                                     [--microbatches 4] [--repeat 3] [--profile N] [--no-gc]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import io
import multiprocessing
import os
import pstats
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.passes import ModulePass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpt_model import gpt_program  # noqa: E402
from results_file import machine, write_result  # noqa: E402

from fir.planning import memory_planner  # noqa: E402
from fir.syntax.frontend import make_context, parse_source, verify_module  # noqa: E402
from fir.passes import available_passes  # noqa: E402
from fir.distribution.placement import DEVICE, DEVICES  # noqa: E402

# GPT-2 small's sizes (vocabulary padded to a multiple of 128), 2 pipeline stages of 4-way tensor parallelism.
MODEL: dict[str, Any] = {"hidden": 768, "heads": 12, "seq": 1024, "batch": 8, "stages": 2, "tp": 4, "vocab": 50304,
                         "causal": True, "loss": True, "microbatch": True}


def model(train: bool) -> dict[str, Any]:
    """The generator's options: the forward with micro-batched tokens, or (train) a training step's weights marked
    trainable; micro-batching a training step needs gradient accumulation, which is still to come."""
    return {**MODEL, "microbatch": not train, "trainable": train}


def pipeline(microbatches: int, train: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """The passes the benchmark times, in order, with their options (with `train`, first the training step: the
    derived backward and an AdamW update)."""
    return [*([("train-step", {"optimizer": "adamw", "lr": 1e-3})] if train else []),
            ("microbatch", {"count": microbatches}), ("sbp-infer", {}), ("insert-boxing", {}), ("spmd-partition", {}),
            ("fuse", {}), ("schedule", {}), ("plan-memory", {})]


def op_counts(module: ModuleOp) -> dict[str, Any]:
    """Top-level ops in function bodies (func.return not counted; a flow.fused counts once, as the one kernel it
    is) of logical and of device functions (per-device or SPMD programs), and the comm, plan and fused ops."""
    logical = device = n_dev = 0
    kinds: Counter[str] = Counter()
    for f in module.ops:
        if not isinstance(f, FuncOp):
            continue
        n = 0
        for op in f.body.ops:
            if not isinstance(op, ReturnOp):
                n += 1
                if op.name.split(".", 1)[0] in ("comm", "plan") or op.name == "flow.fused":
                    kinds[op.name] += 1
        if DEVICE in f.attributes or DEVICES in f.attributes:
            device, n_dev = device + n, n_dev + 1
        else:
            logical += n
    return {"logical_ops": logical, "device_ops": device, "device_functions": n_dev,
            "comm_plan_fused_ops": dict(sorted(kinds.items()))}


def make_pass(name: str, options: dict[str, Any]) -> ModulePass:
    """An instance of a registered pass with the given options (its dataclass fields; `-` in a name reads `_`)."""
    cls = available_passes()[name]()
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    kwargs = {k.replace("-", "_"): v for k, v in options.items()}
    unknown = [k for k in kwargs if k not in fields]
    if unknown:
        raise TypeError(f"{cls.__name__} has no option {', '.join(unknown)} "
                        f"(it has: {', '.join(sorted(fields)) or 'none'})")
    return cls(**kwargs)


Times = list[tuple[float, float]]


def _timed(fn: Callable[[Any], Any], make_input: Callable[[], Any], repeat: int) -> tuple[Times, Any]:
    """(wall, CPU) seconds of fn(make_input()) for each of `repeat` runs (make_input not timed), and the last
    result. CPU time is this process's: on a shared machine it moves much less than wall time."""
    times, result = [], None
    for _ in range(repeat):
        x = make_input()
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn(x)
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    return times, result


def _reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _seconds(times: Times, prefix: str = "") -> dict[str, Any]:
    """Median wall and CPU seconds (and every run's wall seconds when there are several)."""
    out: dict[str, Any] = {f"{prefix}seconds": round(statistics.median(w for w, _ in times), 4),
                           f"{prefix}cpu_seconds": round(statistics.median(c for _, c in times), 4)}
    if len(times) > 1:
        out[f"{prefix}runs"] = [round(w, 4) for w, _ in times]
    return out


def compile_model(text: str, microbatches: int, repeat: int = 1, train: bool = False
                  ) -> tuple[list[dict[str, Any]], ModuleOp]:
    """Time every stage of the pipeline on one program; returns the stage records and the final module."""
    ctx = make_context()
    times, module = _timed(lambda _: parse_source(text, "gpt.fir", "fir"), lambda: None, repeat)
    stages: list[dict[str, Any]] = [{"stage": "parse+verify", **_seconds(times), **op_counts(module)}]
    for name, options in pipeline(microbatches, train):
        label = name + ("{" + ",".join(f"{k}={v}" for k, v in options.items()) + "}" if options else "")
        record: dict[str, Any] = {"stage": label}
        stages.append(record)
        try:
            p = make_pass(name, options)
        except ModuleNotFoundError as e:
            record["skipped"] = f"not available yet ({e.name} is missing)"
            continue
        except Exception as e:  # a pass module that fails to import, or does not take the options
            record["skipped"] = _reason(e)
            continue

        def apply(m: ModuleOp, p: ModulePass = p) -> ModuleOp:
            # Memory plans are remembered by their buffers: forget the earlier runs' (a compile reuses only its
            # own devices' plans), or every repeat after the first would plan nothing.
            memory_planner._PLANS.clear()
            p.apply(ctx, m)
            return m

        try:
            pass_times, out = _timed(apply, module.clone, repeat)
        except Exception as e:
            record["skipped"] = f"pass failed: {_reason(e)}"
            continue
        try:
            verify_times, _ = _timed(verify_module, lambda: out, repeat)
        except Exception as e:
            record["skipped"] = f"verify failed after the pass: {_reason(e)}"
            continue
        record.update(**_seconds(pass_times), **_seconds(verify_times, "verify_"), **op_counts(out))
        module = out
    return stages, module


def bench_model(layers: int, microbatches: int, repeat: int, profile: int, no_gc: bool,
                train: bool = False) -> dict[str, Any]:
    """Generate and compile one model size; with `profile`, print its `profile` hottest functions to stderr."""
    if no_gc:
        gc.disable()
    text = gpt_program(layers, **model(train))
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    stages, _ = compile_model(text, microbatches, repeat, train)
    if profiler:
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(profile)
        stats.sort_stats("tottime").print_stats(profile)
        print(f"---- profile of {layers} layers\n{out.getvalue()}", file=sys.stderr)
    total = sum(s.get("seconds", 0) + s.get("verify_seconds", 0) for s in stages)
    cpu = sum(s.get("cpu_seconds", 0) + s.get("verify_cpu_seconds", 0) for s in stages)
    # As fir-run compiles: every pass, and the verifier once, after the last one.
    once = sum(s.get("cpu_seconds", 0) for s in stages) + next(
        (s["verify_cpu_seconds"] for s in reversed(stages) if "verify_cpu_seconds" in s), 0)
    return {"layers": layers, "source_bytes": len(text), "stages": stages, "total_seconds": round(total, 4),
            "total_cpu_seconds": round(cpu, 4), "verify_once_cpu_seconds": round(once, 4)}


def table(results: list[dict[str, Any]]) -> str:
    """A text table: one row per stage, per model the wall seconds of the pass and of the verify after it, and
    in parentheses their CPU seconds."""
    rows = [["stage", *(f"{r['layers']} layers" for r in results)]]
    for i, first in enumerate(results[0]["stages"]):
        row = [first["stage"]]
        for r in results:
            s = r["stages"][i]
            if "skipped" in s:
                row.append("skipped")
            else:
                cell = f"{s['seconds']:.3f} ({s['cpu_seconds']:.3f})"
                if "verify_seconds" in s:
                    cell += f" + {s['verify_seconds']:.3f} ({s['verify_cpu_seconds']:.3f}) verify"
                row.append(cell)
        rows.append(row)
    rows.append(["total", *(f"{r['total_seconds']:.3f} ({r['total_cpu_seconds']:.3f})" for r in results)])
    rows.append(["ops: logical -> device", *(f"{r['stages'][0]['logical_ops']} -> "
                                             f"{max(s.get('device_ops', 0) for s in r['stages'])}" for r in results)])
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    skipped = {s["stage"]: s["skipped"] for r in results for s in r["stages"] if "skipped" in s}
    return "\n".join(lines + [f"skipped {k}: {v}" for k, v in skipped.items()])


def main() -> None:
    """Run the benchmark, print a table, and write the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[12, 48])
    ap.add_argument("--microbatches", type=int, default=4, help="the microbatch pass's count (default 4)")
    ap.add_argument("--repeat", type=int, default=3, help="time each stage this many times, report the median")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="profile the largest model with cProfile and print its N hottest functions to stderr")
    ap.add_argument("--no-gc", action="store_true", help="disable Python's cyclic garbage collector (to see its share)")
    ap.add_argument("--train", action="store_true",
                    help="compile the training step (train-step with AdamW first; no micro-batches)")
    ap.add_argument("--out", default=None, help="the JSON result (default results/compile_bench.json, or "
                                                "results/compile_bench_train.json with --train)")
    args = ap.parse_args()
    if args.out is None:
        name = "compile_bench_train.json" if args.train else "compile_bench.json"
        args.out = os.path.join(os.path.dirname(__file__), "results", name)
    micro = 1 if args.train else args.microbatches

    load_before = os.getloadavg()
    results = []
    # A fresh process per model: the lru caches of fir.distribution.rules and fir.distribution.boxing start empty for each.
    spawn = multiprocessing.get_context("spawn")
    for n in args.layers:
        profile = args.profile if n == max(args.layers) else 0
        with spawn.Pool(1) as pool:
            r = pool.apply(bench_model, (n, micro, args.repeat, profile, args.no_gc, args.train))
        results.append(r)
        print(f"{n} layers: {r['total_seconds']:.2f} s ({r['total_cpu_seconds']:.2f} s CPU)", file=sys.stderr)

    result = {"benchmark": "compile_pipeline" + ("_train" if args.train else ""),
              "model": {"generator": "bench/gpt_model.py", **model(args.train)},
              "microbatches": micro, "repeat": args.repeat, "gc": not args.no_gc,
              "profiled": bool(args.profile), "results": results,
              "machine": {**machine(), "load_average_before_after": [round(load_before[0], 2),
                                                                     round(os.getloadavg()[0], 2)]}}
    print(table(results))
    write_result(args.out, result)


if __name__ == "__main__":
    main()

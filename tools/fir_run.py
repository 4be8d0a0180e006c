"""fir-run: compile a fir program to execution plans, run them (numpy or CUDA backend) and report its outputs.

Argument parsing and printing only: the work is fir.api's (load, compile, run, simulate)."""

from __future__ import annotations

import argparse
import sys

from fir import __version__
from fir_tools.common import guarded_main, read_text, report

# Kept in step with fir.api.BACKENDS, fir.dialects.plan.ORDERS and fir.runtime.plan_executor.INTERLEAVINGS
# (a test checks), so that --help needs none of those modules.
BACKENDS = ("numpy", "cuda")
ORDERS = ("gpipe", "1f1b")
INTERLEAVINGS = ("in-order", "random", "adversarial")


def _parser() -> argparse.ArgumentParser:
    from fir.planning.hardware import DEFAULT_HARDWARE, preset_names

    p = argparse.ArgumentParser(
        prog="fir-run",
        description="Run a fir program (.fir or MLIR generic): compile it to execution plans and run them on the "
                    "numpy backend (CPU) or the CUDA backend (GPU).",
    )
    p.add_argument("input_file", help="program to run ('-' for stdin)")
    p.add_argument("--version", action="version", version=f"fir-run {__version__}")
    p.add_argument("--entry", metavar="NAME", help="function to run (default: the only one, or @main)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--inputs", metavar="FILE.npz", help="one array per argument, keyed by argument name")
    src.add_argument("--seed", type=_count("a seed", 0), metavar="N",
                     help="random inputs from this seed (the default is 0)")
    p.add_argument("--save-inputs", metavar="FILE.npz", help="write the inputs the run used, keyed by argument name")
    p.add_argument("--output", metavar="FILE.npz", help="write the results here, keyed by result name")
    p.add_argument("--backend", choices=BACKENDS, default="numpy",
                   help="execution backend: numpy arenas on the CPU, or the generated CUDA kernels on GPU 0 through "
                        "pycuda (every virtual device on the one GPU; default: numpy)")
    p.add_argument("--devices", type=_count("devices"), metavar="N",
                   help="virtual devices to run on (default: as many as the program's meshes use)")
    p.add_argument("--check", action="store_true",
                   help="also run the single-device reference and compare every result with it")
    p.add_argument("--microbatches", type=_count("micro-batches"), metavar="M",
                   help="split arguments marked `microbatch = axis` into M micro-batches (default: 1)")
    p.add_argument("--schedule", choices=ORDERS, help="pipeline ordering of the micro-batches (default: 1f1b)")
    p.add_argument("--interleave", choices=INTERLEAVINGS,
                   help="order in which the streams' instructions run, within what the plan's events allow "
                        "(default: in-order); random and adversarial test a plan's synchronisation")
    p.add_argument("--interleave-seed", type=_count("a seed", 0), metavar="N",
                   help="seed of --interleave random (and of adversarial's tie-breaks; default: 0)")
    p.add_argument("--trace", metavar="FILE.json",
                   help="write a Chrome trace / Perfetto timeline of the run (of the simulation with --simulate)")
    p.add_argument("--simulate", action="store_true",
                   help="do not run: replay the plan on a hardware model and report step time, stream busy time, "
                        "pipeline bubble and memory")
    p.add_argument("--hardware", metavar="NAME|FILE.toml",
                   help=f"hardware model for --simulate: a preset ({', '.join(preset_names())}; default "
                        f"{DEFAULT_HARDWARE}) or a .toml file, sized NAME:nodes=N (default: grown by whole nodes "
                        "to the program's devices)")
    train = p.add_argument_group("training (a step made by the train-step pass)")
    train.add_argument("--steps", type=_count("steps"), metavar="N",
                       help="run N training steps, each result X.next fed back as argument X; prints the loss "
                            "of every step")
    train.add_argument("--state", metavar="FILE.safetensors",
                       help="the initial training state (parameters, optimizer state) by argument name")
    train.add_argument("--save-state", metavar="FILE.safetensors", help="write the final training state")
    train.add_argument("--batches", metavar="FILE.npz",
                       help="stacked batches: per batch argument an array [K, ...]; step k takes batch k mod K")
    p.add_argument("-f", "--frontend", choices=["fir", "mlir"], help="input syntax (default: by extension or content)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success (and no progress bar)")
    p.add_argument("--verify-each", action="store_true",
                   help="verify the IR after every compiler pass, not only at the end (slower; for debugging)")
    return p


def _check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse flags that would be silently ignored."""
    if args.simulate:
        given = [("--check", args.check), ("--output", args.output), ("--inputs", args.inputs),
                 ("--seed", args.seed is not None), ("--devices", args.devices),
                 ("--save-inputs", args.save_inputs),
                 ("--interleave", args.interleave), ("--interleave-seed", args.interleave_seed is not None)]
        for flag, on in given:
            if on:
                parser.error(f"{flag} has no effect with --simulate, which replays the plan on a hardware model "
                             "and runs nothing")
    elif args.hardware is not None:
        parser.error("--hardware only says what --simulate models; add --simulate")
    if args.backend == "cuda":
        for flag, on in (("--interleave", args.interleave), ("--trace", args.trace), ("--simulate", args.simulate)):
            if on:
                parser.error(f"{flag} is not available with --backend cuda (the GPU runs the streams itself)")
    if args.steps is None:
        for flag, on in (("--state", args.state), ("--save-state", args.save_state), ("--batches", args.batches)):
            if on:
                parser.error(f"{flag} needs --steps (it is about a training loop)")
    elif args.simulate or args.output or args.trace:
        parser.error("--steps runs a training loop: --simulate, --output and --trace do not apply to it")
    if args.interleave_seed is not None and args.interleave not in ("random", "adversarial"):
        parser.error("--interleave-seed needs --interleave random or adversarial")


def _count(what: str, least: int = 1):
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = least - 1
        if n < least:
            raise argparse.ArgumentTypeError(
                f"expected a positive number of {what}, got '{text}'" if least == 1
                else f"expected {what}, a whole number from {least}, got '{text}'")
        return n

    return parse


def summarize(name: str, t: str, value) -> str:
    """One result as a line of statistics and its first values."""
    import numpy as np

    flat = value.reshape(-1)
    head = f"{name}: {t}"
    if flat.size == 0:
        return head + "  (empty)"
    if value.dtype.kind in "fV" or str(value.dtype) == "bfloat16":
        f = flat.astype(np.float64)
        with np.errstate(all="ignore"):  # statistics of inf and nan are nan, without a warning
            stats = f"min {f.min():.6g}  max {f.max():.6g}  mean {f.mean():.6g}  std {f.std():.6g}"
        if not np.all(np.isfinite(f)):
            stats += f"  non-finite {int(np.sum(~np.isfinite(f)))}"
    else:
        i = flat.astype(np.int64)
        stats = f"min {i.min()}  max {i.max()}  sum {i.sum()}"
    shown = ", ".join(f"{x:.6g}" if isinstance(x, float) else str(x) for x in flat[:6].tolist())
    more = ", ..." if flat.size > 6 else ""
    return f"{head}\n    {stats}\n    [{shown}{more}]"


def _simulate(prog, args: argparse.Namespace) -> int:
    """Replay the plan on the hardware model and print the report (and write the trace)."""
    from fir.planning.simulator import format_report
    from fir.planning.trace import trace_writer
    from fir.syntax.files import PendingFiles

    result = prog.simulate(entry=args.entry, hardware=args.hardware, microbatches=args.microbatches,
                           schedule=args.schedule, verify_each=args.verify_each or None)
    files = PendingFiles()
    if args.trace:
        files.add(args.trace, "the trace", trace_writer(result.events, {"program": args.input_file,
                                                                         **result.trace_metadata()}))
    files.commit()
    if not args.quiet:
        print(format_report(result))
        if args.trace:
            print(f"wrote {args.trace}")
    return 0


def _train(prog, args: argparse.Namespace, name: str, text: str) -> int:
    """The training loop: run the step args.steps times, print each step's loss (and checks), save the state."""
    from fir import progress
    from fir.runtime.training import safetensors_numpy, state_writer
    from fir.syntax.diagnostics import FirError
    from fir.syntax.files import PendingFiles

    if args.save_state:
        safetensors_numpy("--save-state")  # before training, not after it
    lines: list[str] = []
    with progress.task("train", total=args.steps) as bar:
        def on_step(k: int, loss: float) -> None:
            lines.append(f"step {k + 1}: loss {loss:.6g}")
            bar()

        result = prog.train(args.steps, args.inputs, seed=args.seed, state=args.state, batches=args.batches,
                            entry=args.entry, devices=args.devices, microbatches=args.microbatches,
                            schedule=args.schedule, backend=args.backend, interleave=args.interleave or "in-order",
                            interleave_seed=args.interleave_seed or 0, check=args.check,
                            verify_each=args.verify_each or None, on_step=on_step)
    files = PendingFiles()
    if args.save_state:
        files.add(args.save_state, "the training state", state_writer(result.state))
    files.commit()
    if not args.quiet:
        for k, line in enumerate(lines):
            if result.checks:
                worst = max(c.max_abs_error for c in result.checks[k].values())
                ok = all(c.ok for c in result.checks[k].values())
                line += f"  check: {'ok' if ok else 'MISMATCH'} (max abs error {worst:.3g})"
            print(line)
        if args.save_state:
            print(f"wrote {args.save_state}")
    bad = result.mismatches()
    if bad:
        k, r = bad[0]
        report("fir-run", FirError(f"step {k + 1}: result {r} differs from the single-device reference "
                                   f"(max abs error {result.checks[k][r].max_abs_error:.3g})"), {name: text})
        return 1
    return 0


def run(argv: list[str] | None = None) -> int:
    """Parse arguments, run the program, print and save its outputs; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check_flags(parser, args)
    name = "<stdin>" if args.input_file == "-" else args.input_file
    text = read_text(args.input_file)
    syntax = args.frontend or ("mlir" if name.endswith(".mlir") else None)
    from fir import api, progress
    from fir.dialects.dtypes import format_type
    from fir.runtime.inputs import outputs_writer
    from fir.syntax.diagnostics import FirError
    from fir.syntax.files import PendingFiles

    try:
        with progress.reporting(progress.terminal(args.quiet)):  # a bar on a terminal after a second of work
            prog = api.parse(text, name, syntax)
            if args.simulate:
                return _simulate(prog, args)
            if args.steps is not None:
                return _train(prog, args, name, text)
            result = prog.run(args.inputs, seed=args.seed, entry=args.entry, devices=args.devices,
                              microbatches=args.microbatches, schedule=args.schedule, backend=args.backend,
                              interleave=args.interleave or "in-order",
                              interleave_seed=args.interleave_seed or 0, trace=bool(args.trace), check=args.check,
                              verify_each=args.verify_each or None)
        # Every file is written under a temporary name and renamed into place only once all are written.
        files = PendingFiles()
        if args.save_inputs:
            files.add(args.save_inputs, "inputs", outputs_writer(list(result.inputs), list(result.inputs.values())))
        if args.output:
            files.add(args.output, "outputs", outputs_writer(list(result.outputs), list(result.outputs.values())))
        if args.trace:
            from fir.planning.trace import trace_writer

            files.add(args.trace, "the trace", trace_writer(result.events, {
                "program": args.input_file, "kind": "numpy backend run (wall clock)",
                "interleaving": args.interleave or "in-order"}))
        files.commit()
    except FirError as e:
        report("fir-run", e, {name: text})
        return 1
    func = prog.function(args.entry)
    if not args.quiet:
        where = f", {result.devices} virtual devices" if result.devices > 1 else ""
        origin = f"from {args.inputs}" if args.inputs else f"random, seed {args.seed or 0}"
        print(f"@{func.sym_name.data}: {len(result.inputs)} input(s) ({origin}), {len(result.outputs)} result(s), "
              f"backend {args.backend}{where}")
        for (n, v), t in zip(result.outputs.items(), func.function_type.outputs.data):
            print(summarize(n, format_type(t), v))
        for path in (args.save_inputs, args.output, args.trace):
            if path:
                print(f"wrote {path}")
        for n, c in result.checks.items():
            print(f"check {n}: {'ok' if c.ok else 'MISMATCH'} (max abs error {c.max_abs_error:.3g} against "
                  "the single-device reference)")
    bad = result.mismatches()
    if bad:
        c = result.checks[bad[0]]
        report("fir-run", FirError(f"result {bad[0]} differs from the single-device reference "
                                   f"(max abs error {c.max_abs_error:.3g})"), {name: text})
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the fir-run command."""
    return guarded_main("fir-run", lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())

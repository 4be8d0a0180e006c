"""fir-run: compile a fir program to execution plans, run them (numpy or CUDA backend) and report its outputs."""

from __future__ import annotations

import argparse
import sys

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import FuncOp

from fir.compile import compile_plan
from fir.diagnostics import FirError, loc_of
from fir.dialects.comm import CommOp
from fir.dialects.plan import ARENA_SIZE, ORDERS
from fir.dialects.sbp import MeshOp
from fir.distribute import compare_all
from fir.dtypes import dtype_name, format_type, nbytes
from fir.files import PendingFiles
from fir.frontend import parse_source
from fir.hardware import DEFAULT_HARDWARE, load_hardware, preset_names
from fir.passes.microbatch import microbatch_axes
from fir.passes.plan_memory import verify_memory
from fir.placement import DEVICE, OF, places, symbol_name
from fir.plan_ir import is_plan
from fir.runtime.inputs import load_inputs, outputs_writer, random_inputs, result_names
from fir.runtime.interpreter import find_function, run_function
from fir.runtime.plan_executor import INTERLEAVINGS, execute_plan
from fir.runtime.virtual_devices import check_devices, devices_needed
from fir.trace import trace_writer
from fir_tools.common import guarded_main, read_text, report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fir-run",
        description="Run a fir program (.fir or MLIR generic): compile it to execution plans and run them on the "
                    "numpy backend (CPU) or the CUDA backend (GPU).",
    )
    p.add_argument("input_file", help="program to run ('-' for stdin)")
    p.add_argument("--entry", metavar="NAME", help="function to run (default: the only one, or @main)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--inputs", metavar="FILE.npz", help="one array per argument, keyed by argument name")
    src.add_argument("--seed", type=int, metavar="N", help="random inputs from this seed (the default is 0)")
    p.add_argument("--output", metavar="FILE.npz", help="write the results here, keyed by result name")
    p.add_argument("--backend", choices=["numpy", "cuda"], default="numpy",
                   help="execution backend: numpy arenas on the CPU, or the generated CUDA kernels on GPU 0 through "
                        "pycuda (every virtual device on the one GPU; default: numpy)")
    p.add_argument("--devices", type=_positive, metavar="N",
                   help="virtual devices to run on (default: as many as the program's meshes use)")
    p.add_argument("--check", action="store_true",
                   help="also run the single-device reference and compare every result with it")
    p.add_argument("--microbatches", type=_positive_count("micro-batches"), metavar="M",
                   help="split arguments marked `microbatch = axis` into M micro-batches (default: 1)")
    p.add_argument("--schedule", choices=ORDERS,
                   help="pipeline ordering of the micro-batches (default: 1f1b)")
    p.add_argument("--interleave", choices=INTERLEAVINGS,
                   help="order in which the streams' instructions run, within what the plan's events allow "
                        "(default: in-order); random and adversarial test a plan's synchronisation")
    p.add_argument("--interleave-seed", type=int, metavar="N",
                   help="seed of --interleave random (and of adversarial's tie-breaks; default: 0)")
    p.add_argument("--trace", metavar="FILE.json",
                   help="write a Chrome trace / Perfetto timeline of the run (of the simulation with --simulate)")
    p.add_argument("--simulate", action="store_true",
                   help="do not run: replay the plan on a hardware model and report step time, stream busy time, "
                        "pipeline bubble and memory")
    p.add_argument("--hardware", metavar="NAME|FILE.toml",
                   help=f"hardware model for --simulate: a preset ({', '.join(preset_names())}; default "
                        f"{DEFAULT_HARDWARE}) or a .toml file")
    p.add_argument("-f", "--frontend", choices=["fir", "mlir"], help="input syntax (default: by extension or content)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    return p


def _check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse flags that would be silently ignored."""
    if args.simulate:
        given = [("--check", args.check), ("--output", args.output), ("--inputs", args.inputs),
                 ("--seed", args.seed is not None), ("--devices", args.devices),
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
    if args.interleave_seed is not None and args.interleave not in ("random", "adversarial"):
        parser.error("--interleave-seed needs --interleave random or adversarial")


def _positive_count(what: str):
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = 0
        if n < 1:
            raise argparse.ArgumentTypeError(f"expected a positive number of {what}, got '{text}'")
        return n

    return parse


_positive = _positive_count("devices")


def summarize(name: str, t: str, value: np.ndarray) -> str:
    """One result as a line of statistics and its first values."""
    flat = value.reshape(-1)
    head = f"{name}: {t}"
    if flat.size == 0:
        return head + "  (empty)"
    if value.dtype.kind in "fV" or str(value.dtype) == "bfloat16":
        f = flat.astype(np.float64)
        stats = f"min {f.min():.6g}  max {f.max():.6g}  mean {f.mean():.6g}  std {f.std():.6g}"
        if not np.all(np.isfinite(f)):
            stats += f"  non-finite {int(np.sum(~np.isfinite(f)))}"
    else:
        i = flat.astype(np.int64)
        stats = f"min {i.min()}  max {i.max()}  sum {i.sum()}"
    shown = ", ".join(f"{x:.6g}" if isinstance(x, float) else str(x) for x in flat[:6].tolist())
    more = ", ..." if flat.size > 6 else ""
    return f"{head}\n    {stats}\n    [{shown}{more}]"


def _inputs(func: FuncOp, args: argparse.Namespace) -> tuple[list[np.ndarray], str]:
    if args.inputs:
        return load_inputs(args.inputs, func), f"from {args.inputs}"
    seed = 0 if args.seed is None else args.seed
    return random_inputs(func, seed), f"random, seed {seed}"


def _entry(module: ModuleOp, args: argparse.Namespace) -> FuncOp:
    """The function to run: --entry, else the only function, else @main; a module of nothing but device programs
    (partition's output) names its logical program instead."""
    funcs = [f for f in module.ops if isinstance(f, FuncOp)]
    if args.entry is None and len(funcs) > 1 and all(DEVICE in f.attributes for f in funcs):
        of = symbol_name(funcs[0].attributes.get(OF))
        raise FirError(f"the program holds the device programs of @{of}, which run only together: fir-run takes the "
                       "logical program and compiles it itself (or name one device's program with --entry)",
                       loc_of(funcs[0].location))
    return find_function(module, args.entry)


def _plan(module: ModuleOp, func: FuncOp, args: argparse.Namespace) -> ModuleOp:
    """The entry function compiled to plans, in a module of its own (a single-device plan is used as it is)."""
    _check_single_device(func)
    if is_plan(func):
        for flag, given in (("--microbatches", args.microbatches is not None), ("--schedule", args.schedule)):
            if given:
                raise FirError(f"{flag} shapes how a program is compiled, but @{func.sym_name.data} is a plan "
                               "already", loc_of(func.location))
        if ARENA_SIZE in func.attributes:
            verify_memory(func)  # a plan from elsewhere: its offsets must be safe before anything runs
        return module
    if args.microbatches is not None and args.microbatches > 1 and not microbatch_axes(func):
        raise FirError(f"--microbatches {args.microbatches}: no argument of @{func.sym_name.data} is marked "
                       "`microbatch = axis`, so there is nothing to split", loc_of(func.location))
    alone = ModuleOp([op.clone() for op in module.ops if isinstance(op, MeshOp)] + [func.clone()])
    return compile_plan(alone, args.microbatches or 1, args.schedule or "1f1b")


def _execute(module: ModuleOp, func: FuncOp, args: argparse.Namespace):
    """Make the inputs, compile and run `func`'s plan on virtual devices; returns (inputs, where they came from,
    the run, number of devices)."""
    try:
        inputs, origin = _inputs(func, args)
        planned = _plan(module, func, args)
        n = args.devices or devices_needed(planned)
        check_devices(planned, n)
        if args.backend == "cuda":
            from fir.runtime.cuda_backend import execute_plan_cuda

            return inputs, origin, execute_plan_cuda(planned, func.sym_name.data, inputs, n), n
        run = execute_plan(planned, func.sym_name.data, inputs, n, interleaving=args.interleave or "in-order",
                           seed=args.interleave_seed or 0, trace=bool(args.trace))
        return inputs, origin, run, n
    except MemoryError:
        need = sum(nbytes(a.type) for a in func.body.blocks.first.args)  # type: ignore[union-attr]
        raise FirError(f"out of memory running @{func.sym_name.data} (its inputs alone take {need} bytes)",
                       loc_of(func.location)) from None


def _check_single_device(func: FuncOp) -> None:
    """A device program (partition's output, planned or not) runs alone only when it talks to no other device;
    comm ops are left only in device programs, which run together with the other devices' programs."""
    if places(func) and DEVICE not in func.attributes:
        return  # a logical program: the distribution passes place its comm ops
    for op in func.body.ops:
        if isinstance(op, CommOp):
            raise FirError(f"'{op.name}' needs the other devices: @{func.sym_name.data} is one device's program "
                           "(partition's output) and cannot run alone; run the logical program, which fir-run "
                           "partitions itself", loc_of(op.location))


def _simulate(module: ModuleOp, func: FuncOp, args: argparse.Namespace) -> int:
    """Replay the plan on the hardware model and print the report (and write the trace)."""
    from fir.simulator import format_report, simulate

    hw = load_hardware(args.hardware or DEFAULT_HARDWARE)
    result = simulate(_plan(module, func, args), func.sym_name.data, hw)
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


def run(argv: list[str] | None = None) -> int:
    """Parse arguments, run the program, print and save its outputs; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check_flags(parser, args)
    name = "<stdin>" if args.input_file == "-" else args.input_file
    text = read_text(args.input_file)
    syntax = args.frontend or ("mlir" if name.endswith(".mlir") else None)
    try:
        module = parse_source(text, name, syntax)
        func = _entry(module, args)
        if args.check and is_plan(func):
            raise FirError("--check needs the logical program: this function is already a plan",
                           loc_of(func.location))
        if args.simulate:
            return _simulate(module, func, args)
        inputs, origin, run, n_devices = _execute(module, func, args)
        outputs = run.outputs
        checks = compare_all(outputs, run_function(module, func, inputs),
                             [dtype_name(t.element_type) for t in func.function_type.outputs.data]) if args.check else []
        names = result_names(func)
        # Every file is written under a temporary name and renamed into place only once all are written.
        files = PendingFiles()
        if args.output:
            files.add(args.output, "outputs", outputs_writer(names, outputs))
        if args.trace:
            files.add(args.trace, "the trace", trace_writer(run.events, {
                "program": args.input_file, "kind": "numpy backend run (wall clock)",
                "interleaving": args.interleave or "in-order"}))
        files.commit()
    except FirError as e:
        report("fir-run", e, {name: text})
        return 1
    if not args.quiet:
        where = f", {n_devices} virtual devices" if n_devices > 1 else ""
        print(f"@{func.sym_name.data}: {len(inputs)} input(s) ({origin}), {len(outputs)} result(s), "
              f"backend {args.backend}{where}")
        for n, v, t in zip(names, outputs, func.function_type.outputs.data):
            print(summarize(n, format_type(t), v))
        if args.output:
            print(f"wrote {args.output}")
        if args.trace:
            print(f"wrote {args.trace}")
    bad = [(n, c) for n, c in zip(names, checks) if not c.ok]
    if args.check and not args.quiet:
        for n, c in zip(names, checks):
            print(f"check {n}: {'ok' if c.ok else 'MISMATCH'} (max abs error {c.max_abs_error:.3g} against "
                  "the single-device reference)")
    if bad:
        n, c = bad[0]
        report("fir-run", FirError(f"result {n} differs from the single-device reference "
                                   f"(max abs error {c.max_abs_error:.3g})"), {name: text})
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the fir-run command."""
    return guarded_main("fir-run", lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())

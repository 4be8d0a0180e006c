"""fir-run: execute a fir program on the numpy reference backend and report its outputs."""

from __future__ import annotations

import argparse
import sys

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import FuncOp

from fir.diagnostics import FirError, loc_of
from fir.dialects.comm import CommOp
from fir.distribute import compare_all, distribute
from fir.dtypes import dtype_name, format_type, nbytes
from fir.frontend import parse_source
from fir.runtime.inputs import load_inputs, random_inputs, result_names, save_outputs
from fir.placement import places
from fir.runtime.interpreter import find_function, run_function
from fir.runtime.virtual_devices import check_devices, devices_needed, run_partitioned
from fir_tools.common import guarded_main, read_text, report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fir-run",
        description="Run a fir program (.fir or MLIR generic) on the CPU with the numpy reference backend.",
    )
    p.add_argument("input_file", help="program to run ('-' for stdin)")
    p.add_argument("--entry", metavar="NAME", help="function to run (default: the only one, or @main)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--inputs", metavar="FILE.npz", help="one array per argument, keyed by argument name")
    src.add_argument("--seed", type=int, metavar="N", help="random inputs from this seed (the default is 0)")
    p.add_argument("--output", metavar="FILE.npz", help="write the results here, keyed by result name")
    p.add_argument("--backend", choices=["numpy"], default="numpy", help="execution backend (default: numpy)")
    p.add_argument("--devices", type=_positive, metavar="N",
                   help="virtual devices to run on (default: as many as the program's meshes use)")
    p.add_argument("--check", action="store_true",
                   help="also run the single-device reference and compare every result with it")
    p.add_argument("-f", "--frontend", choices=["fir", "mlir"], help="input syntax (default: by extension or content)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    return p


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of devices, got '{text}'")
    return n


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


def _execute(module: ModuleOp, func: FuncOp, args: argparse.Namespace):
    """Make the inputs and run `func`, on virtual devices when the program has meshes; returns (inputs, where
    they came from, outputs, number of devices)."""
    try:
        if args.inputs:
            inputs = load_inputs(args.inputs, func)
            origin = f"from {args.inputs}"
        else:
            seed = 0 if args.seed is None else args.seed
            inputs = random_inputs(func, seed)
            origin = f"random, seed {seed}"
        if not places(func):
            _check_single_device(func)
            return inputs, origin, run_function(module, func, inputs), 1
        n = args.devices or devices_needed(module)
        check_devices(module, n)
        outputs = run_partitioned(distribute(module), func.sym_name.data, inputs, n)
        return inputs, origin, outputs, n
    except MemoryError:
        need = sum(nbytes(a.type) for a in func.body.blocks.first.args)  # type: ignore[union-attr]
        raise FirError(f"out of memory running @{func.sym_name.data} (its inputs alone take {need} bytes)",
                       loc_of(func.location)) from None


def _check_single_device(func: FuncOp) -> None:
    """A function on no mesh runs on one device, where comm ops have nobody to talk to: they are left only in a
    device program (partition's output), which runs together with the other devices' programs."""
    for op in func.body.ops:
        if isinstance(op, CommOp):
            raise FirError(f"'{op.name}' needs the other devices: @{func.sym_name.data} is one device's program "
                           "(partition's output) and cannot run alone; run the logical program, which fir-run "
                           "partitions itself", loc_of(op.location))


def run(argv: list[str] | None = None) -> int:
    """Parse arguments, run the program, print and save its outputs; return the exit status."""
    args = _parser().parse_args(argv)
    name = "<stdin>" if args.input_file == "-" else args.input_file
    text = read_text(args.input_file)
    syntax = args.frontend or ("mlir" if name.endswith(".mlir") else None)
    try:
        module = parse_source(text, name, syntax)
        func = find_function(module, args.entry)
        inputs, origin, outputs, n_devices = _execute(module, func, args)
        checks = compare_all(outputs, run_function(module, func, inputs),
                             [dtype_name(t.element_type) for t in func.function_type.outputs.data]) if args.check else []
    except FirError as e:
        report("fir-run", e, {name: text})
        return 1
    names = result_names(func)
    if args.output:
        save_outputs(args.output, names, outputs)
    if not args.quiet:
        where = f", {n_devices} virtual devices" if n_devices > 1 else ""
        print(f"@{func.sym_name.data}: {len(inputs)} input(s) ({origin}), {len(outputs)} result(s), "
              f"backend {args.backend}{where}")
        for n, v, t in zip(names, outputs, func.function_type.outputs.data):
            print(summarize(n, format_type(t), v))
        if args.output:
            print(f"wrote {args.output}")
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

"""fir-opt: parse a program, run a pass pipeline, print the result (.fir by default, MLIR generic, or CUDA C).

Its flags are mlir-opt's and xdsl-opt's: -p, -t, -o, --split-input-file, --verify-diagnostics,
--print-between-passes, --time-passes, --print-op-generic, --disable-verify. Arguments are parsed before anything
heavy is imported, so --help and --version answer at once."""

from __future__ import annotations

import argparse
import os
import sys
import time
from io import StringIO

from fir import __version__
from fir_tools.common import guarded_main, read_text, report

SPLIT_MARKER = "// -----"
TARGETS = ("fir", "mlir", "cuda")


def _xdsl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xdsl")
    except PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """--version / -v: print fir's and xDSL's versions and exit."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"fir-opt {__version__} (built on xDSL {_xdsl_version()})")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fir-opt", description="fir-opt: run fir passes over a .fir or MLIR program")
    p.add_argument("input_file", nargs="?", help="program to read ('-' or nothing for stdin)")
    p.add_argument("-v", "--version", action=_Version)
    p.add_argument("-f", "--frontend", choices=["fir", "mlir"],
                   help="input syntax (default: by extension, else by content)")
    p.add_argument("-p", "--passes", default="", metavar="PIPELINE",
                   help="passes to run, in order: 'a,b{option=value},c' (docs/passes/)")
    p.add_argument("-t", "--target", default="fir", metavar="TARGET",
                   help=f"output: {', '.join(TARGETS)} (default: fir; cuda prints each plan's kernels and launch plan)")
    p.add_argument("-o", "--output-file", metavar="FILE", help="write the output here instead of stdout")
    p.add_argument("--split-input-file", action="store_true",
                   help=f"process each chunk between '{SPLIT_MARKER}' lines separately")
    p.add_argument("--verify-diagnostics", action="store_true",
                   help="print errors into the output instead of failing (for lit tests of diagnostics)")
    p.add_argument("--print-between-passes", action="store_true", help="print the IR after every pass but the last")
    p.add_argument("--time-passes", action="store_true",
                   help="report the time of parsing, every pass, verification and output on stderr")
    p.add_argument("--print-op-generic", action="store_true", help="print MLIR generic syntax (the same as -t mlir)")
    p.add_argument("--disable-verify", action="store_true", help="do not verify the IR after each pass")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar (shown on a terminal when a step takes over a second)")
    return p


class _Timer:
    """Wall and CPU time per named step, reported as mlir-opt's --mlir-timing does."""

    def __init__(self) -> None:
        self.steps: dict[str, list[float]] = {}
        self._start = (time.perf_counter(), time.process_time())

    def time(self, name: str, fn, *args):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args)
        finally:
            step = self.steps.setdefault(name, [0.0, 0.0])
            step[0] += time.perf_counter() - wall
            step[1] += time.process_time() - cpu

    def report(self) -> str:
        wall = time.perf_counter() - self._start[0]
        cpu = time.process_time() - self._start[1]
        rule = "===" + "-" * 73 + "==="
        lines = [rule, "Execution time report".center(79), rule,
                 f"  Total Execution Time: {wall:.4f} seconds ({cpu:.4f} seconds CPU)", "",
                 "   ----Wall Time----    ----CPU Time----  ----Name----"]
        for name, (w, c) in self.steps.items():
            lines.append(f"  {w:8.4f} ({100 * w / wall if wall else 0:5.1f}%)  {c:8.4f} ({100 * c / cpu if cpu else 0:5.1f}%)"
                         f"  {name}")
        lines.append(f"  {wall:8.4f} (100.0%)  {cpu:8.4f} (100.0%)  Total")
        return "\n".join(lines)


def _syntax(args: argparse.Namespace, name: str) -> str | None:
    if args.frontend:
        return args.frontend
    return {".fir": "fir", ".mlir": "mlir"}.get(os.path.splitext(name)[1])  # None: sniff the text


def _process(args: argparse.Namespace, chunk: str, name: str, syntax: str | None, offset: int, ctx, passes,
             timer: _Timer, out: StringIO) -> None:
    """Parse one input chunk, run the passes over it and write its output (FirError on a diagnostic)."""
    from fir import progress
    from fir.api import Program
    from fir.syntax.diagnostics import FirError
    from fir.syntax.frontend import parse_source, verify_module
    from xdsl.utils.exceptions import DiagnosticException

    with progress.task("fir-opt", total=len(passes) + 2) as step:
        step.note("parse")
        module = timer.time("parse and verify", parse_source, chunk, name, syntax, offset, ctx)
        step()
        for k, p in enumerate(passes):
            step.note(p.name)
            try:
                timer.time(p.name, p.apply, ctx, module)
            except DiagnosticException as e:  # xDSL's passes report errors this way
                raise FirError(str(e).split("\n")[0]) from None
            if not args.disable_verify:
                timer.time("verify", verify_module, module)
            if args.print_between_passes and k + 1 < len(passes):
                print(f"// IR after {p.name}:")
                print(Program(module).text(args.target))
            step()
        step.note("print")
        out.write(timer.time("output", Program(module).text, args.target))
        step()


def run(argv: list[str] | None = None) -> int:
    """Parse arguments, process the input, write the output; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.print_op_generic:
        args.target = "mlir"
    if args.target not in TARGETS:
        parser.error(f"argument -t/--target: invalid choice: '{args.target}' (choose from {', '.join(TARGETS)})")
    from fir import progress
    from fir.syntax.diagnostics import FirError
    from fir.syntax.frontend import make_context

    passes = []
    if args.passes:  # xdsl.passes, which the pass registry needs, is a tenth of a second to import
        from fir.passes import parse_pipeline

        try:
            passes = parse_pipeline(args.passes)
        except FirError as e:
            parser.error(f"argument -p/--passes: {e.message}")
    timer = _Timer()
    name = "<stdin>" if args.input_file in (None, "-") else args.input_file
    text = read_text(args.input_file)
    syntax = _syntax(args, name)
    chunks = [(text, 0)]
    if args.split_input_file:
        chunks, line = [], 0
        for piece in text.split(SPLIT_MARKER):
            chunks.append((piece, line))
            line += piece.count("\n")
    ctx = make_context()
    out = StringIO()
    with progress.reporting(progress.terminal(args.quiet)):  # a bar on a terminal after a second of work
        for i, (chunk, offset) in enumerate(chunks):
            if i > 0:
                out.write(SPLIT_MARKER + "\n")
            try:
                _process(args, chunk, name, syntax, offset, ctx, passes, timer, out)
            except FirError as e:
                if not args.verify_diagnostics:
                    report("fir-opt", e, {name: text})
                    return 1
                out.write(e.render({name: text}) + "\n")
    if args.output_file:
        from fir.syntax.files import write_file

        write_file(args.output_file, "the output", lambda f: f.write(out.getvalue().encode("utf-8")))
    else:
        sys.stdout.write(out.getvalue())
    if args.time_passes:
        print(timer.report(), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the fir-opt command."""
    return guarded_main("fir-opt", lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())

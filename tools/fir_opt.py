"""fir-opt: parse a program, run a pass pipeline, print the result (.fir by default, or MLIR generic)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from io import StringIO
from typing import IO

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass, PassPipeline
from xdsl.printer import Printer
from xdsl.utils.exceptions import DiagnosticException
from xdsl.utils.target import Target
from xdsl.xdsl_opt_main import xDSLOptMain

from fir import __version__
from fir.syntax.diagnostics import FirError
from fir.syntax.printer import print_fir
from fir.syntax.frontend import DIALECTS, parse_source, verify_module
from fir.passes import available_passes
from fir_tools.common import guarded_main, read_text, report

SPLIT_MARKER = "// -----"


@dataclass(frozen=True)
class FirTarget(Target):
    """Print in .fir syntax."""

    name = "fir"

    def emit(self, ctx: Context, module: ModuleOp, output: IO[str]) -> None:
        output.write(print_fir(module))


@dataclass(frozen=True)
class GenericMLIRTarget(Target):
    """Print in MLIR generic syntax, which fir-opt also reads."""

    name = "mlir"

    def emit(self, ctx: Context, module: ModuleOp, output: IO[str]) -> None:
        printer = Printer(stream=output, print_generic_format=True)
        printer.print_op(module)
        output.write("\n")


@dataclass(frozen=True)
class CudaTarget(Target):
    """Print each plan's CUDA translation unit and its launch plan."""

    name = "cuda"

    def emit(self, ctx: Context, module: ModuleOp, output: IO[str]) -> None:
        from fir.codegen.cuda_program import cuda_text

        output.write(cuda_text(module))


class FirOptMain(xDSLOptMain):
    """xDSLOptMain with fir's dialects, the .fir frontend, fir's passes and the fir/mlir targets."""

    version_format = f"fir-opt {__version__} (built on xDSL {{xdsl_version}})"

    def __init__(self, args: list[str] | None = None):
        super().__init__(description="fir-opt: run fir passes over a .fir or MLIR program", args=args)

    def register_all_dialects(self) -> None:
        for dialect in DIALECTS:
            self.ctx.register_dialect(dialect.name, lambda d=dialect: d)

    def register_all_frontends(self) -> None:
        # Frontends are chosen in run(): by extension, by -f, or by sniffing stdin.
        self.available_frontends = {"fir": lambda io: None, "mlir": lambda io: None}  # type: ignore[dict-item]

    def register_all_passes(self) -> None:
        for name, factory in available_passes().items():
            self.register_pass(name, factory)

    def register_all_targets(self) -> None:
        self.available_targets = {"fir": lambda: FirTarget, "mlir": lambda: GenericMLIRTarget,
                                  "cuda": lambda: CudaTarget}

    def register_all_arguments(self, arg_parser: argparse.ArgumentParser) -> None:
        super().register_all_arguments(arg_parser)
        arg_parser.set_defaults(target="fir")
        self._arg_parser = arg_parser

    def setup_pipeline(self) -> None:
        def between(prev: ModulePass | None, module: ModuleOp, nxt: ModulePass | None) -> None:
            if not self.args.disable_verify:
                verify_module(module)
            if prev is not None and nxt is not None and self.args.print_between_passes:
                print(f"// IR after {prev.name}:")
                print(self.output_resulting_program(module))

        try:
            self.pipeline = PassPipeline.parse_spec(self.available_passes, self.args.passes, between)
        except BaseException as e:  # xDSL's ArgSpecParseError derives from BaseException
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            self._arg_parser.error(f"argument -p/--passes: {e}")

    def output_resulting_program(self, prog: ModuleOp) -> str:
        out = StringIO()
        target_cls = self.available_targets[self.args.target]()  # type: ignore[call-arg]
        target_cls().emit(self.ctx, prog, out)  # type: ignore[operator]
        return out.getvalue()

    def _syntax(self, name: str, text: str) -> str | None:
        if self.args.frontend:
            return self.args.frontend
        ext = os.path.splitext(name)[1]
        return {".fir": "fir", ".mlir": "mlir"}.get(ext)  # None: sniff the text

    def run_tool(self) -> int:
        """Process the input; return the exit status."""
        name = "<stdin>" if self.args.input_file in (None, "-") else self.args.input_file
        text = read_text(self.args.input_file)
        syntax = self._syntax(name, text)
        chunks = [(text, 0)]
        if self.args.split_input_file:
            chunks, line = [], 0
            for piece in text.split(SPLIT_MARKER):
                chunks.append((piece, line))
                line += piece.count("\n")
        out = StringIO()
        for i, (chunk, offset) in enumerate(chunks):
            if i > 0:
                out.write(SPLIT_MARKER + "\n")
            try:
                module = parse_source(chunk, name, syntax, offset, self.ctx)
                try:
                    self.pipeline.apply(self.ctx, module)
                except DiagnosticException as e:
                    raise FirError(str(e).split("\n")[0]) from None
                out.write(self.output_resulting_program(module))
            except FirError as e:
                if not self.args.verify_diagnostics:
                    report("fir-opt", e, {name: text})
                    return 1
                out.write(e.render({name: text}) + "\n")
        if self.args.output_file:
            try:
                with open(self.args.output_file, "w", encoding="utf-8") as f:
                    f.write(out.getvalue())
            except OSError as e:
                raise FirError(f"cannot write '{self.args.output_file}': {e.strerror}") from None
        else:
            sys.stdout.write(out.getvalue())
        return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the fir-opt command."""
    return guarded_main("fir-opt", lambda: FirOptMain(argv).run_tool())


if __name__ == "__main__":
    sys.exit(main())

"""fir's Python API: load a program, transform or compile it, run it, simulate it, print any stage.

    import fir
    prog = fir.load("examples/tp_mlp.fir")
    result = prog.run(seed=0, check=True)          # numpy backend, virtual devices, checked against the reference
    result.outputs["y"]                            # a numpy array, keyed by result name
    print(prog.apply("sbp-infer,insert-boxing").text())

fir-opt and fir-run are argument parsing and printing over this module (docs/api.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import FuncOp

from fir.syntax.diagnostics import FirError, loc_of
from fir.syntax.frontend import make_context, parse_source, verify_module

if TYPE_CHECKING:  # numpy and the rest load when a program runs: reading and printing one needs none of them
    import numpy as np

    from fir.planning.simulator import SimResult
    from fir.runtime.training import TrainRun
    from fir.planning.trace import TraceEvent
    from fir.runtime.compare import Comparison

BACKENDS = ("numpy", "cuda")
TARGETS = ("fir", "mlir", "cuda")


@dataclass
class RunResult:
    """What running a program produced: its outputs (and inputs) by name, and how it ran."""

    outputs: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    devices: int
    backend: str
    events: list[TraceEvent] = field(default_factory=list)  # the timeline, when run with trace=True
    checks: dict[str, Comparison] = field(default_factory=dict)  # result name -> comparison, when check=True

    def mismatches(self) -> list[str]:
        """The results that differ from the single-device reference (empty unless run with check=True)."""
        return [name for name, c in self.checks.items() if not c.ok]


class Program:
    """A verified fir program (a module of functions and meshes), with the source it came from."""

    def __init__(self, module: ModuleOp, filename: str = "<input>", source: str | None = None):
        self.module = module
        self.filename = filename
        self.source = source

    # ------------------------------------------------------------------------------------------- inspection
    @property
    def functions(self) -> list[str]:
        """The names of the program's functions, in order."""
        return [op.sym_name.data for op in self.module.ops if isinstance(op, FuncOp)]

    def function(self, entry: str | None = None) -> FuncOp:
        """The function to run: `entry`, else the only function, else @main. A module of nothing but device
        programs (partition's output) names its logical program instead: those run only together."""
        from fir.distribution.placement import DEVICE, DEVICES, OF, symbol_name
        from fir.runtime.interpreter import find_function

        funcs = [f for f in self.module.ops if isinstance(f, FuncOp)]
        if entry is None and len(funcs) > 1 and all(DEVICE in f.attributes or DEVICES in f.attributes
                                                    for f in funcs):
            of = symbol_name(funcs[0].attributes.get(OF))
            raise FirError(f"the program holds the device programs of @{of}, which run only together: fir-run "
                           "takes the logical program and compiles it itself (or name one device's program with "
                           "--entry)", loc_of(funcs[0].location))
        return find_function(self.module, entry)

    def text(self, target: str = "fir") -> str:
        """The program printed in .fir syntax, MLIR generic syntax (`mlir`), or as CUDA C (`cuda`, plans only)."""
        if target == "fir":
            from fir.syntax.printer import print_fir

            return print_fir(self.module)
        if target == "mlir":
            from io import StringIO

            from xdsl.printer import Printer

            out = StringIO()
            Printer(stream=out, print_generic_format=True).print_op(self.module)
            return out.getvalue() + "\n"
        if target == "cuda":
            from fir.codegen.cuda_program import cuda_text

            return cuda_text(self.module)
        raise FirError(f"unknown target '{target}' (choose {', '.join(TARGETS)})")

    def __str__(self) -> str:
        return self.text()

    # ------------------------------------------------------------------------------------------- transforming
    def apply(self, passes: str) -> Program:
        """A copy with a pass pipeline applied (fir-opt's `-p` syntax, e.g. "sbp-infer,insert-boxing"),
        verified after every pass."""
        from fir.passes import parse_pipeline

        module = self.module.clone()
        ctx = make_context()
        for p in parse_pipeline(passes):
            p.apply(ctx, module)
            verify_module(module)
        return Program(module, self.filename, self.source)

    def compile(self, entry: str | None = None, microbatches: int | None = None,
                schedule: str | None = None, verify_each: bool | None = None, expand: bool = False) -> Program:
        """The entry function compiled to execution plans, in a program of its own: micro-batching when asked,
        distribution when it is placed on a mesh, then fuse, schedule and plan-memory, verified at the end (after
        every pass with `verify_each`; default FIR_VERIFY_EACH). A plan is returned as it is: reading it verified
        it, memory plan included. One plan per class of devices (SPMD plans); expand=True writes every
        device's."""
        from fir.compile import compile_plan
        from fir.dialects.sbp import MeshOp
        from fir.distribution.microbatching import microbatch_axes
        from fir.planning.plan_ir import is_plan

        func = self.function(entry)
        _check_runs_alone(func)
        if is_plan(func):
            for flag, given in (("--microbatches", microbatches is not None), ("--schedule", schedule)):
                if given:
                    raise FirError(f"{flag} shapes how a program is compiled, but @{func.sym_name.data} is a plan "
                                   "already", loc_of(func.location))
            return self
        if microbatches is not None and microbatches > 1 and not microbatch_axes(func):
            raise FirError(f"--microbatches {microbatches}: no argument of @{func.sym_name.data} is marked "
                           "`microbatch = axis`, so there is nothing to split", loc_of(func.location))
        alone = ModuleOp([op.clone() for op in self.module.ops if isinstance(op, MeshOp)] + [func.clone()])
        return Program(compile_plan(alone, microbatches or 1, schedule or "1f1b", verify_each=verify_each,
                                    expand=expand), self.filename, self.source)

    # ------------------------------------------------------------------------------------------- inputs
    def random_inputs(self, seed: int = 0, entry: str | None = None) -> dict[str, np.ndarray]:
        """Random inputs by argument name (floats ~ N(0, 1), integers in the range their uses allow)."""
        from fir.runtime.inputs import arg_names, random_inputs

        func = self.function(entry)
        return dict(zip(arg_names(func), random_inputs(func, seed)))

    def _bind(self, func: FuncOp, inputs: Mapping[str, np.ndarray] | str | None, seed: int | None
              ) -> list[np.ndarray]:
        from fir.runtime.inputs import bind_inputs, load_inputs, random_inputs

        if inputs is not None and seed is not None:
            raise FirError("give inputs or a seed, not both")
        if isinstance(inputs, str):
            return load_inputs(inputs, func)
        if inputs is not None:
            return bind_inputs(dict(inputs), func, "inputs")
        return random_inputs(func, 0 if seed is None else seed)

    # ------------------------------------------------------------------------------------------- running
    def reference(self, inputs: Mapping[str, np.ndarray] | str | None = None, *, seed: int | None = None,
                  entry: str | None = None) -> dict[str, np.ndarray]:
        """The single-device reference results (the interpreter, no plan) by result name."""
        from fir.runtime.inputs import result_names
        from fir.runtime.interpreter import run_function

        func = self.function(entry)
        outs = run_function(self.module, func, self._bind(func, inputs, seed))
        return dict(zip(result_names(func), outs))

    def run(self, inputs: Mapping[str, np.ndarray] | str | None = None, *, seed: int | None = None,
            entry: str | None = None, devices: int | None = None, microbatches: int | None = None,
            schedule: str | None = None, backend: str = "numpy", interleave: str = "in-order",
            interleave_seed: int = 0, trace: bool = False, check: bool = False,
            verify_each: bool | None = None) -> RunResult:
        """Compile the entry function and run exactly its plans; `inputs` by argument name (a dict of arrays or
        an .npz path; random from `seed` when absent). `check` compares every result with the reference."""
        from fir.dialects import dtypes
        from fir.planning.plan_ir import is_plan
        from fir.runtime.inputs import arg_names, result_names

        func = self.function(entry)
        if check and is_plan(func):
            raise FirError("--check needs the logical program: this function is already a plan", loc_of(func.location))
        name = func.sym_name.data
        try:
            args = self._bind(func, inputs, seed)
            execute, n = self._executor(name, devices, microbatches, schedule, backend, verify_each)
            run = execute(args, interleave, interleave_seed, trace)
        except MemoryError:
            need = sum(dtypes.nbytes(a.type) for a in func.body.blocks.first.args)  # type: ignore[union-attr]
            raise FirError(f"out of memory running @{name} (its inputs alone take {need} bytes)",
                           loc_of(func.location)) from None
        names = result_names(func)
        result = RunResult(dict(zip(names, run.outputs)), dict(zip(arg_names(func), args)), n, backend,
                           list(getattr(run, "events", [])))
        if check:
            from fir.runtime.compare import compare_all
            from fir.runtime.interpreter import run_function

            types = [dtypes.dtype_name(t.element_type) for t in func.function_type.outputs.data]
            want = run_function(self.module, func, args)
            result.checks = dict(zip(names, compare_all(run.outputs, want, types)))
        return result

    def _executor(self, name: str, devices: int | None, microbatches: int | None, schedule: str | None,
                  backend: str, verify_each: bool | None):
        """(run, device count): the function compiled once, and what runs its plans on arguments (in order) with
        an interleaving, a seed and a trace flag; both backends run each class's SPMD plan on every device."""
        from fir.runtime.virtual_devices import check_devices, devices_needed

        if backend not in BACKENDS:
            raise FirError(f"unknown backend '{backend}' (choose {', '.join(BACKENDS)})")
        planned = self.compile(name, microbatches, schedule, verify_each).module
        n = devices or devices_needed(planned)
        check_devices(planned, n)

        def execute(args: list, interleave: str, interleave_seed: int, trace: bool):
            if backend == "cuda":
                from fir.runtime.cuda_backend import execute_plan_cuda

                return execute_plan_cuda(planned, name, args, n)
            from fir.runtime.plan_executor import execute_plan

            return execute_plan(planned, name, args, n, interleaving=interleave, seed=interleave_seed, trace=trace)

        return execute, n

    def train(self, steps: int, inputs: Mapping[str, np.ndarray] | str | None = None, *, seed: int | None = None,
              state: Mapping[str, np.ndarray] | str | None = None, batches: Mapping[str, np.ndarray] | str | None = None,
              entry: str | None = None, devices: int | None = None, microbatches: int | None = None,
              schedule: str | None = None, backend: str = "numpy", interleave: str = "in-order",
              interleave_seed: int = 0, check: bool = False, verify_each: bool | None = None,
              on_step=None) -> TrainRun:
        """Compile a training step (the train-step pass's output) once and run it `steps` times, each result
        `X.next` fed back as argument X (fir.runtime.training): `state` a dict or safetensors path of training
        state, `batches` stacked batches (a dict or .npz path of [K, ...] arrays); `check` compares every step
        with the single-device reference."""
        import numpy as np

        from fir.dialects import dtypes
        from fir.runtime import training
        from fir.runtime.compare import compare_all
        from fir.runtime.inputs import arg_names, result_names
        from fir.runtime.interpreter import run_function

        func = self.function(entry)
        name = func.sym_name.data
        training.state_names(func)  # a training step, or an error before compiling
        first = dict(zip(arg_names(func), self._bind(func, inputs, seed)))
        if isinstance(state, str):
            state = training.load_state(state, func)
        current = training.initial_inputs(func, first, dict(state) if state is not None else None)
        stacked = None
        if batches is not None:
            data = dict(np.load(batches)) if isinstance(batches, str) else dict(batches)
            stacked = training.stacked_batches(data, func, f"batches '{batches}'" if isinstance(batches, str)
                                               else "the batches")
        execute, _ = self._executor(name, devices, microbatches, schedule, backend, verify_each)
        names = result_names(func)
        types = [dtypes.dtype_name(t.element_type) for t in func.function_type.outputs.data]

        def step(args: dict[str, np.ndarray]):
            ordered = [args[a] for a in arg_names(func)]
            outs = execute(ordered, interleave, interleave_seed, False).outputs
            checks = None
            if check:
                checks = dict(zip(names, compare_all(outs, run_function(self.module, func, ordered), types)))
            return dict(zip(names, outs)), checks

        return training.train(step, func, current, steps, stacked, on_step)

    def simulate(self, *, entry: str | None = None, hardware: str | None = None, microbatches: int | None = None,
                 schedule: str | None = None, verify_each: bool | None = None) -> SimResult:
        """Replay the entry function's plans on a hardware model (a preset name or a .toml path) and time them
        (each class of devices' plan once: fir.planning.simulator)."""
        from fir.distribution.placement import device_count
        from fir.planning.hardware import DEFAULT_HARDWARE, load_hardware
        from fir.planning.simulator import simulate

        func = self.function(entry)
        planned = self.compile(func.sym_name.data, microbatches, schedule, verify_each).module
        hw = load_hardware(hardware or DEFAULT_HARDWARE, device_count(planned))
        return simulate(planned, func.sym_name.data, hw)


def _check_runs_alone(func: FuncOp) -> None:
    """A device program (partition's output, planned or not) runs alone only when it talks to no other device;
    comm ops are left only in device programs, which run together with the other devices' programs."""
    from fir.dialects.comm import CommOp
    from fir.distribution.placement import DEVICE, DEVICES, places

    if places(func) and DEVICE not in func.attributes:
        return  # a logical program: the distribution passes place its comm ops
    if DEVICES in func.attributes:
        raise FirError(f"@{func.sym_name.data} is an SPMD program (spmd-partition's output), which its devices run "
                       "together; run the logical program, which fir-run partitions itself", loc_of(func.location))
    for op in func.body.ops:
        if isinstance(op, CommOp):
            raise FirError(f"'{op.name}' needs the other devices: @{func.sym_name.data} is one device's program "
                           "(partition's output) and cannot run alone; run the logical program, which fir-run "
                           "partitions itself", loc_of(op.location))


def parse(text: str, filename: str = "<input>", syntax: str | None = None) -> Program:
    """Parse and verify a program from text (.fir or MLIR generic syntax, detected when `syntax` is None)."""
    return Program(parse_source(text, filename, syntax), filename, text)


def load(path: str, syntax: str | None = None) -> Program:
    """Read, parse and verify a program file (`.mlir` files are read as MLIR generic syntax)."""
    from fir.syntax.frontend import load_file

    module, text = load_file(path, syntax)
    return Program(module, path, text)

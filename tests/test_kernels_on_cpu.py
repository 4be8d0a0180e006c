"""Every generated CUDA kernel, run on the CPU through the emulator (tests/cuda_emu.h, tests/cuda_emulator.py) and
checked numerically against fir.runtime.reference, so CI without a GPU still runs them:

(a) every distinct kernel of every example, as fir-run plans it, on random inputs suited to its flow op;
(b) the cases of test_codegen_matmul / _reduction / _layout, through their own GPU tests: their `run_kernel`
    is swapped for the emulator (a first pass records each launch, one program runs them all, a second pass
    replays the outputs), so inputs, references and comparisons are theirs;
(c) the emulator catches bugs: missing barriers, divergent barriers, deadlocks, misaligned WMMA tiles, writes
    past a buffer (canaries, and ASan), and kernels set fir_status on bad indices / labels.

Left out, because the emulator runs a block's threads one after another (about 10^8 simple operations a
second): the two 4096x4096x4096 matmul cases (6.9e10 multiply-adds each); they are covered at smaller sizes
by the large-tile cases (f32_large_ragged, bf16_large_ragged, f16_large_batched use the same 128x128 tiles).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import numpy as np
import pytest
import test_codegen_layout as tl
import test_codegen_matmul as tm
import test_codegen_reduction as tr
from cuda_emulator import EmulatorError, Outcome, needs_gxx, run_many, run_on_cpu, run_outcomes
from cuda_util import assert_matches
from test_codegen_examples import EXAMPLES, planned

import fir.codegen.matmul as matmul_mod
import fir.codegen.source as source_mod
from fir.dialects import dtypes
from fir.codegen import cuda_program
from fir.codegen.cuda_program import module_code
from fir.distribution.placement import program_devices
from fir.distribution.sbp import Mesh
from fir.codegen.elementwise import elementwise_kernel
from fir.codegen.kernel_ir import SYNC, For, If, Kernel, Param, Raw, Stmt, lit, render_kernel
from fir.codegen.layout import gather_kernel, transpose_kernel
from fir.codegen.prelude import PRELUDE, STATUS_EMPTY_MEAN, STATUS_INDEX_OUT_OF_RANGE, STATUS_LABEL_OUT_OF_RANGE
from fir.codegen.reduction import cross_entropy_kernel, reduce_kernel
from fir.dialects.base import to_tt
from fir.dialects.flow import (CastOp, CrossEntropyOp, FusedOp, GatherOp, MatmulOp, ReduceMeanOp, ReduceSumOp,
                               TransposeOp)
from fir.runtime.gpu_actions import launched
from fir.runtime.interpreter import evaluate_op

pytestmark = needs_gxx

# ----------------------------------------------------------------------------------------------- (a) examples


@dataclasses.dataclass
class ExampleKernel:
    label: str
    op: object
    kernel: Kernel


@functools.cache
def example_kernels() -> list[ExampleKernel]:
    """Each distinct kernel of every example's device programs once, renamed uniquely, with a flow op it serves."""
    out: dict[str, ExampleKernel] = {}
    for path in EXAMPLES:
        stem = os.path.splitext(os.path.basename(path))[0]
        for _, code in module_code(planned(path)):
            op_of = {}
            for op, launch in code.launches.items():
                op_of.setdefault(launch.kernel, op)
            for k in code.kernels:
                key = "\n".join((render_kernel(k), *k.helpers)).replace(k.name, "@")
                if key not in out:
                    name = f"{stem}_{len(out)}_{k.name}"
                    out[key] = ExampleKernel(name, op_of[k.name], dataclasses.replace(k, name=name))
    return list(out.values())


def _body_ops(op) -> list:
    return list(op.body_ops()) if isinstance(op, FusedOp) else [op]


def inputs_for_op(op, seed: int) -> list[np.ndarray]:
    """Random operands in the op's dtypes: matmul and row-wise ops as their codegen tests feed them; else floats
    ~ N(0, 1), gather indices below the table's axis, integers in [-1000, 1000) ([1, 16) under div / pow),
    i1 fair coins. An SSA value used twice (flow.mul %d, %d) gets one array: kernels may read either copy."""
    ins = _random_operands(op, seed)
    for i, v in enumerate(op.operands):
        first = next(j for j, w in enumerate(op.operands) if w is v)
        ins[i] = ins[first]
    return ins


# The ops whose inputs test_codegen_reduction knows how to make (labels in range, ...).
REDUCTION_OPS = {"flow.reduce_sum", "flow.reduce_mean", "flow.reduce_max", "flow.softmax", "flow.layernorm",
                 "flow.cross_entropy"}


def _random_operands(op, seed: int) -> list[np.ndarray]:
    if isinstance(op, MatmulOp):
        return tm.inputs_for(op, seed)
    if op.name in REDUCTION_OPS:
        return tr.inputs_for(op, seed)
    rng = np.random.default_rng(seed)
    small = any(o.name in ("flow.div", "flow.pow") for o in _body_ops(op))
    out = []
    for i, v in enumerate(op.operands):
        shape, dt = to_tt(v.type)
        npdt = dtypes.numpy_dtype(dt)
        if isinstance(op, GatherOp) and i == 1:
            table = to_tt(op.operands[0].type)[0]
            bound = table[op.attr_values()["axis"] % len(table)]
            arr = rng.integers(0, bound, size=shape)
        elif dtypes.is_float(dt):
            arr = rng.standard_normal(shape)
        elif dt == "i1":
            arr = rng.integers(0, 2, size=shape)
        else:
            arr = rng.integers(1, 16, size=shape) if small else rng.integers(-1000, 1000, size=shape)
        out.append(np.ascontiguousarray(np.asarray(arr).astype(np.float32 if dtypes.is_float(dt) else npdt)
                                        .astype(npdt)).reshape(shape))
    return out


def _rank_values(op) -> list[int]:
    """Scalar arguments for an SPMD plan's kernel: those of the last device of its class (the largest coordinate
    or piece start)."""
    last = program_devices(op.parent_op())[-1]
    return [r.value(MESHES, last) for r in cuda_program.rank_args(op)]


MESHES = {"m": Mesh("m", (3,), (0, 1, 2))}  # the mesh of tests/data/spmd_positions.fir


@functools.cache
def example_outcomes() -> dict[str, tuple[Outcome, np.ndarray, str]]:
    """label -> (emulator outcome, reference output, result dtype), all examples' kernels in one program."""
    jobs, refs = [], []
    for i, ek in enumerate(example_kernels()):
        ins = inputs_for_op(ek.op, 1000 + i)
        shape, dt = to_tt(ek.op.results[0].type)
        values = _rank_values(ek.op)
        jobs.append((ek.kernel, shape, dtypes.numpy_dtype(dt), ins + [np.array([v], np.int64) for v in values]))
        refs.append((launched(ek.op, ins, values), dt))
    outs = run_outcomes(jobs)
    return {ek.label: (o, ref, dt) for ek, o, (ref, dt) in zip(example_kernels(), outs, refs)}


def test_examples_have_many_kernels():
    assert len(example_kernels()) > len(EXAMPLES)


@pytest.mark.parametrize("label", [ek.label for ek in example_kernels()])
def test_example_kernel_matches_reference(label: str):
    outcome, want, dt = example_outcomes()[label]
    if outcome.error is not None:
        raise outcome.error
    assert outcome.status == 0
    assert_matches(outcome.output, want, dt)


# ----------------------------------------------------------------------------------------------- (b) codegen cases
class _Launches:
    """Stands in for cuda_util.run_kernel: replays the emulator's output of a launch it has seen (same kernel name
    and inputs); records a new launch and returns zeros (or raises, when `strict`)."""

    def __init__(self, recorded: dict[str, tuple[list[np.ndarray], Outcome]], strict: bool = False) -> None:
        self.recorded = recorded
        self.strict = strict
        self.new: list[tuple[Kernel, tuple[int, ...], np.dtype, list[np.ndarray]]] = []

    def __call__(self, kernel, out_shape, out_dtype, inputs):
        inputs = [np.ascontiguousarray(x) for x in inputs]
        if kernel.name not in self.recorded:
            assert not self.strict, f"{kernel.name} was not run on the emulator"
            self.new.append((kernel, tuple(out_shape), np.dtype(out_dtype), inputs))
            return np.zeros(out_shape, out_dtype)
        ins, outcome = self.recorded[kernel.name]
        assert len(ins) == len(inputs) and all(np.array_equal(a, b, equal_nan=True) for a, b in zip(ins, inputs)), \
            f"{kernel.name}: inputs differ from the recorded launch"
        if outcome.error is not None:
            raise outcome.error
        return outcome.output


def _emulate(module, tests: list[Callable[[], None]]) -> dict[str, tuple[list[np.ndarray], Outcome]]:
    """Run the module's GPU tests with a recording run_kernel, then every launch they made in one emulator program;
    again while a test gets further (to a later launch) with the outputs so far."""
    recorded: dict[str, tuple[list[np.ndarray], Outcome]] = {}
    for _ in range(4):
        launches = _Launches(recorded)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(module, "run_kernel", launches)
            for t in tests:
                try:
                    t()
                except (AssertionError, EmulatorError):  # zeros are not the answer; errors are replayed later
                    pass
        if not launches.new:
            break
        for (k, _, _, ins), o in zip(launches.new, run_outcomes(launches.new)):
            recorded[k.name] = (ins, o)
    return recorded


def _replay(module, recorded, test: Callable[[], None]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "run_kernel", _Launches(recorded, strict=True))
        test()


# Too big for the emulator (see the module docstring).
MATMUL_SKIPPED = {"f32_4096", "bf16_4096"}
MATMUL_RUN = [i for i, c in enumerate(tm.CASES) if c.label not in MATMUL_SKIPPED]


@functools.cache
def matmul_recorded():
    return _emulate(tm, [functools.partial(tm.test_matches_reference, i) for i in MATMUL_RUN])


# The two 4096^3 cases (6.9e10 multiply-adds each) are left to the GPU tests; the same 128x128-tile code runs
# here in the *_large_* cases.
@pytest.mark.parametrize("index", MATMUL_RUN, ids=[tm.CASES[i].label for i in MATMUL_RUN])
def test_matmul_case(index: int):
    _replay(tm, matmul_recorded(), functools.partial(tm.test_matches_reference, index))


REDUCTION_EXTRA = {
    "softmax_non_finite_rows": tr.test_softmax_non_finite_rows,
    **{f"cross_entropy_bad_label_{r}": functools.partial(tr.test_cross_entropy_bad_label_is_nan, r)
       for r in ("none", "sum", "mean")},
}


@functools.cache
def reduction_recorded():
    tests = [functools.partial(tr.test_matches_reference, i) for i in range(len(tr.CASES))]
    return _emulate(tr, tests + list(REDUCTION_EXTRA.values()))


@pytest.mark.parametrize("index", range(len(tr.CASES)), ids=[c.label for c in tr.CASES])
def test_reduction_case(index: int):
    _replay(tr, reduction_recorded(), functools.partial(tr.test_matches_reference, index))


@pytest.mark.parametrize("name", list(REDUCTION_EXTRA))
def test_reduction_extra(name: str):
    _replay(tr, reduction_recorded(), REDUCTION_EXTRA[name])


LAYOUT_LABELS = [c[0] for c in tl.cases()]


@functools.cache
def layout_recorded():
    tests = [functools.partial(tl.test_kernel_on_the_gpu, label) for label in LAYOUT_LABELS]
    return _emulate(tl, tests + [tl.test_transfer_kernels_on_the_gpu])


@pytest.mark.parametrize("label", LAYOUT_LABELS)
def test_layout_case(label: str):
    _replay(tl, layout_recorded(), functools.partial(tl.test_kernel_on_the_gpu, label))


def test_transfer_kernels():
    _replay(tl, layout_recorded(), tl.test_transfer_kernels_on_the_gpu)


# ----------------------------------------------------------------------------------------------- emulator checks
def _tensor_op(cls, types, **attrs):
    from xdsl.ir import Block

    args = list(Block(arg_types=[dtypes.tensor_type(s, d) for s, d in types]).args)
    return cls.make(args, **attrs)


def test_conversions_round_to_nearest_even():
    """f32 -> f16 / bf16 casts (fir_st) agree bit for bit with numpy / ml_dtypes, subnormals, overflow and ties
    included; NaN stays NaN."""
    rng = np.random.default_rng(0)
    bits = np.concatenate([rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32),
                           np.arange(0x33000000 - 3000, 0x38800000 + 3000, 97, dtype=np.uint32),  # subnormal halves
                           np.array([0x477fefff, 0x477ff000, 0x477ff001, 0x7f800000, 0xff800000, 0x7fc00000, 0,
                                     0x80000000, 0x33000000, 0x33000001, 0x7f7fffff], np.uint32)])
    x = bits.view(np.float32)
    jobs = []
    for dt in ("f16", "bf16"):
        op = _tensor_op(CastOp, [(x.shape, "f32")], result_type=dtypes.tensor_type(x.shape, dt))
        jobs.append((elementwise_kernel(f"cast_{dt}", op), x.shape, dtypes.numpy_dtype(dt), [x]))
    for (got, status), dt in zip(run_many(jobs), ("f16", "bf16")):
        with np.errstate(over="ignore", invalid="ignore"):
            want = x.astype(dtypes.numpy_dtype(dt))
        gb, wb = got.view(np.uint16), want.view(np.uint16)
        nan = np.isnan(want.astype(np.float32))
        assert np.isnan(got[nan].astype(np.float32)).all()
        np.testing.assert_array_equal(gb[~nan], wb[~nan])
        assert status == 0


def _strip_barriers(stmts: list[Stmt], barrier: str = SYNC.text) -> list[Stmt]:
    """The statements without any `barrier` (__syncthreads(); by default)."""
    out: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Raw) and s.text == barrier:
            continue
        if isinstance(s, For):
            s = dataclasses.replace(s, body=_strip_barriers(s.body, barrier))
        elif isinstance(s, If):
            s = dataclasses.replace(s, then=_strip_barriers(s.then, barrier), orelse=_strip_barriers(s.orelse, barrier))
        out.append(s)
    return out


def _has_barrier(stmts: list[Stmt]) -> bool:
    return any((isinstance(s, Raw) and s.text == SYNC.text)
               or (isinstance(s, For) and _has_barrier(s.body))
               or (isinstance(s, If) and (_has_barrier(s.then) or _has_barrier(s.orelse))) for s in stmts)


def test_missing_barriers_give_wrong_results():
    """A transpose, SIMT and WMMA matmuls and a block reduction each compute right, and wrong once a __syncthreads
    (or the __syncwarp before lanes read the WMMA tile other lanes stored) is gone."""
    rng = np.random.default_rng(0)
    jobs, wants = [], []
    t_op = _tensor_op(TransposeOp, [((3, 40, 70), "f32")], perm=[0, 2, 1])
    t_k = transpose_kernel("tr_ok", t_op)
    assert _has_barrier(t_k.body)
    m_op = tm.mnk(70, 90, 100, "f32")
    w_op = tm.mnk(70, 90, 100, "bf16")
    cases = [(t_op, t_k, SYNC.text), (m_op, tm.matmul_kernel("mm_ok", m_op), SYNC.text),
             (w_op, tm.matmul_kernel("wmma_ok", w_op), SYNC.text),
             (w_op, tm.matmul_kernel("wmma_warp_ok", w_op), "__syncwarp();")]
    for op, k, barrier in cases:
        ins = [rng.standard_normal(to_tt(v.type)[0]).astype(np.float32).astype(v_np)
               for v, v_np in ((v, dtypes.numpy_dtype(to_tt(v.type)[1])) for v in op.operands)]
        shape, dt = to_tt(op.results[0].type)
        want = evaluate_op(op, ins)
        broken = dataclasses.replace(k, name=k.name.replace("ok", "nosync"), body=_strip_barriers(k.body, barrier))
        assert broken.body != k.body
        jobs += [(k, shape, want.dtype, ins), (broken, shape, want.dtype, ins)]
        wants += [(want, dt), (want, dt)]
    outs = run_many(jobs)
    for (got, _), (want, dt), (k, *_) in zip(outs, wants, jobs):
        rtol, atol = dtypes.TOLERANCE[dt]
        close = np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol)
        assert close == ("nosync" not in k.name), k.name

    # fir_block_sum without its second barrier: warps read the scratch before every warp wrote it.
    red_op, red_k = tr.emit(tr.Case("sum", lambda: tr.red(tr.ReduceSumOp, (20, 600), "f32", [-1])))
    assert "fir_block_sum<float>" in render_kernel(red_k)
    ins = tr.inputs_for(red_op, 0)
    want = evaluate_op(red_op, ins)
    np.testing.assert_allclose(run_on_cpu(red_k, want.shape, np.float32, ins), want, rtol=1e-4, atol=1e-5)
    sync = "  __syncthreads();\n"
    start = PRELUDE.index("fir_block_sum(T v, T* scratch)")
    second = PRELUDE.index(sync, PRELUDE.index(sync, start) + 1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(source_mod, "PRELUDE", PRELUDE[:second] + PRELUDE[second + len(sync):])
        got = run_on_cpu(red_k, want.shape, np.float32, ins)
    assert not np.allclose(got, want, rtol=1e-4, atol=1e-5)


def _raw_kernel(name: str, threads: int, *lines: str) -> Kernel:
    return Kernel(name, [Param("out", "float", const=False)], [Raw(line) for line in lines], (2, 1, 1),
                  (threads, 1, 1))


def test_divergent_barriers_and_deadlocks_abort():
    jobs = [
        (_raw_kernel("exit_early", 64, "if (threadIdx.x >= 32) return;", "__syncthreads();"), (1,), np.float32, []),
        (_raw_kernel("barrier_in_branch", 64, "if (threadIdx.x < 32) { __syncthreads(); }"), (1,), np.float32, []),
        (_raw_kernel("deadlock", 64, "if (threadIdx.x == 32) { __syncwarp(); } else { __syncthreads(); }"),
         (1,), np.float32, []),
        (_raw_kernel("mixed_warp", 32, "if (threadIdx.x < 16) { __syncwarp(); } else { "
                                       "out[0] = __shfl_xor_sync(0xffffffffu, 1.0f, 1); }"), (1,), np.float32, []),
        (_raw_kernel("fine", 64, "if (threadIdx.x >= 32) { __syncwarp(); }", "__syncthreads();",
                     "float v = __shfl_down_sync(0xffffffffu, (float)threadIdx.x, 1);",
                     "if (threadIdx.x == 40 && blockIdx.x == 1) out[0] = v;"), (1,), np.float32, []),
    ]
    outs = run_outcomes(jobs)
    expect = {"exit_early": "divergent __syncthreads", "barrier_in_branch": "divergent __syncthreads",
              "deadlock": "deadlock", "mixed_warp": "divergent warp barrier"}
    for (k, *_), o in zip(jobs, outs):
        if k.name == "fine":
            assert o.error is None and o.output[0] == 41.0
        else:
            assert o.error is not None and expect[k.name] in str(o.error), (k.name, o.error)


def test_misaligned_wmma_tiles_abort(monkeypatch):
    monkeypatch.setattr(matmul_mod, "HPAD", 4)  # shared rows of 36 / 68 halves: ldm no longer 16-byte aligned
    op = tm.mnk(20, 30, 40, "f16")
    k = tm.matmul_kernel("mm_bad_ldm", op)
    ins = tm.inputs_for(op, 0)
    with pytest.raises(EmulatorError, match="ldm"):
        run_on_cpu(k, to_tt(op.results[0].type)[0], np.float16, ins)


def _unguarded(k: Kernel, n: int, bigger: int) -> Kernel:
    """The grid-stride loop of an elementwise kernel over n elements, run to `bigger` instead."""
    body = [dataclasses.replace(s, stop=lit(bigger)) if isinstance(s, For) else s for s in k.body]
    assert body != k.body
    return dataclasses.replace(k, name=k.name + "_unguarded", body=body)


def _add_op(n: int):
    from fir.dialects.flow import AddOp

    return _tensor_op(AddOp, [((n,), "f32"), ((n,), "f32")])


def test_writes_past_the_buffer_abort():
    op = _add_op(1000)
    k = _unguarded(elementwise_kernel("add_1000", op), 1000, 1024)  # 4 blocks of 256 threads
    x = np.ones(1000, np.float32)
    with pytest.raises(EmulatorError, match="wrote outside buffer 0"):
        run_on_cpu(k, (1000,), np.float32, [x, x], sanitize=False)


@pytest.mark.skipif(os.environ.get("FIR_EMU_SKIP_ASAN") == "1", reason="FIR_EMU_SKIP_ASAN=1")
def test_address_sanitizer_catches_out_of_bounds():
    op = _add_op(1000)
    k = _unguarded(elementwise_kernel("add_1000", op), 1000, 1001)  # reads and writes one element past the end
    x = np.ones(1000, np.float32)
    with pytest.raises(EmulatorError, match="AddressSanitizer"):
        run_on_cpu(k, (1000,), np.float32, [x, x], sanitize=True)


def test_bad_indices_and_labels_set_fir_status():
    table = np.arange(24, dtype=np.float32).reshape(6, 4)
    g_op = _tensor_op(GatherOp, [((6, 4), "f32"), ((5,), "i32")], axis=0)
    ce_op = _tensor_op(CrossEntropyOp, [((4, 10), "f32"), ((4,), "i32")], reduction="none")
    logits = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    jobs = [(gather_kernel("gather_ok", g_op), (5, 4), np.float32, [table, np.array([0, 5, 2, 3, 1], np.int32)]),
            (gather_kernel("gather_bad", g_op), (5, 4), np.float32, [table, np.array([0, 6, 2, -1, 1], np.int32)]),
            (cross_entropy_kernel("ce_ok", ce_op), (4,), np.float32, [logits, np.array([1, 9, 3, 0], np.int32)]),
            (cross_entropy_kernel("ce_bad", ce_op), (4,), np.float32, [logits, np.array([1, 10, 3, 0], np.int32)])]
    (g_ok, s0), (g_bad, s1), (ce_ok, s2), (ce_bad, s3) = run_many(jobs)
    assert (s0, s1, s2, s3) == (0, STATUS_INDEX_OUT_OF_RANGE, 0, STATUS_LABEL_OUT_OF_RANGE)
    np.testing.assert_array_equal(g_ok, table[[0, 5, 2, 3, 1]])
    np.testing.assert_array_equal(g_bad[[0, 2, 4]], table[[0, 2, 1]])
    assert np.isfinite(ce_ok).all() and np.isnan(ce_bad[1]) and np.isfinite(ce_bad[[0, 2, 3]]).all()


def test_a_mean_over_nothing_sets_fir_status():
    """The reference raises for a mean over no elements; the kernels report it through fir_status."""
    mean_op = _tensor_op(ReduceMeanOp, [((3, 0), "f32")], axes=[1])
    sum_op = _tensor_op(ReduceSumOp, [((3, 0), "f32")], axes=[1])
    ce_op = _tensor_op(CrossEntropyOp, [((0, 10), "f32"), ((0,), "i32")], reduction="mean")
    empty = np.zeros((3, 0), np.float32)
    jobs = [(reduce_kernel("mean_empty", mean_op), (3,), np.float32, [empty]),
            (reduce_kernel("sum_empty", sum_op), (3,), np.float32, [empty]),
            (cross_entropy_kernel("ce_empty", ce_op), (), np.float32, [np.zeros((0, 10), np.float32),
                                                                      np.zeros((0,), np.int32)])]
    (mean, s0), (total, s1), (ce, s2) = run_many(jobs)
    assert (s0, s1, s2) == (STATUS_EMPTY_MEAN, 0, STATUS_EMPTY_MEAN)
    assert np.isnan(mean).all() and np.isnan(ce) and (total == 0).all()

"""Property tests: random programs on random meshes with random SBP hints give the single-device results."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, ModuleOp, SymbolRefAttr

from fir.distribution import layout
from fir.dialects.base import to_tt
from fir.dialects.dtypes import TOLERANCE
from fir.dialects.flow import FlowOp
from fir.dialects.sbp import MESH, SBP, MeshOp, nd_to_attr
from fir.compile import distribute
from fir.syntax.printer import print_fir
from fir.syntax.frontend import parse_source, verify_module
from fir.runtime.virtual_devices import run_partitioned
from fir.distribution.sbp import B, P, Partial, S
from fir.distribution.rules import nd_signatures
from test_random_programs import SETTINGS, programs, random_inputs, run, the_func

MESH_SHAPES = [(1,), (2,), (3,), (4,), (2, 2), (2, 3), (3, 2)]


def _layouts(shape: tuple[int, ...], mesh_shape: tuple[int, ...]) -> list:
    """Every nd-SBP of S/B/P that can lay out `shape` on the mesh."""
    per_axis = [B, P, *(S(i) for i in range(len(shape)))]
    out = [()]
    for _ in mesh_shape:
        out = [nd + (s,) for nd in out for s in per_axis]
    return [nd for nd in out if layout.check_nd(shape, nd, mesh_shape) is None]


def _distribute_randomly(module: ModuleOp, draw) -> None:
    """Put the function on a random mesh, with random argument layouts and random op result hints."""
    mesh_shape = draw(st.sampled_from(MESH_SHAPES))
    module.body.block.insert_op_before(MeshOp.make("m", mesh_shape, tuple(range(int(np.prod(mesh_shape))))),
                                       module.body.block.first_op)
    func = the_func(module)
    func.attributes[MESH] = SymbolRefAttr("m")
    dicts = []
    for a in func.body.blocks.first.args:
        options = _layouts(to_tt(a.type)[0], mesh_shape)
        dicts.append(DictionaryAttr({SBP: nd_to_attr(draw(st.sampled_from(options)))}))
    func.arg_attrs = ArrayAttr(dicts) if dicts else None
    for op in func.body.blocks.first.ops:
        if isinstance(op, FlowOp) and draw(st.integers(0, 3)) == 0:
            ins = [to_tt(v.type)[0] for v in op.operands]
            sigs = nd_signatures(op.name, ins, to_tt(op.results[0].type)[0], op.attr_values(), mesh_shape)
            # A partial input cannot be made from S or B, so hint only results reachable from any operand.
            sigs = [s for s in sigs if not any(isinstance(x, Partial) for nd in s.ins for x in nd)]
            op.attributes[SBP] = nd_to_attr(draw(st.sampled_from(sigs)).out)
    verify_module(module)


def _close(got: np.ndarray, want: np.ndarray, dtype: str) -> bool:
    g, w = got.astype(np.float64), want.astype(np.float64)
    if g.shape != w.shape:
        return False
    # Only finite reference values are compared: a partial sum of inf with a device's 0 * inf is NaN, an
    # IEEE difference that distribution cannot avoid (docs/language.md says so).
    finite = np.isfinite(w)
    # Splitting a sum reorders it (and rounds partial sums to the dtype): allow the dtype's tolerance relative
    # to the result's magnitude.
    rtol, atol = TOLERANCE[dtype]
    scale = max(1.0, float(np.max(np.abs(w[finite]), initial=0.0)))
    return bool(np.all(np.abs(g[finite] - w[finite]) <= rtol * scale + atol))


@settings(max_examples=int(os.environ.get("FIR_DIST_EXAMPLES", "120")), **SETTINGS)
@given(programs(max_ops=8), st.data(), st.integers(0, 2**32 - 1))
def test_random_programs_on_random_meshes(prog, data, seed):
    module = parse_source(prog.text, "<random>")
    _distribute_randomly(module, data.draw)
    inputs = random_inputs(prog, seed)
    want = run(module, inputs)
    parted = distribute(module)
    # The partitioned program prints and reads back to the same text.
    text = print_fir(parted)
    assert print_fir(parse_source(text, "<partitioned>")) == text
    with np.errstate(all="ignore"):
        got = run_partitioned(parted, the_func(module).sym_name.data, inputs, 6)
    for i, (g, w, t) in enumerate(zip(got, want, the_func(module).function_type.outputs.data)):
        assert _close(g, w, _working_dtype(module, to_tt(t)[1])), \
            f"result {i}\n{print_fir(module)}\ngot\n{g}\nwant\n{w}"


def _working_dtype(module: ModuleOp, result_dtype: str) -> str:
    """The dtype whose tolerance applies to a float result: the least precise float the program computes in
    (a partial sum rounded to bf16 stays that inexact after a cast to f32). Integer results stay exact."""
    if result_dtype not in ("f32", "f16", "bf16", "f64"):
        return result_dtype
    # (an f64 result cast from f32 work is as inexact as f32)
    floats = {to_tt(r.type)[1] for op in the_func(module).body.ops for r in op.results} & {"f32", "f16", "bf16"}
    return max(floats | {result_dtype}, key=lambda d: TOLERANCE[d][0])

"""Helpers for the distribution tests: build one-op distributed programs in Python and run them both ways."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, FunctionType, ModuleOp, SymbolRefAttr
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Block, Region

from fir.dialects.base import from_tt, to_tt
from fir.dialects.flow import OPS_BY_NAME
from fir.dialects.sbp import MESH, SBP, SBP_IN, MeshOp, nd_to_attr
from fir.compile import distribute
from fir.runtime.compare import compare
from fir.syntax.frontend import verify_module
from fir.runtime.inputs import random_inputs
from fir.runtime.interpreter import run_function
from fir.runtime.virtual_devices import run_partitioned
from fir.distribution.sbp import NdSbp

TT = tuple[tuple[int, ...], str]


def one_op_module(op_name: str, ins: Sequence[TT], attrs: dict[str, Any], result: TT | None,
                  mesh_shape: tuple[int, ...], sig_ins: Sequence[NdSbp] | None, sig_out: NdSbp | None) -> ModuleOp:
    """@main applying one flow op to its arguments on mesh @m, with the arguments' SBP and the op's signature
    given as hints (None leaves them to sbp-infer)."""
    n = int(np.prod(mesh_shape))
    mesh = MeshOp.make("m", tuple(mesh_shape), tuple(range(n)))
    block = Block(arg_types=[from_tt(t) for t in ins])
    for i, a in enumerate(block.args):
        a.name_hint = f"in{i}"
    op = OPS_BY_NAME[op_name].make(list(block.args), from_tt(result) if result is not None else None, **attrs)
    if sig_out is not None:
        op.attributes[SBP] = nd_to_attr(sig_out)
    if sig_ins is not None and ins:
        op.attributes[SBP_IN] = ArrayAttr([nd_to_attr(nd) for nd in sig_ins])
    op.results[0].name_hint = "out"
    block.add_ops([op, ReturnOp(op.results[0])])
    arg_attrs = None
    if sig_ins is not None and ins:
        arg_attrs = ArrayAttr([DictionaryAttr({SBP: nd_to_attr(nd)}) for nd in sig_ins])
    func = FuncOp("main", FunctionType.from_lists([from_tt(t) for t in ins], [op.results[0].type]), Region(block),
                  arg_attrs=arg_attrs)
    func.attributes[MESH] = SymbolRefAttr("m")
    module = ModuleOp([mesh, func])
    verify_module(module)
    return module


def run_both(module: ModuleOp, seed: int = 0, inputs: list[np.ndarray] | None = None):
    """(distributed results, reference results, partitioned module) of @main."""
    func = next(f for f in module.ops if isinstance(f, FuncOp))
    if inputs is None:
        inputs = random_inputs(func, seed)
    want = run_function(module, func, inputs)
    parted = distribute(module)
    n = max(d + 1 for op in module.ops if isinstance(op, MeshOp) for d in op.device_values())
    got = run_partitioned(parted, func.sym_name.data, inputs, n)
    return got, want, parted


def assert_matches(got: Sequence[np.ndarray], want: Sequence[np.ndarray], func: FuncOp, what: str) -> None:
    """Every result within its dtype's tolerance of the reference."""
    assert len(got) == len(want), what
    for i, (g, w, t) in enumerate(zip(got, want, func.function_type.outputs.data)):
        c = compare(g, w, to_tt(t)[1])
        assert c.ok, f"{what}: result {i} differs (max abs error {c.max_abs_error}):\n{g}\nvs\n{w}"


def count_ops(module: ModuleOp, name: str) -> int:
    """How many ops of this name the module holds."""
    return sum(1 for op in module.walk() if op.name == name)

"""Kernels the CUDA runtime moves data with when virtual devices share a GPU: a box copy (a sub-block of one
tensor into a sub-block of another, for all_gather, all_to_all, slice, send/recv) and the reduction of a
group's buffers (all_reduce, reduce_scatter). Both follow fir.runtime.collectives exactly: f16 and bf16
accumulate in float and round once, integers wrap, members are combined in group order."""

from __future__ import annotations

import math
from collections.abc import Sequence

from fir.codegen.common import (THREADS, blocks_for, compute_type, grid_stride, load, offset, store, tensor_param,
                                unravel)
from fir.codegen.kernel_ir import Assign, Decl, Kernel, Var, binop, call


def box_copy_kernel(name: str, dtype: str, src_shape: Sequence[int], src_start: Sequence[int],
                    dst_shape: Sequence[int], dst_start: Sequence[int], box: Sequence[int]) -> Kernel:
    """dst[dst_start + c] = src[src_start + c] for every c in the box (bit for bit); parameters: dst, src."""
    params = [tensor_param("out", dtype, const=False), tensor_param("in0", dtype)]
    n = math.prod(box)
    i = Var("i")
    coords = unravel(i, box)
    src = offset([binop("+", c, s) for c, s in zip(coords, src_start)], src_shape)
    dst = offset([binop("+", c, s) for c, s in zip(coords, dst_start)], dst_shape)
    body = [grid_stride(i, n, [Assign(params[0].var()[dst], params[1].var()[src])])]
    return Kernel(name, params, body, (blocks_for(n), 1, 1), (THREADS, 1, 1),
                  comment=f"box copy {list(box)} from {list(src_start)} of {list(src_shape)} to {list(dst_start)} "
                          f"of {list(dst_shape)}")


def group_reduce_kernel(name: str, dtype: str, n: int, members: int, op: str) -> Kernel:
    """out[i] = in0[i] (+ or max) in1[i] ... in group order, accumulated in the compute type; parameters: out, in0..."""
    params = [tensor_param("out", dtype, const=False)] + [tensor_param(f"in{k}", dtype) for k in range(members)]
    i = Var("i")
    acc = Var("acc")
    ctype = compute_type(dtype)
    combine = "fir_add" if op == "sum" else "fir_max"
    stmts = [Decl(ctype, acc, load(params[1], i))]
    stmts += [Assign(acc, call(combine, acc, load(params[k + 1], i))) for k in range(1, members)]
    stmts.append(store(params[0], dtype, i, acc))
    return Kernel(name, params, [grid_stride(i, n, stmts)], (blocks_for(n), 1, 1), (THREADS, 1, 1),
                  comment=f"{op} of {members} buffers of {n} {dtype}")

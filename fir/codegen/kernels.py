"""Which emitter makes the kernel of each flow op (fir.codegen.elementwise, layout, reduction, matmul)."""

from __future__ import annotations

from collections.abc import Callable

from xdsl.ir import Operation

from fir.codegen import layout, reduction
from fir.codegen.elementwise import elementwise_kernel
from fir.codegen.kernel_ir import Kernel
from fir.codegen.matmul import matmul_kernel
from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.base import to_tt
from fir.dialects.flow import FUSIBLE_OPS, FusedOp
from fir.dialects.sbp import PositionOp
from fir.distribution.expansion import is_local_slice

Emitter = Callable[[str, Operation], Kernel]


# The emitter of every flow op that is not elementwise (those go to elementwise_kernel).
EMITTERS: dict[str, Emitter] = {
    "flow.matmul": matmul_kernel,
    "flow.reduce_sum": reduction.reduce_kernel,
    "flow.reduce_mean": reduction.reduce_kernel,
    "flow.reduce_max": reduction.reduce_kernel,
    "flow.softmax": reduction.softmax_kernel,
    "flow.layernorm": reduction.layernorm_kernel,
    "flow.cross_entropy": reduction.cross_entropy_kernel,
    "flow.transpose": layout.transpose_kernel,
    "flow.reshape": layout.reshape_kernel,
    "flow.concat": layout.concat_kernel,
    "flow.slice": layout.slice_kernel,
    "flow.gather": layout.gather_kernel,
    "flow.scatter_add": layout.scatter_add_kernel,
    "flow.constant": layout.constant_kernel,
    "flow.iota": layout.iota_kernel,
}


def kernel_for(name: str, op: Operation) -> Kernel:
    """The CUDA kernel computing one flow op (or flow.fused group) on its local shapes, named `name`; or one of
    an SPMD plan's ops whose value depends on the device (sbp.position, a local comm.slice), whose kernel takes
    that dependence as a scalar argument given at launch."""
    if any(to_tt(v.type)[1] == "f64" for v in (*op.operands, *op.results)):
        # The emitters compute floats in float (f16/bf16 widened to it); f64 would need double math throughout.
        raise FirError(f"'{op.name}' on f64: the CUDA backend has no f64 kernels (f64 programs run on the numpy "
                       "backend)", loc_of(op.location))
    if isinstance(op, (FusedOp, *FUSIBLE_OPS)):
        return elementwise_kernel(name, op)
    if isinstance(op, PositionOp):
        return layout.position_kernel(name, op)
    if is_local_slice(op):
        return layout.piece_kernel(name, op)
    emitter = EMITTERS.get(op.name)
    if emitter is None:
        raise FirError(f"no CUDA kernel for '{op.name}'", loc_of(op.location))
    try:
        return emitter(name, op)
    except ValueError as e:  # a shape the kernel cannot launch (e.g. a grid beyond CUDA's limits)
        raise FirError(f"'{op.name}': {e}", loc_of(op.location)) from None

"""spmd-partition: one program per class of devices, positions as values (the work is in
fir.distribution.partitioner)."""

from __future__ import annotations

from dataclasses import dataclass
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from fir.distribution.placement import placed_functions
from fir.distribution.partitioner import spmd_partition


@dataclass(frozen=True)
class SpmdPartitionPass(ModulePass):
    """Replace every distributed function by its SPMD programs."""

    name = "spmd-partition"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        meshes, funcs = placed_functions(op)
        for func in funcs:
            for b in spmd_partition(func, meshes):
                assert b.program is not None
                op.body.block.insert_op_before(b.program, func)
            op.body.block.erase_op(func)

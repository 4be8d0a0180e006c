"""partition: one program per device, on local shapes (the work is in fir.distribution.partitioner and
fir.distribution.expansion: the SPMD programs, then each device's instance of its class's program)."""

from __future__ import annotations

from dataclasses import dataclass
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from fir.distribution.placement import placed_functions
from fir.distribution.expansion import partition_function


@dataclass(frozen=True)
class PartitionPass(ModulePass):
    """Replace every distributed function by one function per device."""

    name = "partition"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        meshes, funcs = placed_functions(op)
        for func in funcs:
            for dev_func in partition_function(func, meshes):
                op.body.block.insert_op_before(dev_func, func)
            op.body.block.erase_op(func)

"""fuse: elementwise chains become `flow.fused` ops, one kernel each (the work is in fir.planning.fusion)."""

from __future__ import annotations

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import FuncOp
from xdsl.passes import ModulePass
from fir.planning.plan_ir import is_plan
from fir.planning.fusion import fuse_group, fusion_groups


class FusePass(ModulePass):
    """Group elementwise chains into flow.fused ops (one kernel each)."""

    name = "fuse"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for func in op.ops:
            if not isinstance(func, FuncOp) or is_plan(func):
                continue
            block = func.body.blocks.first
            if block is None:
                continue
            for group in fusion_groups(block):
                fuse_group(group)

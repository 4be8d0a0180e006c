"""expand-devices: each device's program from the SPMD program of its class (the work is in
fir.distribution.expansion)."""

from __future__ import annotations

from dataclasses import dataclass
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from fir.dialects.sbp import meshes_of
from fir.distribution.expansion import expand_module


@dataclass(frozen=True)
class ExpandDevicesPass(ModulePass):
    """Replace every SPMD program by the programs of its devices."""

    name = "expand-devices"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        expand_module(op, meshes_of(op))

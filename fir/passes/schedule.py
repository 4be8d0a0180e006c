"""schedule: device programs become execution plans on streams with events (the work is in fir.planning.scheduler)."""

from __future__ import annotations

from dataclasses import dataclass
from collections import defaultdict
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import FuncOp
from xdsl.passes import ModulePass
from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.plan import ORDERS, SCHEDULE
from fir.dialects.sbp import meshes_of
from fir.distribution.placement import DEVICE, DEVICES, OF, places, symbol_name
from fir.planning.scheduler import schedule_group


@dataclass(frozen=True)
class SchedulePass(ModulePass):
    """Turn every device program (and every single-device function) into an execution plan."""

    name = "schedule"
    # The pipeline ordering: "gpipe" or "1f1b".
    order: str = "1f1b"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        if self.order not in ORDERS:
            raise FirError(f"schedule: unknown order \"{self.order}\" (choose {' or '.join(ORDERS)})")
        groups: dict[str, list[FuncOp]] = defaultdict(list)
        for func in op.ops:
            if not isinstance(func, FuncOp) or SCHEDULE in func.attributes:
                continue
            if places(func):
                raise FirError(f"@{func.sym_name.data} is placed on a mesh: run sbp-infer, insert-boxing and "
                               "partition before schedule", loc_of(func.location))
            device_program = DEVICE in func.attributes or DEVICES in func.attributes
            key = symbol_name(func.attributes.get(OF)) if device_program else None
            groups[key or func.sym_name.data].append(func)
        meshes = meshes_of(op)
        for funcs in groups.values():
            schedule_group(funcs, self.order, meshes)

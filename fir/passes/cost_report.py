"""cost-report: print every instruction's modelled cost (the work is in fir.planning.cost_report)."""

from __future__ import annotations

from dataclasses import dataclass
import sys
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import FuncOp
from xdsl.passes import ModulePass
from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.sbp import meshes_of
from fir.distribution.placement import device_count
from fir.planning.hardware import DEFAULT_HARDWARE, load_hardware
from fir.planning.cost_report import report_function


@dataclass(frozen=True)
class CostReportPass(ModulePass):
    """Print a cost table per function to stderr; the IR is left as it is."""

    name = "cost-report"
    # A preset name (see fir/planning/presets/) or the path of a hardware .toml file (quote paths: hardware="x.toml").
    hardware: str = DEFAULT_HARDWARE

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        try:
            hw = load_hardware(self.hardware, device_count(op))
        except FirError as e:
            if e.loc is None:  # an unknown name or unreadable file: point at the program being reported
                raise FirError(f"cost-report: {e.message}", loc_of(op.location)) from None
            e.notes.append(f"in the hardware model given to cost-report (hardware={self.hardware})")
            raise
        meshes = meshes_of(op)
        tables = [report_function(f, hw, meshes) for f in op.ops if isinstance(f, FuncOp)]
        if tables:
            print("\n\n".join(tables), file=sys.stderr)

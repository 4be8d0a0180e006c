"""cost-report: print, per function, every instruction's FLOPs, HBM bytes, estimated time and what bounds it on
a hardware model, then the totals and the device memory. Reads the IR, never changes it.

    fir-opt FILE -p sbp-infer,insert-boxing,partition,cost-report{hardware=h100-ib}
"""

from __future__ import annotations

from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Operation

from fir.planning.cost_model import NONE, Estimate, instruction_estimate, memory_per_device
from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.plan import ARENA_SIZE, STREAM
from fir.syntax.printer import ValueNames
from fir.planning.hardware import Hardware
from fir.distribution.placement import DEVICE, DEVICES, format_devices, func_mesh, int_value, program_devices
from fir.planning.plan_ir import is_plan


def _describe(func: FuncOp, meshes: dict) -> tuple[str, int]:
    """(what the function is, the device its instructions are priced for)."""
    device = int_value(func, DEVICE)
    if device is not None:
        return ("plan" if is_plan(func) else "device program") + f", device {device}", device
    if DEVICES in func.attributes:  # every device of the class runs it: priced for the first
        devs = program_devices(func)
        kind = "SPMD plan" if is_plan(func) else "SPMD program"
        return f"{kind} of devices {format_devices(devs)}, priced for device {devs[0]}", devs[0]
    mesh = meshes.get(func_mesh(func) or "")
    if mesh is not None:
        return f"logical program on @{mesh.name}, logical shapes", mesh.devices[0]
    return "single-device program", 0


def _estimate(op: Operation, hw: Hardware, device: int) -> Estimate:
    try:
        return instruction_estimate(op, hw, device)
    except FirError as e:
        if e.loc is None:
            e.loc = loc_of(op.location)
        raise


def report_function(func: FuncOp, hw: Hardware, meshes: dict | None = None) -> str:
    """The cost table of one function, as text."""
    what, device = _describe(func, meshes or {})
    planned = is_plan(func)
    if int_value(func, DEVICE) is not None or DEVICES in func.attributes:
        try:
            hw.node_of(device)
        except FirError as e:
            raise FirError(e.message, loc_of(func.location)) from None
    names = ValueNames()
    block = func.body.blocks.first
    for a in block.args if block is not None else ():
        names.define(a)
    rows: list[tuple[str, ...]] = []
    total_s, total_flops, total_bytes = 0.0, 0, 0
    per_stream: dict[str, float] = {}
    for op in func.body.ops:  # a flow.fused body is priced with its op
        if isinstance(op, (ReturnOp, FuncOp)):
            continue
        est = _estimate(op, hw, device)
        result = names.define(op.results[0]) if op.results else "-"
        stream = op.attributes[STREAM].data if STREAM in op.attributes else "-"  # type: ignore[attr-defined]
        total_s += est.seconds
        total_flops += est.flops
        total_bytes += est.bytes
        per_stream[stream] = per_stream.get(stream, 0.0) + est.seconds
        cells = [result, op.name] + ([stream] if planned else [])
        cells += [str(est.flops), str(est.bytes), f"{est.seconds * 1e6:.3f}", "-" if est.bound == NONE else est.bound,
                  est.note]
        rows.append(tuple(cells))

    header = ("result", "op") + (("stream",) if planned else ()) + ("FLOPs", "bytes", "time (us)", "bound", "note")
    total = ("total", "") + (("",) if planned else ()) + (str(total_flops), str(total_bytes),
                                                           f"{total_s * 1e6:.3f}", "", "serial sum, no overlap")
    lines = [f"cost-report: @{func.sym_name.data} ({what}) on {hw.name} ({hw.device.name})"]
    lines += _table([header, *rows, total])
    if planned and per_stream:
        busy = ", ".join(f"{s} {t * 1e6:.3f}" for s, t in per_stream.items())
        lines.append(f"  busy time per stream (us): {busy}")
    lines.append("  " + _memory_line(func, hw, logical=what.startswith("logical")))
    return "\n".join(lines)


def _memory_line(func: FuncOp, hw: Hardware, logical: bool) -> str:
    mem = memory_per_device(func)
    if logical:  # logical shapes: what one device would need without partitioning
        return f"memory: {mem} bytes of logical tensors (no reuse; partition gives the per-device figure)"
    how = "arena_size" if int_value(func, ARENA_SIZE) is not None else "no reuse: every tensor it defines"
    cap = hw.device.hbm_capacity
    over = "; EXCEEDS the device's HBM" if mem > cap else ""
    return f"memory per device: {mem} bytes ({how}), {100.0 * mem / cap:.4f}% of {cap} bytes of HBM{over}"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as aligned text: names left-aligned, numbers right-aligned, the note last and unpadded."""
    n = len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    numeric = {i for i, h in enumerate(rows[0]) if h in ("FLOPs", "bytes", "time (us)")}
    out = []
    for r in rows:
        cells = [r[i].rjust(widths[i]) if i in numeric else r[i].ljust(widths[i]) for i in range(n - 1)]
        out.append(("  " + "  ".join(cells) + "  " + r[-1]).rstrip())
    return out

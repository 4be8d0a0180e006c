"""Timelines in the Chrome trace event format (opens in Perfetto and chrome://tracing).

One process per device, one thread per stream; every instruction is a complete ("X") event. Real runs
(`fir-run --trace`) and simulated ones (the simulator) write the same format. Process and thread ids start at 1
(device d is pid d + 1): Perfetto treats pid 0 and tid 0 as the kernel's idle task.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fir.dialects.plan import STREAMS
from fir.syntax.files import Writer, write_file


@dataclass(frozen=True)
class TraceEvent:
    """One instruction on one stream of one device, from start_s to end_s (seconds)."""

    device: int
    stream: str
    name: str
    start_s: float
    end_s: float
    args: dict[str, Any] = field(default_factory=dict)


def _tid(stream: str) -> int:
    return 1 + (STREAMS.index(stream) if stream in STREAMS else len(STREAMS))


def _pid(device: int) -> int:
    return device + 1


def chrome_trace(events: Iterable[TraceEvent], metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The trace as a JSON-ready dictionary (timestamps in microseconds, as the format wants)."""
    events = list(events)
    out: list[dict[str, Any]] = []
    for dev in sorted({e.device for e in events}):
        pid = _pid(dev)
        out.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": f"device {dev}"}})
        out.append({"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": dev}})
        for stream in sorted({e.stream for e in events if e.device == dev}, key=_tid):
            out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": _tid(stream), "args": {"name": stream}})
            out.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": _tid(stream),
                        "args": {"sort_index": _tid(stream)}})
    for e in sorted(events, key=lambda e: (e.device, _tid(e.stream), e.start_s)):
        out.append({"name": e.name, "cat": e.stream, "ph": "X", "pid": _pid(e.device), "tid": _tid(e.stream),
                    "ts": e.start_s * 1e6, "dur": max(e.end_s - e.start_s, 0.0) * 1e6, "args": dict(e.args)})
    return {"traceEvents": out, "displayTimeUnit": "ns", "otherData": dict(metadata or {})}


def trace_writer(events: Iterable[TraceEvent], metadata: dict[str, Any] | None = None) -> Writer:
    """What writes the trace as JSON."""
    text = json.dumps(chrome_trace(events, metadata), indent=None, separators=(",", ":")) + "\n"
    return lambda f: f.write(text.encode("utf-8"))


def write_trace(events: Iterable[TraceEvent], path: str, metadata: dict[str, Any] | None = None) -> None:
    """Write the trace as JSON to `path`, all or nothing; FirError when it cannot be written."""
    write_file(path, "the trace", trace_writer(events, metadata))

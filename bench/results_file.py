"""What every benchmark writes: its result as JSON in bench/results/, with the machine it ran on."""

from __future__ import annotations

import datetime
import json
import os
import platform
from importlib.metadata import version
from typing import Any


def machine() -> dict[str, Any]:
    """The machine the benchmark ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "xdsl": version("xdsl"),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_result(path: str, result: dict[str, Any]) -> None:
    """Write a benchmark's result (its folder made if need be)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

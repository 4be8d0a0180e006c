"""The hardware model: one kind of device, how many there are per node and node count, and the links between
them, read from an editable TOML file (docs/hardware.md). Presets live in fir/planning/presets/ as `<name>.toml`.

Units are SI base units throughout: FLOP/s (and integer op/s), bytes, bytes per second, seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fir.syntax.diagnostics import FirError, SourceLoc
from fir.syntax.files import read_text

DEFAULT_HARDWARE = "h100-nvlink"

# The dtypes a rate table lists; i1 (booleans) runs at the i32 rate.
RATE_DTYPES: tuple[str, ...] = ("f32", "f16", "bf16", "f64", "i32", "i64")


@dataclass(frozen=True)
class Rates:
    """Peak operations per second of one kind of unit, per dtype."""

    f32: float
    f16: float
    bf16: float
    f64: float
    i32: float
    i64: float

    def of(self, dtype: str) -> float:
        """The rate for a fir dtype name (i1 uses the i32 rate)."""
        return float(getattr(self, "i32" if dtype == "i1" else dtype))


@dataclass(frozen=True)
class Device:
    """One accelerator: peak rates, HBM and the fixed cost of launching a kernel."""

    name: str
    matmul_flops: Rates  # matrix units (tensor cores where the dtype has them), used by flow.matmul
    vector_flops: Rates  # ordinary lanes, used by every other op
    hbm_bandwidth: float  # bytes/s, read + write combined
    hbm_capacity: int  # bytes
    launch_overhead: float  # seconds added to every kernel


@dataclass(frozen=True)
class Topology:
    """Devices are numbered node by node: device d sits on node d // devices_per_node."""

    devices_per_node: int
    nodes: int


@dataclass(frozen=True)
class Link:
    """A link as one GPU sees it: bandwidth per direction and the latency of one message (one step)."""

    bandwidth: float  # bytes/s per direction per GPU
    latency: float  # seconds


@dataclass(frozen=True)
class Links:
    """Device to device within a node, across nodes, and host to device."""

    intra_node: Link
    inter_node: Link
    host: Link


@dataclass(frozen=True)
class Hardware:
    """A machine: identical devices on one or more nodes."""

    name: str
    description: str
    device: Device
    topology: Topology
    links: Links
    source: str = field(default="", compare=False)  # the file it was read from

    @property
    def num_devices(self) -> int:
        """Devices in the whole machine."""
        return self.topology.devices_per_node * self.topology.nodes

    def node_of(self, device: int) -> int:
        """The node a device id sits on; FirError for a device the machine does not have."""
        if not 0 <= device < self.num_devices:
            t = self.topology
            raise FirError(f"device {device} is not in hardware '{self.name}' ({self.num_devices} devices: "
                           f"{t.nodes} node(s) of {t.devices_per_node})")
        return device // self.topology.devices_per_node

    def link(self, src: int, dst: int) -> Link:
        """The link a message from one device to another crosses."""
        return self.links.intra_node if self.node_of(src) == self.node_of(dst) else self.links.inter_node

    def group_link(self, group: Sequence[int]) -> Link:
        """The bottleneck link of a collective: intra-node if the whole group is on one node, else inter-node."""
        nodes = {self.node_of(d) for d in group}
        return self.links.intra_node if len(nodes) <= 1 else self.links.inter_node

    def with_nodes(self, nodes: int) -> Hardware:
        """The same machine with `nodes` nodes (its name says so)."""
        base = self.name.split(":nodes=", 1)[0]
        t = self.topology
        return dataclasses.replace(self, name=f"{base}:nodes={nodes}",
                                   description=f"{nodes} node(s) x {t.devices_per_node} of {base}'s nodes and links",
                                   topology=dataclasses.replace(t, nodes=nodes))


# ----------------------------------------------------------------------------------------------- schema
class _Kind:
    """What one key holds; `check` returns the converted value or raises ValueError with the complaint."""

    what = ""

    def check(self, value: Any) -> Any:
        raise NotImplementedError


class _Text(_Kind):
    what = "a string"

    def check(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise TypeError(self.what)
        return value


class _Number(_Kind):
    """A finite number; `positive` rules out 0, `whole` asks for an integral value (counts, bytes)."""

    def __init__(self, positive: bool, whole: bool = False):
        self.positive, self.whole = positive, whole
        self.what = "an integer" if whole else "a number"

    def check(self, value: Any) -> Any:
        # bool is an int in Python but `true` is no number in a hardware file.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(self.what)
        if not math.isfinite(value):
            raise ValueError(f"must be finite, got {value}")
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        if self.positive and value == 0:
            raise ValueError("must be positive, got 0")
        if self.whole:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"must be a whole number, got {value}")
            return int(value)
        return float(value)


_TEXT = _Text()
_RATE = _Number(positive=True)  # FLOP/s, bytes/s
_SECONDS = _Number(positive=False)
_COUNT = _Number(positive=True, whole=True)

_RATES = {dt: _RATE for dt in RATE_DTYPES}
_LINK = {"bandwidth": _RATE, "latency": _SECONDS}
SCHEMA: dict[str, Any] = {
    "name": _TEXT,
    "description": _TEXT,
    "device": {"name": _TEXT, "matmul_flops": _RATES, "vector_flops": _RATES, "hbm_bandwidth": _RATE,
               "hbm_capacity": _COUNT, "launch_overhead": _SECONDS},
    "topology": {"devices_per_node": _COUNT, "nodes": _COUNT},
    "links": {"intra_node": _LINK, "inter_node": _LINK, "host": _LINK},
}


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a table"
    return {str: "a string", int: "an integer", float: "a number", list: "an array"}.get(type(value), "a date/time")


# ----------------------------------------------------------------------------------------------- key positions
_HEADER = re.compile(r"\s*\[\s*([^\[\]#]+?)\s*\]")
_KEY = re.compile(r"""\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=\s*""")
_PART = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(p.strip("\"'") for p in _PART.findall(dotted))


class _Positions:
    """Where each table header and key sits in a TOML text (1-based line and column), for error messages.

    A line scanner, not a parser: it knows table headers, (dotted) keys and one-line inline tables, which is
    all a hardware file needs; anything it misses falls back to the enclosing table, then to line 1."""

    def __init__(self, text: str):
        self.keys: dict[tuple[str, ...], tuple[int, int, int]] = {}  # path -> (line, key col, value col)
        self.tables: dict[tuple[str, ...], tuple[int, int]] = {}
        current: tuple[str, ...] = ()
        for lineno, line in enumerate(text.split("\n"), 1):
            if (m := _HEADER.match(line)) is not None:
                current = _parts(m.group(1))
                self.tables.setdefault(current, (lineno, line.index("[") + 1))
                continue
            self._keys_in(line, lineno, 0, current)

    def _keys_in(self, line: str, lineno: int, start: int, prefix: tuple[str, ...]) -> None:
        m = _KEY.match(line, start)
        if m is None:
            return
        parts = _parts(m.group(1))
        for k in range(1, len(parts)):  # `a.b = 1` also defines table `a` here
            self.keys.setdefault(prefix + parts[:k], (lineno, m.start(1) + 1, m.start(1) + 1))
        path = prefix + parts
        self.keys.setdefault(path, (lineno, m.start(1) + 1, m.end(0) + 1))
        if line[m.end(0):].startswith("{"):  # an inline table: its keys follow `{` or `,`
            pos = m.end(0) + 1
            while pos < len(line) and line[pos] != "}":
                self._keys_in(line, lineno, pos, path)
                nxt = line.find(",", pos)
                if nxt < 0:
                    break
                pos = nxt + 1

    def key(self, path: tuple[str, ...], filename: str, at_value: bool = False) -> SourceLoc:
        """The position of a key (or of its value), else of the nearest enclosing table that is written."""
        if path in self.keys:
            line, kcol, vcol = self.keys[path]
            return SourceLoc(filename, line, vcol if at_value else kcol)
        if path in self.tables:
            return SourceLoc(filename, *self.tables[path])
        return self.table(path[:-1], filename)

    def table(self, path: tuple[str, ...], filename: str) -> SourceLoc:
        """The position of a table: its header (or inline/dotted key), else the first header of a sub-table
        (`[links.host]` defines `links`), else the same for its parent, else line 1."""
        while path:
            if path in self.tables:
                return SourceLoc(filename, *self.tables[path])
            if path in self.keys:
                line, kcol, _ = self.keys[path]
                return SourceLoc(filename, line, kcol)
            subs = [at for p, at in self.tables.items() if p[: len(path)] == path]
            if subs:
                return SourceLoc(filename, *min(subs))
            path = path[:-1]
        return SourceLoc(filename, 1, 1)


# ----------------------------------------------------------------------------------------------- loading
def _validate(table: dict[str, Any], schema: dict[str, Any], path: tuple[str, ...], pos: _Positions,
              filename: str) -> dict[str, Any]:
    """The table checked against the schema (values converted); FirError at the offending key."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in schema:
            known = ", ".join(schema)
            raise FirError(f"unknown key '{'.'.join(path + (key,))}' (known here: {known})",
                           pos.key(path + (key,), filename))
    for key, kind in schema.items():
        here = path + (key,)
        name = ".".join(here)
        if key not in table:
            what = "table" if isinstance(kind, dict) else "key"
            raise FirError(f"missing {what} '{name}'", pos.table(path, filename))
        value = table[key]
        if isinstance(kind, dict):
            if not isinstance(value, dict):
                raise FirError(f"'{name}' must be a table, not {_type_name(value)}", pos.key(here, filename, True))
            out[key] = _validate(value, kind, here, pos, filename)
            continue
        try:
            out[key] = kind.check(value)
        except TypeError:
            raise FirError(f"'{name}' must be {kind.what}, not {_type_name(value)}",
                           pos.key(here, filename, True)) from None
        except ValueError as e:
            raise FirError(f"'{name}' {e}", pos.key(here, filename, True)) from None
    return out


_TOML_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _decode(text: str, filename: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e.args[0]) if e.args else str(e)
        line = getattr(e, "lineno", None)
        col = getattr(e, "colno", None)
        if (m := _TOML_AT.search(msg)) is not None:
            line, col = line or int(m.group(1)), col or int(m.group(2))
            msg = msg[: m.start()]
        elif msg.endswith("(at end of document)"):
            msg = msg[: -len("(at end of document)")].rstrip()
            lines = text.split("\n")
            line, col = len(lines), len(lines[-1]) + 1
        first = msg[:1].lower() + msg[1:]
        raise FirError(f"invalid TOML: {first}", SourceLoc(filename, line or 1, col or 1)) from None


@functools.lru_cache(maxsize=32)
def parse_hardware(text: str, filename: str = "<hardware>") -> Hardware:
    """A Hardware from the text of a hardware file; FirError at file:line:col for anything wrong with it."""
    raw = _decode(text, filename)
    v = _validate(raw, SCHEMA, (), _Positions(text), filename)
    d, t, ln = v["device"], v["topology"], v["links"]
    device = Device(name=d["name"], matmul_flops=Rates(**d["matmul_flops"]), vector_flops=Rates(**d["vector_flops"]),
                    hbm_bandwidth=d["hbm_bandwidth"], hbm_capacity=d["hbm_capacity"],
                    launch_overhead=d["launch_overhead"])
    links = Links(**{k: Link(**ln[k]) for k in ("intra_node", "inter_node", "host")})
    return Hardware(name=v["name"], description=v["description"], device=device,
                    topology=Topology(**t), links=links, source=filename)


def _presets_dir():
    return resources.files("fir.planning").joinpath("presets")


def preset_names() -> list[str]:
    """The names of the hardware presets shipped with fir, sorted."""
    return sorted(p.name[: -len(".toml")] for p in _presets_dir().iterdir() if p.name.endswith(".toml"))


def _looks_like_path(s: str) -> bool:
    return s.endswith(".toml") or "/" in s or os.sep in s


# `NAME:nodes=N` or `FILE.toml:nodes=N`: the machine with N nodes.
_SIZED = re.compile(r"\A(?P<base>.+):nodes=(?P<nodes>[0-9]+)\Z")


def load_hardware(spec: str, devices: int | None = None) -> Hardware:
    """A preset by name (e.g. 'h100-nvlink') or a hardware file by path, optionally sized `NAME:nodes=N`; FirError
    when it cannot be loaded. Without an explicit size, a machine smaller than `devices` (what the program uses)
    grows by whole nodes to hold them: the presets describe a node and its links, not a fixed cluster."""
    m = _SIZED.match(spec)
    hw = _load(m["base"] if m else spec)
    if m:
        nodes = int(m["nodes"])
        if nodes < 1:
            raise FirError(f"hardware '{spec}': a machine has at least one node")
        return hw.with_nodes(nodes)
    if devices is not None and devices > hw.num_devices:
        return hw.with_nodes(-(-devices // hw.topology.devices_per_node))
    return hw


def _load(name_or_path: str) -> Hardware:
    if not _looks_like_path(name_or_path):
        preset = _presets_dir().joinpath(f"{name_or_path}.toml")
        if preset.is_file():
            return parse_hardware(preset.read_text(encoding="utf-8"), str(preset))
        if not os.path.isfile(name_or_path):
            raise FirError(f"unknown hardware '{name_or_path}': the presets are {', '.join(preset_names())}; "
                           "or give the path of a .toml hardware file")
    return parse_hardware(read_text(name_or_path, "hardware file", "hardware files"), name_or_path)


__all__ = ["Rates", "Device", "Topology", "Link", "Links", "Hardware", "load_hardware", "parse_hardware",
           "preset_names", "DEFAULT_HARDWARE", "RATE_DTYPES", "SCHEMA"]

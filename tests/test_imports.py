"""The package's import graph: no cycles (module-level or lazy), and the folders depend only forwards."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> dict[str, Path]:
    """Module name -> file, for fir and the tools (installed as fir_tools)."""
    mods = {}
    for pkg, folder in (("fir", ROOT / "fir"), ("fir_tools", ROOT / "tools")):
        for path in folder.rglob("*.py"):
            parts = [pkg, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its file (lazy imports inside functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in mods else node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in mods and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


# Each stage may use the stages before it, never those after it; the passes are thin shells over the libraries,
# and the tools, the API and fir.compile sit on top.
_MAY_NOT_USE = {
    "dialects": {"training", "passes", "planning", "codegen", "runtime", "api", "compile"},
    "training": {"distribution", "passes", "planning", "codegen", "runtime", "api", "compile"},
    "distribution": {"passes", "planning", "codegen", "runtime", "api", "compile"},
    "planning": {"passes", "codegen", "runtime", "api", "compile"},
    "codegen": {"passes", "runtime", "api", "compile"},
    "passes": {"runtime", "api", "codegen"},
}


def test_stages_depend_forwards():
    bad = []
    for name, deps in _graph().items():
        parts = name.split(".")
        if parts[0] != "fir" or len(parts) < 2 or parts[1] not in _MAY_NOT_USE:
            continue
        for dep in deps:
            dparts = dep.split(".")
            if dparts[0] == "fir_tools" or (len(dparts) > 1 and dparts[1] in _MAY_NOT_USE[parts[1]]):
                bad.append(f"{name} -> {dep}")
    assert bad == []


def test_every_package_is_installed():
    # pyproject.toml lists the packages: one left out imports in the source tree but not from a wheel
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = {"fir." + d.name for d in (ROOT / "fir").iterdir() if (d / "__init__.py").is_file()}
    assert found | {"fir", "fir_tools"} == listed

"""docs/tutorial.md runs as written: its files are saved, its commands run in order in a fresh folder, and the
output it shows appears in what each command prints (in order; `...` stands for lines left out)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

TUTORIAL = os.path.join(os.path.dirname(__file__), "..", "docs", "tutorial.md")
_BLOCK = re.compile(r"^```(\w+)(?: (\S+))?\n(.*?)^```$", re.S | re.M)


def _steps(text: str) -> list[tuple[str, str, str]]:
    """("file", name, content) and ("run", command, expected output) in the tutorial's order."""
    steps = []
    for lang, name, body in _BLOCK.findall(text):
        if lang == "fir" and name:
            steps.append(("file", name, body))
        elif lang == "console":
            for chunk in re.split(r"^\$ ", body, flags=re.M)[1:]:
                command, _, shown = chunk.partition("\n")
                steps.append(("run", command, shown))
    return steps


def _follows(shown: str, printed: str) -> str | None:
    """None when every shown line (but `...`) is a line of `printed`, in order; else the first that is not."""
    lines = iter(printed.splitlines())
    for want in shown.splitlines():
        if want == "...":
            continue
        if not any(line.rstrip() == want.rstrip() for line in lines):
            return want
    return None


def test_tutorial_commands_print_what_it_shows(tmp_path):
    steps = _steps(open(TUTORIAL, encoding="utf-8").read())
    assert sum(kind == "run" for kind, _, _ in steps) >= 8 and sum(kind == "file" for kind, _, _ in steps) >= 4
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    for kind, what, body in steps:
        if kind == "file":
            (tmp_path / what).write_text(body, encoding="utf-8")
            continue
        done = subprocess.run(["bash", "-o", "pipefail", "-c", what], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        printed = done.stdout + done.stderr
        assert done.returncode == 0, f"$ {what}\n{printed}"
        missing = _follows(body, printed)
        assert missing is None, f"$ {what}\nthe tutorial shows\n  {missing}\nbut the command printed\n{printed}"


def test_follows_is_strict():
    assert _follows("a\n...\nc\n", "a\nb\nc\n") is None
    assert _follows("c\na\n", "a\nb\nc\n") == "a"
    assert _follows("x\n", "a\n") == "x"

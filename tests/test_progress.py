"""Progress: library code reports its steps to the active reporter; the tools draw a bar only on a terminal."""

from __future__ import annotations

import io
import os

from fir import progress
from fir.api import load
from fir_tools.fir_opt import main as fir_opt
from fir_tools.fir_run import main as fir_run

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
PIPELINE = os.path.join(EXAMPLES, "pipeline_mlp.fir")


class Recorder:
    """A reporter that keeps what it is told."""

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.done: dict[str, tuple[int, int | None]] = {}
        self._open: list[list] = []

    def start(self, what, total):
        self.log.append(("start", what, total))
        self._open.append([what, 0, total])

    def note(self, text):
        self.log.append(("note", self._open[-1][0], text))

    def advance(self, n):
        self._open[-1][1] += n

    def finish(self):
        what, n, total = self._open.pop()
        self.done[what] = (n, total)
        self.log.append(("finish", what))


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_compile_run_check_and_simulate_report_their_steps():
    rec = Recorder()
    prog = load(PIPELINE)
    with progress.reporting(rec):
        prog.run(check=True)
        prog.simulate()
    notes = [text for kind, what, *text in rec.log if kind == "note" and what == "compile"]
    # run and simulate both keep the SPMD plans (one per class of devices): nothing expands them
    assert [t[0] for t in notes] == ["sbp-infer", "insert-boxing", "spmd-partition", "fuse", "schedule",
                                     "plan-memory"] * 2
    for what in ("compile", "run", "reference", "simulate"):
        n, total = rec.done[what]
        assert total and n == total, (what, n, total)  # every step reported, none twice


def test_nothing_is_reported_without_a_reporter():
    with progress.task("x", total=3) as step:
        step.note("a")
        step(3)  # no reporter: a no-op, and no error


def test_terminal_reporter_draws_a_bar():
    term = FakeTerminal()
    with progress.reporting(progress.TerminalReporter(term, delay=0)):
        with progress.task("compile", total=2) as step:
            step.note("fuse")
            step()
            step.note("schedule")
            step()
    out = term.getvalue()
    assert "compile: fuse" in out and "compile: schedule" in out and "1/2" in out
    assert out.endswith("\r")  # erased when done


def test_terminal_only_on_a_terminal_and_not_quiet():
    assert progress.terminal(stream=io.StringIO()) is None
    assert progress.terminal(quiet=True, stream=FakeTerminal()) is None
    assert isinstance(progress.terminal(stream=FakeTerminal()), progress.TerminalReporter)


def test_tools_draw_nothing_when_not_on_a_terminal(capsys):
    assert fir_run([PIPELINE, "--check"]) == 0
    assert fir_opt([PIPELINE, "-p", "sbp-infer,insert-boxing"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out and "it/s" not in captured.err

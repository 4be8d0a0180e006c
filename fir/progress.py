"""Progress of long compiles, runs and simulations. Library code reports its steps to the active reporter, which
is none unless a caller installs one (so the API prints nothing); the tools install a terminal bar, through tqdm,
that appears only after a second of work, only on a terminal, and not with --quiet."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any, Protocol


class Reporter(Protocol):
    """What receives progress: a task starts, notes what it is doing, advances, and finishes."""

    def start(self, what: str, total: int | None) -> None: ...

    def note(self, text: str) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


class Step:
    """The handle a running task reports through: `step(n)` advances by n, `step.note(text)` says what is next."""

    def __init__(self, reporter: Reporter | None):
        self._reporter = reporter

    def __call__(self, n: int = 1) -> None:
        if self._reporter is not None:
            self._reporter.advance(n)

    def note(self, text: str) -> None:
        """Say what the task is doing now (e.g. the pass about to run)."""
        if self._reporter is not None:
            self._reporter.note(text)


_active: ContextVar[Reporter | None] = ContextVar("fir_progress", default=None)


@contextmanager
def task(what: str, total: int | None = None) -> Iterator[Step]:
    """Report a task of `total` steps (None: unknown) to the active reporter, if any."""
    reporter = _active.get()
    if reporter is None:
        yield Step(None)
        return
    reporter.start(what, total)
    try:
        yield Step(reporter)
    finally:
        reporter.finish()


@contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Make `reporter` the active one inside the block (None: report nothing)."""
    token = _active.set(reporter)
    try:
        yield
    finally:
        _active.reset(token)


class TerminalReporter:
    """A tqdm bar per task on `stream`, shown once the task has run for `delay` seconds and erased when it ends."""

    def __init__(self, stream: IO[str], delay: float = 1.0):
        self.stream, self.delay = stream, delay
        self._bars: list[Any] = []
        self._what: list[str] = []

    def start(self, what: str, total: int | None) -> None:
        from tqdm import tqdm

        self._what.append(what)
        self._bars.append(tqdm(total=total, desc=what, file=self.stream, delay=self.delay, leave=False,
                               dynamic_ncols=True, unit="step", position=len(self._bars)))

    def note(self, text: str) -> None:
        import time

        bar = self._bars[-1]
        bar.set_description(f"{self._what[-1]}: {text}", refresh=False)
        if time.time() - bar.start_t >= self.delay:  # already shown: say at once what runs now
            bar.refresh()

    def advance(self, n: int) -> None:
        self._bars[-1].update(n)

    def finish(self) -> None:
        self._what.pop()
        self._bars.pop().close()


def terminal(quiet: bool = False, stream: IO[str] | None = None) -> Reporter | None:
    """The tools' reporter: a TerminalReporter on stderr when it is a terminal and `quiet` is off, else None."""
    stream = stream if stream is not None else sys.stderr
    if quiet or not stream.isatty():
        return None
    return TerminalReporter(stream)



__all__ = ["Reporter", "Step", "TerminalReporter", "task", "reporting", "terminal"]

"""Helpers shared by the fir command-line tools (nothing heavy is imported until it is needed)."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fir.syntax.diagnostics import FirError


def read_text(path: str | None) -> str:
    """Read a source file (or stdin when path is None or '-'); FirError if it cannot be read."""
    from fir.syntax import files

    if path is None or path == "-":
        return files.decode_utf8(sys.stdin.buffer.read(), "<stdin>")
    return files.read_text(path)


def internal_error(tool: str, e: BaseException) -> int:
    """Report a fir bug without a traceback (set FIR_DEBUG=1 to see one); exit status 3."""
    if os.environ.get("FIR_DEBUG"):
        traceback.print_exc()
    print(f"{tool}: internal error: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"{tool}: this is a bug in fir; set FIR_DEBUG=1 for a traceback and please report it", file=sys.stderr)
    return 3


def report(tool: str, e: FirError, sources: dict[str, str] | None = None) -> None:
    """Print a diagnostic on stderr: a located one reads `file:line:col: error: ...`, others name the tool."""
    print(e.render(sources) if e.loc is not None else f"{tool}: {e.render()}", file=sys.stderr)


def guarded_main(tool: str, body: Callable[[], int]) -> int:
    """Run a tool's body, turning every error into a message and an exit status (never a traceback)."""
    try:
        return body()
    except BrokenPipeError:
        return 0
    except Exception as e:
        from fir.syntax.diagnostics import FirError

        if isinstance(e, FirError):
            report(tool, e)
            return 1
        return internal_error(tool, e)

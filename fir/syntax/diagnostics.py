"""Located diagnostics: `file:line:col: error: message`, the source line and a caret."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # xDSL is imported only where a location attribute is made or read: the tools start faster
    from xdsl.dialects.builtin import FileLineColLoc
    from xdsl.ir import Attribute


@dataclass
class SourceLoc:
    """A 1-based line and column in a named source."""

    filename: str
    line: int
    col: int

    def to_attr(self) -> FileLineColLoc:
        """The xDSL location attribute for this position."""
        from xdsl.dialects.builtin import FileLineColLoc, IntAttr, StringAttr

        return FileLineColLoc(StringAttr(self.filename), IntAttr(self.line), IntAttr(self.col))


def loc_of(attr: Attribute | None) -> SourceLoc | None:
    """The SourceLoc of an xDSL location attribute, or None when it carries no position."""
    from xdsl.dialects.builtin import FileLineColLoc

    if isinstance(attr, FileLineColLoc):
        return SourceLoc(attr.filename.data, attr.line.data, attr.column.data)
    return None


@dataclass
class FirError(Exception):
    """A user-facing error with an optional source position; rendered without a traceback."""

    message: str
    loc: SourceLoc | None = None
    notes: list[str] = field(default_factory=list)
    line: str | None = None  # the source line, when the source text is not at hand (e.g. undecodable)

    def __str__(self) -> str:
        return self.message

    def render(self, sources: dict[str, str] | None = None) -> str:
        """The full diagnostic text; `sources` maps file names to their text, for the source line (else the
        error's own `line`, else the named file when it is a readable text file). Control characters are
        escaped: none reaches the terminal raw."""
        if self.loc is None:
            text = f"error: {_printable(self.message)}"
        else:
            where = _printable(f"{self.loc.filename}:{self.loc.line}:{self.loc.col}", keep_newlines=False)
            text = f"{where}: error: {_printable(self.message)}"
            line = self.line if self.line is not None else _source_line(self.loc, sources or {})
            if line is not None:
                text += "\n" + _caret(line, self.loc.col)
        for note in self.notes:
            text += f"\nnote: {_printable(note)}"
        return text


# C0 and C1 control characters but tab and newline; ESC would let a string in the input drive the terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_WIDTH = 160  # a longer source line is shown as a window around the caret


def _printable(s: str, keep_newlines: bool = True) -> str:
    s = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s)
    return s if keep_newlines else s.replace("\n", "\\n").replace("\t", "\\t")


def _source_line(loc: SourceLoc, sources: dict[str, str]) -> str | None:
    src = sources.get(loc.filename)
    if src is None:
        src = _read_small_text(loc.filename)
    if src is None:
        return None
    lines = src.split("\n")
    return lines[loc.line - 1] if 1 <= loc.line <= len(lines) else None


def _read_small_text(path: str) -> str | None:
    """The text of a regular file of at most 64 MiB (a location may name a file the error's caller did not
    read: an MLIR `loc(...)`), or None."""
    import os
    import stat

    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 64 << 20:
            return None
        with open(path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")
    except (OSError, ValueError):
        return None


def _caret(line: str, col: int) -> str:
    """The source line (a window of it when long) and a caret under column `col`."""
    line = line.rstrip("\r").replace("\t", " ")  # a tab is one column, as the parsers count it
    col = max(col, 1)
    start = max(0, min(col - 1 - _WIDTH // 2, len(line) - _WIDTH))
    shown = line[start:start + _WIDTH]
    prefix = "..." if start else ""
    suffix = "..." if start + _WIDTH < len(line) else ""
    before = _printable(prefix + shown[: col - 1 - start], keep_newlines=False)
    return prefix + _printable(shown, keep_newlines=False) + suffix + "\n" + " " * len(before) + "^"

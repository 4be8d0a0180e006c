"""Located diagnostics: `file:line:col: error: message`, the source line and a caret."""

from __future__ import annotations

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

    def __str__(self) -> str:
        return self.message

    def render(self, sources: dict[str, str] | None = None) -> str:
        """The full diagnostic text; `sources` maps file names to their text, for the source line."""
        if self.loc is None:
            text = f"error: {self.message}"
        else:
            text = f"{self.loc.filename}:{self.loc.line}:{self.loc.col}: error: {self.message}"
            src = (sources or {}).get(self.loc.filename)
            if src is not None:
                lines = src.split("\n")
                if 1 <= self.loc.line <= len(lines):
                    line = lines[self.loc.line - 1].rstrip("\r").expandtabs(1)
                    text += "\n" + line + "\n" + " " * (max(self.loc.col, 1) - 1) + "^"
        for note in self.notes:
            text += f"\nnote: {note}"
        return text

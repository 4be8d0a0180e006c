"""Checks on source text made before any parser sees it, in one linear scan: every string ends on its line, and
brackets nest at most MAX_NESTING deep. Both parsers (lark's tree builder and xDSL's recursive descent) would
otherwise fail on such input with a RecursionError, or backtrack for a long time, instead of a located error."""

from __future__ import annotations

import re

from fir.syntax.diagnostics import FirError, SourceLoc

# Deepest bracket nesting accepted: real programs stay below 10; a recursive parser needs several frames a level.
MAX_NESTING = 64

# A closed string, an unterminated one (a quote the first pattern did not take), a comment, `->` (whose `>`
# closes nothing), or a bracket. The string pattern is the unrolled form, so its cost is linear in its length.
_TOKEN = re.compile(r'"[^"\\\n]*(?:\\.[^"\\\n]*)*"|"|//[^\n]*|->|[\[\]{}()<>]')
_CLOSES = {"]": "[", "}": "{", ")": "(", ">": "<"}


def _loc(text: str, pos: int, filename: str, line_offset: int) -> SourceLoc:
    line = text.count("\n", 0, pos)
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return SourceLoc(filename, line + 1 + line_offset, col)


def check_text(text: str, filename: str, line_offset: int = 0) -> None:
    """FirError at an unterminated string or at the bracket that nests deeper than MAX_NESTING."""
    stack: list[str] = []
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok == '"':
            raise FirError("unterminated string (a string ends on its line)",
                           _loc(text, m.start(), filename, line_offset))
        if len(tok) != 1:
            continue
        if tok in _CLOSES:
            if stack and stack[-1] == _CLOSES[tok]:
                stack.pop()
            continue  # a stray closer is the parser's to report
        stack.append(tok)
        if len(stack) > MAX_NESTING:
            raise FirError(f"brackets nest more than {MAX_NESTING} deep here", _loc(text, m.start(), filename,
                                                                                  line_offset))


__all__ = ["MAX_NESTING", "check_text"]

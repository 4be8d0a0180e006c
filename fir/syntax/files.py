"""Files in and out. Text is read as UTF-8, with a located error at a bad byte. Output files are written all or
nothing: each goes to a temporary name in its directory, and all are renamed into place together once every one
is complete, so an error while writing leaves no half-written file and none of the set (a rename that fails
midway, which only the file system can cause, leaves the files renamed before it)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import IO

from fir.syntax.diagnostics import FirError, SourceLoc

Writer = Callable[[IO[bytes]], None]


def decode_utf8(data: bytes, name: str, what: str = "fir sources") -> str:
    """`data` as text; FirError at the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        col = len(before) - (before.rfind(b"\n") + 1) + 1
        raise FirError(f"invalid UTF-8 byte 0x{data[e.start]:02x}: {what} are UTF-8 text",
                       SourceLoc(name, line, col)) from None


def read_text(path: str, what: str = "", kind: str = "fir sources") -> str:
    """The UTF-8 text of a file; FirError when it cannot be read (`what` names it in the message)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FirError(f"cannot read {what + ' ' if what else ''}'{path}': {e.strerror}") from None
    return decode_utf8(data, path, kind)


class PendingFiles:
    """Files written to temporary names, renamed into place by commit()."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, str, str]] = []  # (temporary name, path, what it holds)

    def add(self, path: str, what: str, write: Writer) -> None:
        """Write a file's bytes to a temporary name next to `path`; FirError (and nothing left) on failure."""
        directory = os.path.dirname(os.path.abspath(path))
        try:
            fd, tmp = tempfile.mkstemp(prefix=".fir-", dir=directory)
        except OSError as e:
            self.discard()
            raise FirError(f"cannot write {what} '{path}': {e.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it a new file's mode
        except BaseException as e:  # whatever stopped the writer, no temporary file is left behind
            os.unlink(tmp)
            self.discard()
            if isinstance(e, OSError):
                raise FirError(f"cannot write {what} '{path}': {e.strerror}") from None
            raise
        self._pending.append((tmp, path, what))

    def commit(self) -> None:
        """Rename every written file into place."""
        pending, self._pending = self._pending, []
        for k, (tmp, path, what) in enumerate(pending):
            try:
                os.replace(tmp, path)
            except OSError as e:
                for later, _, _ in pending[k:]:
                    os.unlink(later)
                raise FirError(f"cannot write {what} '{path}': {e.strerror}") from None

    def discard(self) -> None:
        """Remove every written file."""
        for tmp, _, _ in self._pending:
            os.unlink(tmp)
        self._pending = []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_file(path: str, what: str, write: Writer) -> None:
    """Write one file all or nothing."""
    files = PendingFiles()
    files.add(path, what, write)
    files.commit()


__all__ = ["PendingFiles", "write_file", "Writer", "read_text", "decode_utf8"]

"""Files in and out. Text is read as UTF-8, with a located error at a bad byte. Output files are written all or
nothing: each goes to a temporary name, and all are put into place together once every one is complete (renamed
over the target, or copied into one that is a device or FIFO, such as /dev/null), so an error while writing leaves
no half-written file and none of the set (a rename that fails midway, which only the file system can cause,
leaves the files renamed before it)."""

from __future__ import annotations

import os
import shutil
import stat
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
        end = data.find(b"\n", e.start)
        text = data[before.rfind(b"\n") + 1 : end if end >= 0 else len(data)].decode("utf-8", errors="replace")
        raise FirError(f"invalid UTF-8 byte 0x{data[e.start]:02x}: {what} are UTF-8 text",
                       SourceLoc(name, line, col), line=text) from None


def read_text(path: str, what: str = "", kind: str = "fir sources") -> str:
    """The UTF-8 text of a file; FirError when it cannot be read (`what` names it in the message)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FirError(f"cannot read {what + ' ' if what else ''}'{path}': {e.strerror}") from None
    return decode_utf8(data, path, kind)


class PendingFiles:
    """Files written to temporary names, put into place by commit(). A target that exists and is not a regular
    file (a device such as /dev/null, a FIFO) is written through at commit instead of replaced; a symbolic link
    is followed, so the file it names is replaced and the link stays."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, str, str, bool]] = []  # (temporary name, target, what it holds, through)

    def add(self, path: str, what: str, write: Writer) -> None:
        """Write a file's bytes to a temporary name next to `path`; FirError (and nothing left) on failure."""
        target = os.path.realpath(path)
        try:
            mode = os.stat(target).st_mode
        except OSError:
            mode = None
        if mode is not None and stat.S_ISDIR(mode):
            self.discard()
            raise FirError(f"cannot write {what} '{path}': it is a directory")
        through = mode is not None and not stat.S_ISREG(mode)
        directory = tempfile.gettempdir() if through else os.path.dirname(target)
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
        self._pending.append((tmp, target, what, through))

    def commit(self) -> None:
        """Put every written file into place: renamed over its target, or copied into a non-regular one."""
        pending, self._pending = self._pending, []
        for k, (tmp, target, what, through) in enumerate(pending):
            try:
                if through:
                    with open(tmp, "rb") as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    os.unlink(tmp)
                else:
                    os.replace(tmp, target)
            except OSError as e:
                for later, _, _, _ in pending[k:]:
                    if os.path.exists(later):
                        os.unlink(later)
                raise FirError(f"cannot write {what} '{target}': {e.strerror}") from None

    def discard(self) -> None:
        """Remove every written file."""
        for tmp, _, _, _ in self._pending:
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

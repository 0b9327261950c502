"""Atomic file writes: a temporary file in the same directory, fsync'ed and ``os.replace``'d into place, so a
reader never sees a half-written file."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from grpo_check.findings import InputError


# ----------------------------------------------------------------------------------------------- atomic IO
def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


class OutputPathError(InputError, OSError):
    """An output destination that cannot be written (a directory, a parent that is a file, no permission,
    disk full). An :class:`~grpo_check.findings.InputError` (the CLI answers exit code 2 with one line) and
    still an :class:`OSError` for code that catches those."""


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``.

    A reader never sees a half-written file: either the old content (or nothing) or the new content.
    An unwritable destination (a directory, a parent that is a file, no permission, disk full) raises
    :class:`OutputPathError` naming the path; nothing is left behind.
    """
    shown = Path(path)
    target = Path(os.path.realpath(shown))  # a symlink is written through to its target, not replaced
    if target.is_dir():
        raise OutputPathError("is a directory; give a file name to write the output to", source=str(shown))
    if target.exists() and not stat.S_ISREG(target.stat().st_mode):  # a device or a pipe: renaming over
        raise OutputPathError(  # it would replace it with a plain file
            "is not a regular file (a device or a pipe); give a file name to write the output to",
            source=str(shown),
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputPathError(
            "cannot write here: a parent of this path is a file, not a directory", source=str(target)
        ) from exc
    except OSError as exc:
        raise OutputPathError(f"cannot write here: {exc.strerror or exc}", source=str(target)) from exc
    try:
        if hasattr(os, "fchmod"):  # mkstemp creates 0600; give the file the usual permissions
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise OutputPathError(f"cannot write here: {exc.strerror or exc}", source=str(shown)) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)
    return shown  # as the caller named it (a relative path stays relative in messages)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text; a character UTF-8 cannot hold (a lone surrogate read from a
    malformed input) is written as its ``\\uXXXX`` escape, never a crash."""
    return atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # pragma: no cover - directory fsync is a POSIX notion
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

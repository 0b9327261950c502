"""Shared CLI plumbing: the exit codes, the output formats, error handling.

>>> ExitCode.FINDINGS == 1, int(ExitCode.INCOMPLETE)
(True, 4)
>>> OutputFormat.parse("md", (OutputFormat.TEXT, OutputFormat.MD))
<OutputFormat.MD: 'md'>
"""

from __future__ import annotations

import contextlib
import enum
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import typer


class ExitCode(enum.IntEnum):
    """What every ``grpo-check`` command exits with (the numbers are part of the interface)."""

    OK = 0
    """Everything checked, nothing failed (with ``--strict``: nothing warned either)."""
    FINDINGS = 1
    """At least one failing finding (with ``--strict``: or a warning)."""
    USAGE = 2
    """Bad usage or input: a wrong option, a missing or malformed trace or config file."""
    CRASHED = 3
    """The user's trainer (or trainer factory) crashed or was interrupted."""
    INCOMPLETE = 4
    """A core check could not run although it could have (coverage incomplete)."""
    INTERRUPTED = 130
    """Ctrl-C (SIGINT) while grpo-check or the user's trainer was working (the shell's convention)."""
    TERMINATED = 143
    """SIGTERM while the user's trainer was training (``compare --trainer``; the shell's convention)."""


EXIT_CLEAN = ExitCode.OK
EXIT_FINDINGS = ExitCode.FINDINGS
EXIT_USAGE = ExitCode.USAGE
EXIT_CRASHED = ExitCode.CRASHED  # the user's trainer or factory crashed
EXIT_INCOMPLETE = ExitCode.INCOMPLETE  # a core check could not run although what it needs was at hand


class OutputFormat(str, enum.Enum):
    """Every format a command can print or write; each command accepts its own subset (:meth:`parse`)."""

    TEXT = "text"
    TABLE = "table"
    MD = "md"
    HTML = "html"
    JSON = "json"
    JUNIT = "junit"
    SARIF = "sarif"

    def __str__(self) -> str:  # as enum.StrEnum (Python >= 3.11) prints: the value
        return self.value

    @classmethod
    def parse(
        cls, value: str, allowed: Iterable[OutputFormat], *, message: str | None = None
    ) -> OutputFormat:
        """``value`` as a member of ``allowed``; exit 2 with ``message`` (default: the choices) otherwise."""
        choices = tuple(allowed)
        for member in choices:
            if member.value == value:
                return member
        names = [member.value for member in choices]
        listed = " or ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise fail_usage(message or f"--format must be {listed}, got {value!r}")


def fail_usage(message: str) -> typer.Exit:
    """Print ``message`` to stderr and return an Exit(2) to raise."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(EXIT_USAGE)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn user mistakes (bad paths, bad traces, bad configs) into a one-line message and exit code 2.

    Programming errors still raise with a traceback: they are our bugs, and hiding them helps nobody.
    """
    from grpo_check.findings import InputError

    try:
        yield
    except InputError as exc:
        raise fail_usage(str(exc)) from None
    except FileNotFoundError as exc:
        raise fail_usage(f"no such file or directory: {exc.filename or exc}") from None
    except IsADirectoryError as exc:
        raise fail_usage(f"expected a file, got a directory: {exc.filename or exc}") from None
    except (FileExistsError, NotADirectoryError) as exc:
        raise fail_usage(f"a parent of this path is a file, not a directory: {exc.filename or exc}") from None
    except BrokenPipeError:  # stdout closed early (`| head`): stop quietly, as other command-line tools do
        silence_closed_streams()
        sys.exit(EXIT_CLEAN)
    except PermissionError as exc:
        raise fail_usage(f"permission denied: {exc.filename or exc}") from None
    except OSError as exc:  # disk full, read-only file system, ...
        raise fail_usage(f"{exc.filename or 'I/O error'}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)


def check_output_file(path: Path, option: str = "--output") -> None:
    """Before any work is done: ``path`` can receive an output file (its directory exists or can be made, and
    it is not a directory, a device or a pipe, which an atomic write would replace). Exit 2 otherwise."""
    target = Path(os.path.realpath(path))  # a symlink is written through, to its target
    if target.is_dir():
        raise fail_usage(f"{option} {path}: is a directory; give a file name")
    if target.exists() and not stat.S_ISREG(target.stat().st_mode):
        raise fail_usage(f"{option} {path}: not a regular file (a device or a pipe); give a file name")
    check_output_dir(target.parent, option, shown=path)


def check_output_dir(path: Path, option: str = "--output", *, shown: Path | None = None) -> None:
    """Before any work is done: ``path`` is (or can be made) a writable directory. Exit 2 otherwise."""
    shown = path if shown is None else shown
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise fail_usage(f"{option} {shown}: {_first_file(path)} is a file, not a directory") from None
    except OSError as exc:
        raise fail_usage(f"{option} {shown}: cannot create {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise fail_usage(f"{option} {shown}: {path} is not writable")


def _first_file(path: Path) -> Path:
    """The path itself or the first of its parents that exists as something other than a directory."""
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return path


def refuse_output_inside(out_dir: Path, trace_path: Path) -> None:
    """Reports written into the trace itself would be read back as broken steps by every later load."""
    trace_dir = trace_path.parent if trace_path.name == "manifest.json" else trace_path
    inside = Path(os.path.realpath(out_dir))
    if inside == Path(os.path.realpath(trace_dir)) or Path(os.path.realpath(trace_dir)) in inside.parents:
        raise fail_usage(f"--output {out_dir} is inside the trace {trace_dir}; write the reports elsewhere")


def silence_closed_streams() -> None:
    """After a reader closed the pipe: point stdout and stderr at /dev/null, so that nothing printed later,
    and no flush at exit, raises a second BrokenPipeError."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file: equal once symlinks are resolved, or hard links to one inode."""
    if first.resolve() == second.resolve():
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist (yet): it cannot be the other
        return False

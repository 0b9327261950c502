"""Shared CLI plumbing: output formats, error handling with the documented exit codes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


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
    except PermissionError as exc:
        raise fail_usage(f"permission denied: {exc.filename or exc}") from None
    except OSError as exc:  # disk full, read-only file system, ...
        raise fail_usage(f"{exc.filename or 'I/O error'}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)

"""The ``grpo-check`` command line (typer).

Each subcommand lives in its own module ``grpo_check.cli.<name>`` exposing ``register(app)``. Command
modules import only typer and the standard library at module level (heavy imports such as torch and trl
happen inside the command function), so ``grpo-check --help`` answers instantly.

Exit codes: 0 clean, 1 findings, 2 usage or input error.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

import typer

from grpo_check import __version__

_COMMAND_MODULES = ("demo", "compare", "check", "report", "audit", "selfcheck", "zoo", "bench")

app = typer.Typer(
    name="grpo-check",
    help=(
        "Verify GRPO training pipelines: a float64 reference GRPO runs side by side with your trainer "
        "(or TRL's GRPOTrainer) on identical batches and says where the first divergence is, how big, "
        "and which known bug it looks like.\n\n"
        "Start with `grpo-check demo` (a tiny model built from code, TRL's real trainer, nothing downloaded).\n\n"
        "Exit codes: 0 clean, 1 findings, 2 usage or input error."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"grpo-check {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """grpo-check root options."""


for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"grpo_check.cli.{_name}")
    except ModuleNotFoundError as exc:  # a command still being built; never hide other import errors
        if exc.name != f"grpo_check.cli.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    """Console-script entry point: every outcome is an exit code and at most one line on stderr.

    Usage errors print one line (``error: ... (see grpo-check CMD --help)``) instead of a usage box; text
    the terminal cannot encode (a lone surrogate from a malformed input) is escaped; a full disk, a closed
    or unwritable standard output is one line and exit code 2 (a reader that closed the pipe early is
    left in peace, as other command-line tools do).
    """
    try:  # typer vendors its own copy of click
        from typer._click import exceptions as click
        from typer._click import utils as click_utils
    except ImportError:  # pragma: no cover - typer releases that use click itself
        from click import exceptions as click
        from click import utils as click_utils

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    try:
        code = app(standalone_mode=False, prog_name="grpo-check")
        sys.stdout.flush()  # a full disk shows here, not as an "Exception ignored" at exit
    except click.NoArgsIsHelpError as exc:
        exc.show()
        code = exc.exit_code
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "grpo-check"
        message = exc.format_message().rstrip(".")
        click_utils.echo(f"error: {message} (see '{command} --help')", err=True)
        code = exc.exit_code
    except click.ClickException as exc:
        click_utils.echo(f"error: {exc.format_message()}", err=True)
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C outside a command's own handling
        click_utils.echo("interrupted", err=True)
        code = 130
    except BrokenPipeError:
        from grpo_check.cli._common import silence_closed_streams

        silence_closed_streams()
        code = 0
    except OSError as exc:  # stdout on a full disk, an I/O error
        from grpo_check.cli._common import silence_closed_streams

        with contextlib.suppress(OSError):
            sys.stderr.write(f"error: cannot write the output: {exc.strerror or exc}\n")
            sys.stderr.flush()
        silence_closed_streams_stdout_only()
        code = 2
    sys.exit(code if isinstance(code, int) else 0)


def silence_closed_streams_stdout_only() -> None:
    """Point stdout at /dev/null, so that the flush at exit does not fail a second time."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

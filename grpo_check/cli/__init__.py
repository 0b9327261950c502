"""The ``grpo-check`` command line (typer).

Each subcommand lives in its own module ``grpo_check.cli.<name>`` exposing ``register(app)``. Command
modules import only typer and the standard library at module level (heavy imports such as torch and trl
happen inside the command function), so ``grpo-check --help`` answers instantly.

Exit codes: 0 clean, 1 findings, 2 usage or input error.
"""

from __future__ import annotations

import importlib

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
    """Console-script entry point."""
    app()

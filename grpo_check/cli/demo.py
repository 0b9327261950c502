"""``grpo-check demo``: TRL's real GRPOTrainer on a tiny model built from code, checked live over a matrix."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from grpo_check.cli._common import ExitCode, check_output_dir, fail_usage, user_errors

_HELP = """
Run TRL's real `GRPOTrainer` on a tiny transformer policy and character-level tokenizer built from code
(nothing is downloaded), with grpo-check attached: every micro-batch is compared, stage by stage, with the
float64 reference while it trains (rewards, advantages, log-probs from the reference's own forward pass,
reference-model log-probs, loss and ∂loss/∂logps).

The configurations leave the defaults that hide bugs: every TRL loss type, token and sequence importance
sampling, beta 0 and > 0, scale_rewards group/batch/none, num_iterations 1 and 2, gradient accumulation 1, 2
and 4 with steps_per_generation != gradient_accumulation_steps, temperature != 1, top_p < 1, several prompts per
micro-batch, a tokenizer whose pad token is its EOS token, left-padded prompts of different lengths.

A correct TRL comes out with zero failures. Reports go to `reports/demo/` (report.md, report.html,
result.json, junit.xml).

Examples:

    grpo-check demo                          # fast subset (4 configurations)

    grpo-check demo --matrix full            # every configuration

    grpo-check demo --only cispo --only sapo # configurations whose name contains a pattern

    grpo-check demo --processes 2            # 2 CPU processes (torchrun; accelerate uses gloo)

    grpo-check demo --list                   # show the matrix and exit

Exit codes: 0 no failing finding, 1 failing findings (with --strict also warnings), 2 usage error.
"""


def _list(all_cells, chosen, output_format: str) -> None:
    """The configurations (``*``: chosen by ``--matrix``/``--only``), as text lines or JSON."""
    if output_format == "json":
        import json

        rows = [{"name": c.name, "why": c.why, "chosen": c in chosen} for c in all_cells]
        typer.echo(json.dumps(rows, indent=2))
        return
    for cell in all_cells:
        mark = "*" if cell in chosen else " "
        typer.echo(f"{mark} {cell.name:38} {cell.why}")


def register(app: typer.Typer) -> None:
    @app.command("demo", help=_HELP)
    def demo_command(
        matrix: str = typer.Option("fast", "--matrix", "-m", help="fast (a subset, about a minute) or full."),
        only: list[str] = typer.Option(
            [], "--only", help="Run only configurations whose name contains this (repeatable)."
        ),
        processes: int = typer.Option(
            1, "--processes", "-p", help="Processes per run (2: torchrun on CPU, gloo)."
        ),
        out_dir: Path = typer.Option(
            Path("reports/demo"), "--output", "-o", help="Report folder (report.md, report.html, ...)."
        ),
        out_dir_alias: Path | None = typer.Option(None, "--out-dir", hidden=True),
        output_format: str = typer.Option(
            "text",
            "--format",
            "-f",
            help="What to print at the end: text, md, json or junit (the HTML report is written to --output).",
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the model weights, dataset and TRL."),
        strict: bool = typer.Option(False, "--strict", help="Exit 1 on warnings too."),
        list_cells: bool = typer.Option(False, "--list", help="List the configurations and exit."),
        forward_rows: str = typer.Option(
            "subset",
            "--forward-rows",
            help="The rows the reference's own forward passes run on: subset (every prompt padding, truncated "
            "and EOS-ended rows, every group and micro-batch, at least a quarter of the rows) or all.",
        ),
    ) -> None:
        with user_errors():
            from grpo_check.demo.matrix import cells

            if out_dir_alias is not None:  # the older spelling of --output
                out_dir = out_dir_alias

            chosen = cells(matrix, only or None)
            if list_cells:
                _list(cells("full"), chosen, output_format)
                raise typer.Exit(ExitCode.OK)
            if not 0 <= seed < 2**32:  # torch and numpy take seeds in [0, 2**32)
                raise fail_usage(f"--seed must be between 0 and {2**32 - 1}, got {seed}")
            if forward_rows not in ("subset", "all"):
                raise fail_usage(f"--forward-rows must be subset or all, got {forward_rows!r}")
            if processes not in (1, 2, 3, 4):
                raise fail_usage(f"--processes must be between 1 and 4, got {processes}")
            from grpo_check.report import normalise_format, render

            fmt = normalise_format(output_format)
            if fmt == "html":
                raise fail_usage(
                    "--format html prints nothing useful; the HTML report is written to --output"
                )
            check_output_dir(out_dir, "--output")  # now, not after the matrix has trained
            from grpo_check.demo.run import run_demo

            def progress(line: str) -> None:
                typer.echo(line, err=fmt != "text")

            outcome = run_demo(
                matrix,
                out_dir=out_dir,
                only=only or None,
                processes=processes,
                seed=seed,
                progress=progress,
                forward_rows=forward_rows,
            )
            result = outcome.result
            if fmt == "text":
                typer.echo("")
                typer.echo(render(result, "text", color=sys.stdout.isatty()))
                typer.echo(
                    f"{len(outcome.runs)} configuration(s) in {outcome.seconds:.1f}s; report: {out_dir}/"
                )
                for path in outcome.repro_paths:
                    typer.echo(f"repro: {path} (replay with: grpo-check compare {path})")
            else:
                typer.echo(render(result, fmt, strict=strict))
            raise typer.Exit(ExitCode.FINDINGS if result.exit_code(strict=strict) else ExitCode.OK)

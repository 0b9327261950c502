"""``grpo-check zoo``: run the bug zoo (mutants + correct controls) and print the detection scorecard."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from grpo_check.cli._common import ExitCode, OutputFormat, check_output_file, fail_usage, user_errors

_HELP = """
Prove that grpo-check catches real bugs: run every **mutant** (a GRPO pipeline with one bug from the bug
catalog planted the way it appeared in the wild: a hand-written loop recorded with `Recorder`, or TRL's real
`GRPOTrainer` patched) and every **control** (the same pipelines, correct, across a configuration matrix),
compare each with the float64 reference, and score the result:

* detected: the comparison fails; localised: `Result.first_divergence()` is in the stage the bug lives in;
  diagnosed: a finding names the bug's catalog entry;
* false positive: a control fails.

Targets: 100 % detected, >= 95 % localised, >= 90 % diagnosed, 0 false positives. Tiny models built from code,
1-3 optimizer steps per case; nothing is downloaded.

Examples:

    grpo-check zoo                              # everything, text scorecard

    grpo-check zoo --only S1 --only 6           # cases for catalog entries S1 and #6

    grpo-check zoo --only skillsbench-S1-S2-S3 --only controls

    grpo-check zoo --format md -o zoo.md        # Markdown table (as in docs/zoo.md)

    grpo-check zoo --list                       # list the cases and exit

    grpo-check zoo --history                    # shipped TRL bugs, each run on its release and its fix

With --history: every numerical bug that shipped in a TRL release and was fixed later (docs/trl-versions.md)
is run unmodified on the last release that has it and on the release that fixed it, each in its own
environment (built on first use under ~/.cache/grpo-check/trl, or --cache-dir; minutes the first time). A
case scores when the buggy release fails in the bug's stage with the bug named (fixing release and pull
request) and the fixing release is clean. --only filters by bug id.

Exit codes: 0 every target met, 1 a target missed, 2 usage error (e.g. an unknown --only id).
"""


def register(app: typer.Typer) -> None:
    @app.command("zoo", help=_HELP)
    def zoo_command(
        output_format: str = typer.Option(
            "text", "--format", "-f", help="Scorecard format: text, md or json."
        ),
        only: list[str] = typer.Option(
            [],
            "--only",
            help="Case id, catalog id (S1, 6, #6), 'mutants' or 'controls' (repeatable). Default: all.",
        ),
        output: Path | None = typer.Option(
            None, "--output", "-o", help="Also write the scorecard (in --format) to this file."
        ),
        list_cases: bool = typer.Option(False, "--list", help="List the cases and exit."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines on stderr."),
        history: bool = typer.Option(
            False, "--history", help="Run the shipped-TRL-bug cases on their buggy and fixing releases."
        ),
        cache_dir: Path | None = typer.Option(
            None, "--cache-dir", help="With --history: where the per-release environments live."
        ),
    ) -> None:
        output_format = OutputFormat.parse(
            output_format,
            (OutputFormat.TEXT, OutputFormat.MD, OutputFormat.JSON),
            message=f"--format must be text, md or json, got {output_format!r}",
        )
        if history:
            _history(only, output_format, output, list_cases, quiet, cache_dir)
        with user_errors():
            from grpo_check.zoo.cases import select_cases

            cases = select_cases(only or None)
            if list_cases:
                _list(cases, output_format)
                raise typer.Exit(ExitCode.OK)
            if output is not None:
                check_output_file(output)  # now, not after minutes of training
            card = _run(cases, quiet=quiet)
            text = _render(card, output_format)
            typer.echo(text)
            if output is not None:
                output.parent.mkdir(parents=True, exist_ok=True)
                output.write_text(text + "\n", encoding="utf-8")
        raise typer.Exit(ExitCode.OK if card.targets_met() else ExitCode.FINDINGS)


def _list(cases, output_format: str) -> None:
    rows = [
        {
            "id": case.id,
            "pipeline": case.pipeline,
            "bugs": [f"{b.label()}@{b.stage}" for b in case.bugs],
            "title": case.title,
        }
        for case in cases
    ]
    if output_format == "json":
        import json

        typer.echo(json.dumps(rows, indent=2))
        return
    if output_format == "md":
        typer.echo("| case | pipeline | bugs | title |\n|---|---|---|---|")
    for row in rows:
        bugs = " + ".join(row["bugs"]) or "control"
        if output_format == "md":
            typer.echo(f"| `{row['id']}` | {row['pipeline']} | {bugs} | {row['title']} |")
        else:
            typer.echo(f"{row['id']:44} {row['pipeline']:5} {bugs:28} {row['title']}")


def _run(cases, *, quiet: bool):
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from grpo_check.zoo.scorecard import describe_score, run_scorecard

    def progress(done: int, total: int, score) -> None:
        if not quiet:
            print(
                f"[{done:>2}/{total}] {describe_score(score)} ({score.seconds:.1f} s)",
                file=sys.stderr,
                flush=True,
            )

    if not quiet:
        print(f"grpo-check zoo: {len(cases)} cases", file=sys.stderr, flush=True)
    return run_scorecard([c.id for c in cases], progress=progress)


def _render(card, output_format: str) -> str:
    import json

    from grpo_check.zoo.scorecard import render_markdown, render_text

    if output_format == "json":
        return json.dumps(card.to_dict(), indent=2)
    if output_format == "md":
        return render_markdown(card)
    return render_text(card)


def _history(only, output_format: str, output, list_cases: bool, quiet: bool, cache_dir) -> None:
    """``zoo --history``: the shipped-bug cases (exits)."""
    from grpo_check.zoo.history import select_history

    cases = select_history(only or None)
    if not cases:
        raise fail_usage(f"no history case matches {only}; see grpo-check zoo --history --list")
    if list_cases:
        for case in cases:
            typer.echo(f"{case.id:28} TRL {case.buggy} (bug) / {case.fixed} (fix)  {case.bug.title}")
        raise typer.Exit(ExitCode.OK)
    with user_errors():
        if output is not None:
            check_output_file(output)
        from grpo_check.zoo.history.run import run_history

        def progress(line: str) -> None:
            if not quiet:
                print(line, file=sys.stderr, flush=True)

        card = run_history(cases, cache=cache_dir, progress=progress)
        text = card.render(output_format)
        typer.echo(text)
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text + "\n", encoding="utf-8")
    raise typer.Exit(ExitCode.OK if card.all_scored() else ExitCode.FINDINGS)

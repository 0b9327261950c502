"""``grpo-check report``: render (and merge) saved results as text, Markdown, HTML, JSON or JUnit XML."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from grpo_check.cli._common import ExitCode, same_file, user_errors

_HELP = """
Render one or more saved results (`result.json`, written by `grpo-check compare`/`check` or by
`grpo_check.report.write_report`) as a report. Several results (e.g. one per rank of a distributed run) are
merged into one: every finding is tagged with the file it came from and its rank.

A RESULT may also be a report directory (its `result.json` is used, or `result.partial.jsonl` when the run
was killed before finishing), or a `result.partial.jsonl` log directly: findings found before a crash are
never lost.

Formats: `text` (terminal, coloured when writing to a terminal), `md`, `html` (self-contained page with
plots embedded), `json` (the merged result), `junit` (XML for CI: one testcase per failing check per step,
one per check for the rest).

Examples:

    grpo-check report reports/run1/result.json

    grpo-check report reports/run1 --format html --output reports/run1/report.html

    grpo-check report rank0/result.json rank1/result.json --format junit --output junit.xml

    grpo-check report reports/run1/result.json --out-dir reports/run1-rendered

Exit codes: 0 no failing finding, 1 failing findings (with --strict also warnings) or an incomplete result
(a run killed before it finished: its later checks never ran), 2 unreadable input, unwritable output, or an
output (--output, or a file --out-dir would write) that is one of the inputs: nothing is overwritten.
"""


def register(app: typer.Typer) -> None:
    @app.command("report", help=_HELP)
    def report_command(
        results: list[Path] = typer.Argument(
            ..., metavar="RESULT", help="result.json files, report directories or .jsonl logs."
        ),
        output_format: str = typer.Option(
            "text", "--format", "-f", help="text, md, html, json or junit (xml)."
        ),
        output: Path | None = typer.Option(
            None, "--output", "-o", help="Write the report to this file instead of stdout."
        ),
        out_dir: Path | None = typer.Option(
            None, "--out-dir", help="Also write report.md, report.html, result.json and junit.xml here."
        ),
        strict: bool = typer.Option(
            False, "--strict", help="Exit 1 on warnings too (and count them as JUnit failures)."
        ),
        color: bool | None = typer.Option(
            None, "--color/--no-color", help="Colour the text format (default: when stdout is a terminal)."
        ),
    ) -> None:
        with user_errors():
            from grpo_check.report import (
                load_result,
                merge_results,
                normalise_format,
                render,
                write_report,
            )
            from grpo_check.report.atomic import atomic_write_text

            fmt = normalise_format(output_format)
            resolved = [_resolve(path) for path in results]
            _refuse_duplicates(resolved)
            _refuse_overwriting_inputs(resolved, output=output, out_dir=out_dir)
            if out_dir is not None:  # fail before printing anything when the directory cannot be made
                from grpo_check.report import make_output_dir

                make_output_dir(out_dir)
            loaded = [load_result(path) for path in resolved]
            if len(loaded) == 1:
                result = loaded[0]
            else:  # tag each finding with the file it came from (e.g. rank0/result.json)
                result = merge_results(loaded, sources=[str(path) for path in resolved])
            use_color = (sys.stdout.isatty() and output is None) if color is None else color
            if fmt == "text":
                from grpo_check.report.terminal import render_terminal

                text = render_terminal(result, color=use_color)
            else:
                text = render(result, fmt, strict=strict)
            if output is None:
                typer.echo(text, nl=False)
            else:
                atomic_write_text(output, text)
                typer.echo(f"wrote {output}", err=True)
            if out_dir is not None:
                for path in write_report(result, out_dir).values():
                    typer.echo(f"wrote {path}", err=True)
        if result.metadata.get("incomplete"):  # a crashed run is never "clean": its later checks never ran
            typer.secho(f"warning: incomplete result: {result.metadata['incomplete']}", err=True, fg="yellow")
            raise typer.Exit(ExitCode.FINDINGS)
        raise typer.Exit(ExitCode.FINDINGS if result.exit_code(strict=strict) else ExitCode.OK)


def _resolve(path: Path) -> Path:
    """A report directory stands for its result.json (or, after a crash, its result.partial.jsonl). A folder
    whose report set is incomplete or mixes two runs is refused (its result.json may be another run's)."""
    from grpo_check.report.atomic import check_report_set

    if path.is_dir():
        check_report_set(path)
    elif path.name == "result.json":
        check_report_set(path.parent)
    if path.is_dir():
        for name in ("result.json", "result.partial.jsonl"):
            if (path / name).is_file():
                return path / name
        from grpo_check.findings import InputError

        raise InputError("directory holds no result.json or result.partial.jsonl", source=str(path))
    return path


def _refuse_duplicates(paths: list[Path]) -> None:
    """The same result named twice would count every finding twice in the merged report."""
    seen: dict[Path, Path] = {}
    for path in paths:
        key = path.resolve()
        if key in seen:
            from grpo_check.findings import InputError

            raise InputError(
                f"given twice (also as {seen[key]}); merging it would count each finding twice",
                source=str(path),
            )
        seen[key] = path


def _out_dir_files(out_dir: Path) -> list[Path]:
    """The files ``--out-dir`` writes (``write_report``'s default formats)."""
    from grpo_check.report import DEFAULT_FORMATS, FILE_NAMES

    return [out_dir / FILE_NAMES[fmt] for fmt in DEFAULT_FORMATS]


def _refuse_overwriting_inputs(inputs: list[Path], *, output: Path | None, out_dir: Path | None) -> None:
    """Writing the report over a saved result would destroy it (and its findings) for good."""
    from grpo_check.findings import InputError

    for path in inputs:
        if output is not None and same_file(output, path):
            raise InputError(
                f"--output {output} is this input file: writing the report there would destroy the saved "
                "result; choose another --output file",
                source=str(path),
            )
        if out_dir is None:
            continue
        for target in _out_dir_files(out_dir):
            if same_file(target, path):
                raise InputError(
                    f"--out-dir {out_dir} would overwrite this input ({target.name}) with "
                    f"{_replacement(len(inputs))}; choose another --out-dir (e.g. a new directory)",
                    source=str(path),
                )


def _replacement(input_count: int) -> str:
    """What ``--out-dir`` would write over an input: for a merge, the input's own findings are lost."""
    if input_count > 1:
        return "the merged result, losing its own findings (and a later merge would count them twice)"
    return "a re-rendered copy of itself"

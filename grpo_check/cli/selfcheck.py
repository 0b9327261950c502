"""``grpo-check selfcheck``: replay the golden vectors against the installed reference implementation."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from grpo_check.cli._common import ExitCode, OutputFormat, user_errors


def register(app: typer.Typer) -> None:
    @app.command(
        "selfcheck",
        help=(
            "Replay the golden vectors (reference/golden/*.json) against the installed float64 reference "
            "GRPO implementation and print pass/fail per case.\n\n"
            "The expected values were computed by an independent plain-Python implementation "
            "(reference/golden/generate.py), 20+ of them worked by hand in reference/grpo-algorithm.md. "
            "Run it after installing or upgrading torch to confirm the reference itself is sound before "
            "trusting a comparison against it.\n\n"
            "Examples:\n\n"
            "    grpo-check selfcheck\n\n"
            "    grpo-check selfcheck --format json > selfcheck.json\n\n"
            "    grpo-check selfcheck --golden-dir my_vectors/ --only adv-\n\n"
            "Exit codes: 0 all cases pass, 1 some case failed, 2 usage error (bad folder, bad JSON, a "
            "malformed case: unknown function, dtype, input or keyword, ragged data, bad spec, duplicate id)."
        ),
    )
    def selfcheck(
        output_format: str = typer.Option("text", "--format", "-f", help="Output format: text or json."),
        golden_dir: Path | None = typer.Option(
            None, "--golden-dir", help="Folder of golden *.json files (default: the packaged vectors)."
        ),
        only: str | None = typer.Option(None, "--only", help="Replay only cases whose id starts with this."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print each case's description."),
    ) -> None:
        output_format = OutputFormat.parse(
            output_format,
            (OutputFormat.TEXT, OutputFormat.JSON),
            message=f"--format must be 'text' or 'json', got {output_format!r}",
        )
        with user_errors():
            from grpo_check.findings import InputError
            from grpo_check.reference.golden import load_cases, replay_case

            if golden_dir is not None and not golden_dir.is_dir():
                raise InputError(f"--golden-dir {golden_dir} is not a folder")
            cases = load_cases(golden_dir)
            if only:
                cases = [c for c in cases if c["id"].startswith(only)]
                if not cases:
                    raise InputError(f"no golden case id starts with {only!r}")
            results = [replay_case(case) for case in cases]
        failed = [r for r in results if not r.passed]
        if output_format == "json":
            payload = {
                "passed": len(results) - len(failed),
                "failed": len(failed),
                "total": len(results),
                "cases": [r.to_dict() for r in results],
            }
            typer.echo(json.dumps(payload, indent=2))
        else:
            descriptions = {c["id"]: c.get("description", "") for c in cases}
            for result in results:
                mark = "PASS" if result.passed else "FAIL"
                hand = " (hand-worked)" if result.hand_worked else ""
                typer.echo(f"{mark}  {result.case_id:<36} {result.function}{hand}")
                if verbose:
                    typer.echo(f"      {descriptions[result.case_id]}")
                for mismatch in result.mismatches:
                    typer.echo(f"      {mismatch}")
            summary = f"{len(results) - len(failed)}/{len(results)} golden cases pass"
            if failed:
                summary += f"; {len(failed)} FAILED: the installed reference disagrees with the specification"
            typer.echo(summary)
        raise typer.Exit(ExitCode.FINDINGS if failed else ExitCode.OK)

"""``grpo-check check``: invariants only, on one trainer's own tensors (no reference)."""

from __future__ import annotations

from pathlib import Path

import typer

from grpo_check.cli._common import ExitCode, refuse_output_inside, user_errors

_HELP = """
Run the single-implementation invariants on every step of a recorded trace — no reference, no model:
advantages sum to 0 per prompt group, log-probs ≤ 0, ρ ≡ 1 on-policy, ∂loss/∂logp = 0 where clipping
binds, masks end at the first EOS, NaN rewards carry zero advantage, and more.

Reports (report.md, report.html, result.json, junit.xml) are written atomically into `--output`
(default `reports/<trace name>`).

Examples:

    grpo-check check traces/run1

    grpo-check check traces/run1 --format junit --output reports/ci

Exit codes: 0 clean, 1 findings (with --strict also warnings), 2 usage or input error.
"""


def register(app: typer.Typer) -> None:
    @app.command("check", help=_HELP)
    def check_command(
        trace_path: Path = typer.Argument(..., metavar="TRACE", help="Trace directory to check."),
        output_format: str = typer.Option(
            "text", "--format", "-f", help="Printed format: text, md, html, json, junit."
        ),
        output: Path | None = typer.Option(
            None, "--output", "-o", help="Report directory (default: reports/ and the trace's name)."
        ),
        strict: bool = typer.Option(False, "--strict", help="Exit 1 on warnings too."),
    ) -> None:
        with user_errors():
            from grpo_check.cli.compare import emit
            from grpo_check.compare import check
            from grpo_check.report import make_output_dir, normalise_format
            from grpo_check.trace.io import load_trace

            normalise_format(output_format)
            trace = load_trace(trace_path)
            out_dir = output or Path("reports") / (trace_path.resolve().name or "trace")
            refuse_output_inside(out_dir, trace_path)
            out_dir = make_output_dir(out_dir)
            result = check(trace, source=str(trace_path))
            code = emit(result, output_format=output_format, out_dir=out_dir, strict=strict, trace=trace)
        raise typer.Exit(ExitCode(code))

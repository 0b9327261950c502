"""``grpo-check audit``: check a TRL GRPO config file against the audit rules."""

from __future__ import annotations

from pathlib import Path

import typer

from grpo_check.cli._common import ExitCode, OutputFormat, fail_usage, same_file, user_errors

_HELP = """
Audit a TRL GRPO configuration before launching a run: everything the TRL release would refuse (as errors),
cross-field consistency TRL checks late or not at all, settings that silently change the objective, values
outside the ranges the GRPO literature uses, defaults that changed between TRL releases, and advisories
(GA6xx): numerical GRPO bugs that shipped in the TRL release audited against, with the PR that fixed them and
the first release that has the fix. Every rule has a reason, a source and a fix.

CONFIG is a YAML or JSON file as TRL's CLI uses it (flat GRPOConfig fields), or a larger recipe with the
fields nested under e.g. `training:`, `trainer:`, `grpo:` or `args:` (found automatically). A problem confined
to one key (a key written twice, a line that is not YAML, a key of another trainer) is a finding on that key;
the rest of the file is still audited. Launcher settings the file carries (num_processes, nproc_per_node ×
nnodes, …) are read; a rule that needs the number of processes and finds none says it assumed 1. Pickled
files (training_args.bin, *.pt, *.pkl) are refused: export with
`json.dump(trainer.args.to_dict(), open("cfg.json", "w"))`.

Output (default `--format text`) reads like ruff or flake8: one line per finding,
`path:line: CODE severity message`, then each distinct fix once with the codes it applies to, then a
summary line. `--format table` draws a table; json, md and sarif are for tools.

Examples:

    grpo-check audit examples/audit/bad.yaml

    grpo-check audit examples/audit/bad.yaml --format table

    grpo-check audit recipe.yaml --trl-version 0.19 --num-processes 8 --strict

    grpo-check audit examples/audit/dapo-recipe.yaml --trl-version 1.8.0

    grpo-check audit cfg.json --format sarif --output audit.sarif

    grpo-check audit --explain GA101

    grpo-check audit --list-rules

Exit codes: 0 clean, 1 error findings (with --strict also warnings), 2 unreadable or refused input (not
YAML/JSON beyond a few lines, a pickle) or an unwritable --output.
"""


def register(app: typer.Typer) -> None:
    @app.command("audit", help=_HELP)
    def audit_command(
        config: Path | None = typer.Argument(None, help="YAML or JSON config (flat or nested recipe)."),
        trl_version: str | None = typer.Option(
            None,
            "--trl-version",
            help=(
                "Audit against this TRL release (e.g. 0.19 or 0.22.1): its defaults, the fields and values it "
                "accepts, the bugs it shipped. Default: the installed trl."
            ),
        ),
        output_format: str = typer.Option(
            "text", "--format", "-f", help="text (linter lines, default), table (rich), json, md or sarif."
        ),
        output: Path | None = typer.Option(
            None, "--output", "-o", help="Write the report here instead of stdout."
        ),
        strict: bool = typer.Option(False, "--strict", help="Exit 1 on warnings too."),
        num_processes: int | None = typer.Option(
            None,
            "--num-processes",
            "-n",
            help=(
                "Processes (GPUs) the run uses. Default: the file's launcher settings (num_processes, "
                "nproc_per_node × nnodes …), else 1, which the findings that depend on it say they assumed."
            ),
        ),
        num_reward_funcs: int | None = typer.Option(
            None, "--num-reward-funcs", help="Number of reward functions, to check reward_weights."
        ),
        min_severity: str = typer.Option(
            "info", "--min-severity", help="Show findings at or above: info, warning or error."
        ),
        explain: str | None = typer.Option(
            None, "--explain", help="Print the full rationale of a rule and exit."
        ),
        list_rules: bool = typer.Option(False, "--list-rules", help="List every rule and exit."),
    ) -> None:
        from grpo_check.audit.render import FORMATS

        output_format = OutputFormat.parse(
            output_format,
            (OutputFormat(name) for name in FORMATS),
            message=f"--format must be one of {', '.join(FORMATS)}, got {output_format!r}",
        )
        if min_severity not in ("info", "warning", "error"):
            raise fail_usage(f"--min-severity must be info, warning or error, got {min_severity!r}")
        if config is not None and (explain is not None or list_rules):
            raise fail_usage(
                "--explain and --list-rules describe the rules and audit nothing: drop CONFIG or them"
            )
        if output is not None and config is not None and same_file(output, config):
            raise fail_usage(f"--output {output} is the config being audited; writing there would destroy it")
        if explain is not None:
            _explain_rule(explain, output_format, output)
            raise typer.Exit(ExitCode.OK)
        if list_rules:
            _list_rules(output_format, output)
            raise typer.Exit(ExitCode.OK)
        if config is None:
            raise fail_usage("missing CONFIG (a YAML or JSON file); see `grpo-check audit --help`")
        with user_errors():
            from grpo_check.audit import audit

            result = audit(
                config,
                trl_version=trl_version,
                num_processes=num_processes,
                num_reward_funcs=num_reward_funcs,
            )
        _emit(result, output_format, output, min_severity)
        raise typer.Exit(ExitCode.FINDINGS if result.exit_code(strict=strict) else ExitCode.OK)


def _emit(result, output_format: str, output: Path | None, min_severity: str) -> None:
    from grpo_check.audit import render

    if output_format == "table" and output is None:
        render.print_table(result, min_severity=min_severity)
        return
    if output_format == "json":
        text = result.to_json()
    elif output_format == "sarif":
        from grpo_check.audit.sarif import to_sarif_json

        text = to_sarif_json(result)
    elif output_format == "md":
        text = render.to_markdown(result, min_severity=min_severity)
    else:
        text = render.to_text(result, min_severity=min_severity)
    _write(text, output)


def _write(text: str, output: Path | None) -> None:
    """``text`` to stdout, or atomically to ``output`` (an unwritable path is a usage error, exit 2)."""
    if output is None:
        typer.echo(text)
        return
    from grpo_check.trace.io import atomic_write_text

    with user_errors():
        atomic_write_text(output, text + "\n")
    typer.echo(f"wrote {output}", err=True)


# The --format values each rule-listing mode can honour (table and text both mean plain text there).
_EXPLAIN_FORMATS: tuple[str, ...] = ("table", "text", "json")
_LIST_FORMATS: tuple[str, ...] = ("table", "text", "json", "md")


def _require_format(mode: str, output_format: str, supported: tuple[str, ...]) -> None:
    if output_format not in supported:
        raise fail_usage(
            f"--format {output_format} does not apply to {mode}; use one of {', '.join(supported)}"
        )


def _explain_rule(rule_id: str, output_format: str, output: Path | None) -> None:
    import json

    from grpo_check.audit.rules import get_rule

    _require_format("--explain", output_format, _EXPLAIN_FORMATS)
    try:
        current = get_rule(rule_id)
    except KeyError as exc:
        raise fail_usage(str(exc.args[0])) from None
    if output_format == "json":
        _write(json.dumps(current.to_dict(), indent=2, ensure_ascii=False), output)
    else:
        _write(current.explain().rstrip("\n"), output)


def _list_rules(output_format: str, output: Path | None) -> None:
    import json

    from grpo_check.audit.rules import RULES

    _require_format("--list-rules", output_format, _LIST_FORMATS)
    if output_format == "json":
        text = json.dumps([r.to_dict() for r in RULES.values()], indent=2, ensure_ascii=False)
    elif output_format == "md":
        rows = [f"| `{r.id}` | {r.severity} | {r.category} | {r.title} |" for r in RULES.values()]
        text = "\n".join(["| id | severity | category | title |", "|---|---|---|---|", *rows])
    else:
        text = "\n".join(f"{r.id}  {r.severity:7}  {r.category:18}  {r.title}" for r in RULES.values())
    _write(text, output)

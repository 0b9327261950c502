"""Render audit results: a rich terminal table, plain text, Markdown, JSON, SARIF. Pure functions of a Result."""

from __future__ import annotations

from typing import Any

from grpo_check.findings import Finding, Result

FORMATS: tuple[str, ...] = ("table", "text", "json", "md", "sarif")
_ORDER = {"error": 0, "warning": 1, "info": 2}


def severity_of(finding: Finding) -> str:
    return str(finding.details.get("severity", "warning"))


def filter_findings(result: Result, min_severity: str = "info") -> list[Finding]:
    """Findings at or above ``min_severity``, errors first, then by rule id (stable)."""
    limit = _ORDER[min_severity]
    kept = [f for f in result if _ORDER.get(severity_of(f), 1) <= limit]
    return sorted(kept, key=lambda f: (_ORDER.get(severity_of(f), 1), f.check_id))


def _where(finding: Finding) -> str:
    fields = finding.details.get("fields") or []
    field = fields[0] if fields else "-"
    line = finding.details.get("line")
    return f"{field}:{line}" if line else field


def summary_line(result: Result) -> str:
    counts = {"error": 0, "warning": 0, "info": 0}
    for finding in result:
        counts[severity_of(finding)] = counts.get(severity_of(finding), 0) + 1
    meta = result.metadata
    where = f" (fields under `{meta['key_path']}`)" if meta.get("key_path") else ""
    assumed = "".join(f"; assumed {note}" for note in meta.get("assumptions", ()))
    return (
        f"{meta.get('source', '?')}{where}: {counts['error']} error(s), {counts['warning']} warning(s), "
        f"{counts['info']} info — {len(meta.get('rules_run', []))} rules, TRL {meta.get('trl_version')} "
        f"({meta.get('trl_version_source')}; defaults table {meta.get('trl_version_table')}){assumed}"
    )


def _line(finding: Finding, result: Result) -> int:
    """The field's line, else the line of the section holding the fields (a field left unset belongs
    there), else 1 (the file)."""
    return int(finding.details.get("line") or result.metadata.get("section_line") or 1)


def _location(finding: Finding, result: Result) -> str:
    """``path:line`` of a finding in a file; an object's description otherwise."""
    meta = result.metadata
    source = str(meta.get("source", "?"))
    if meta.get("source_kind") != "file":
        return source
    return f"{source}:{_line(finding, result)}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _message(finding: Finding) -> str:
    """The explanation, prefixed with the field it is about when the explanation does not name it."""
    fields = [
        f for f in finding.details.get("fields") or [] if not str(f).startswith("<") and f != "trl_version"
    ]
    message = _one_line(finding.explanation)
    if fields and str(fields[0]) not in message:
        message = f"{fields[0]}: {message}"
    return message


def to_text(result: Result, *, min_severity: str = "info") -> str:
    """Linter-style text (as ruff and flake8 print): one line per finding, ``path:line: CODE severity
    message``; then each distinct fix once, with the codes it applies to; then the summary line."""
    shown = filter_findings(result, min_severity)
    shown.sort(key=lambda f: (_line(f, result), _ORDER.get(severity_of(f), 1), f.check_id))
    lines = [
        f"{_location(finding, result)}: {finding.check_id} {severity_of(finding)} {_message(finding)}"
        for finding in shown
    ]
    fixes: dict[str, list[str]] = {}
    for finding in shown:
        if finding.fix:
            codes = fixes.setdefault(_one_line(finding.fix), [])
            if finding.check_id not in codes:
                codes.append(finding.check_id)
    if fixes:
        lines.append("")
        for fix, codes in fixes.items():
            count = sum(1 for f in shown if f.fix and _one_line(f.fix) == fix)
            times = f" ({count} findings)" if count > 1 else ""
            lines.append(f"fix {', '.join(codes)}{times}: {fix}")
    if shown:
        lines.append("")
    lines.append(summary_line(result))
    return "\n".join(lines)


def to_markdown(result: Result, *, min_severity: str = "info") -> str:
    lines = [
        "| severity | rule | field (line) | finding | fix |",
        "|---|---|---|---|---|",
    ]
    for finding in filter_findings(result, min_severity):
        cells = [
            severity_of(finding),
            f"`{finding.check_id}`",
            f"`{_where(finding)}`",
            finding.explanation,
            finding.fix or "",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    lines.append("")
    lines.append(summary_line(result))
    return "\n".join(lines)


def print_table(result: Result, *, min_severity: str = "info", console: Any = None) -> None:
    """A rich table on the terminal (imported lazily)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    if not filter_findings(result, min_severity):
        console.print("no findings", style="green")
        console.print(summary_line(result), markup=False, highlight=False)
        return
    style = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    table = Table(show_lines=False, expand=True)
    table.add_column("sev", no_wrap=True)
    table.add_column("rule", no_wrap=True)
    table.add_column("field:line", overflow="fold")
    table.add_column("finding  [dim](fix)[/]", ratio=1)
    for finding in filter_findings(result, min_severity):
        severity = severity_of(finding)
        text = Text(finding.explanation)
        if finding.fix:
            text.append("\nfix: " + finding.fix, style="dim")
        table.add_row(f"[{style.get(severity, '')}]{severity}[/]", finding.check_id, _where(finding), text)
    console.print(table)
    console.print(summary_line(result), markup=False, highlight=False)

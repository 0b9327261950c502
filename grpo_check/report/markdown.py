"""Markdown renderer: summary, first divergence, per-stage table, one table row per finding, details.

Example::

    >>> from grpo_check.findings import Finding, Result
    >>> text = render_markdown(Result([Finding("loss.finite", "loss", "pass", explanation="all finite")]))
    >>> "| PASS | `loss.finite` |" in text
    True
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from grpo_check.coverage import coverage_lines
from grpo_check.findings import Finding, Result, Verdict, severity
from grpo_check.report._common import (
    VERDICT_SYMBOL,
    counts_line,
    fmt_number,
    headline,
    metadata_items,
    ordered_findings,
    stage_summary,
)


def _text(text: Any) -> str:
    """Prose from a finding or the metadata, ``&``, ``<`` and ``>`` escaped: Markdown renders raw HTML."""
    return html.escape("" if text is None else str(text), quote=False)


def _cell(text: Any) -> str:
    """Escape text for a Markdown table cell (HTML-significant characters, pipes, line breaks)."""
    return _text(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


def _code_cell(text: Any) -> str:
    """An inline code span inside a table cell: only pipes need escaping there (GFM unescapes them)."""
    return _code(text).replace("|", "\\|")


def _code(text: Any) -> str:
    """An inline code span holding ``text`` verbatim (no HTML inside it), whatever backticks it holds."""
    value = " ".join(("" if text is None else str(text)).splitlines())
    fence = "`" * (_longest_backtick_run(value) + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def _code_block(text: str, language: str = "") -> list[str]:
    """A fenced code block that ``text`` cannot close early (the fence outruns its backticks)."""
    fence = "`" * max(3, _longest_backtick_run(text) + 1)
    return [f"{fence}{language}", text, fence]


def _longest_backtick_run(value: str) -> int:
    return max((len(run) for run in re.findall(r"`+", value)), default=0)


def render_markdown(result: Result, *, title: str = "grpo-check report") -> str:
    """Render ``result`` as GitHub-flavoured Markdown."""
    lines: list[str] = [f"# {_text(title)}", "", f"**{headline(result)}**", ""]
    source = result.metadata.get("source")
    if source:
        lines += [f"Checked: {_code(source)}", ""]
    if result.metadata.get("incomplete"):
        lines += [f"> **Incomplete:** {_text(result.metadata['incomplete'])}", ""]
    coverage = coverage_lines(result.metadata.get("coverage"))
    if coverage:
        lines += ["## Coverage", "", *(f"- {_text(line)}" for line in coverage), ""]

    first = result.first_divergence()
    if first is not None:
        lines += ["## First divergence", "", *_finding_block(first), ""]

    rows = stage_summary(result)
    if rows:
        lines += [
            "## Per stage",
            "",
            "| stage | fail | warn | pass | other | worst | worst figure/tolerance |",
            "|---|---:|---:|---:|---:|---|---:|",
        ]
        for row in rows:
            other = row.total - row.counts["fail"] - row.counts["warn"] - row.counts["pass"]
            lines.append(
                f"| {_cell(row.stage)} | {row.counts['fail']} | {row.counts['warn']} | {row.counts['pass']} "
                f"| {other} "
                f"| {VERDICT_SYMBOL[row.worst.value]} | {fmt_number(row.worst_ratio)} |"
            )
        lines.append("")

    findings = ordered_findings(result)
    lines += [f"## Findings ({counts_line(result)})", ""]
    if findings:
        lines += [
            "| verdict | check | stage | where | figure | tolerance | explanation |",
            "|---|---|---|---|---:|---:|---|",
        ]
        for finding in findings:
            lines.append(
                f"| {VERDICT_SYMBOL[finding.verdict.value]} | {_code_cell(finding.check_id)} "
                f"| {_cell(finding.stage)} "
                f"| {_cell(finding.where.describe())} | {fmt_number(finding.figure)} "
                f"| {fmt_number(finding.tolerance)} | {_cell(finding.explanation)} |"
            )
        lines.append("")
    else:
        lines += ["No findings.", ""]

    serious = [f for f in findings if severity(f.verdict) >= severity(Verdict.WARN) and f is not first]
    if serious:
        lines += ["## Details", ""]
        for finding in serious:
            lines += [*_finding_block(finding), ""]

    items = metadata_items(result)
    if items:
        lines += ["## Run metadata", ""]
        for key, value in items:
            if isinstance(value, (dict, list)):
                lines += [
                    f"<details><summary>{_text(key)}</summary>",
                    "",
                    *_code_block(json.dumps(value, indent=2, default=str), "json"),
                    "",
                    "</details>",
                    "",
                ]
            else:
                lines.append(f"- **{_text(key)}**: {_code(value)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _finding_block(finding: Finding) -> list[str]:
    """What, where, how much, allowed, likely cause, fix, as a Markdown list."""
    symbol = VERDICT_SYMBOL[finding.verdict.value]
    out = [f"### {symbol} {_code(finding.check_id)} ({_text(finding.stage)})", ""]
    if finding.explanation:
        out.append(f"- **what**: {_text(finding.explanation)}")
    out.append(f"- **where**: {_text(finding.where.describe())}")
    if finding.figure is not None:
        out.append(f"- **measured**: {fmt_number(finding.figure)} (allowed {fmt_number(finding.tolerance)})")
    if finding.likely_cause:
        catalog = f" (bug-catalog {_text(finding.catalog_id)})" if finding.catalog_id else ""
        out.append(f"- **likely cause**: {_text(finding.likely_cause)}{catalog}")
    if finding.fix:
        out.append(f"- **fix**: {_text(finding.fix)}")
    return out

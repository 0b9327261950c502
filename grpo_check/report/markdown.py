"""Markdown renderer: summary, first divergence, per-stage table, one table row per finding, details.

Example::

    >>> from grpo_check.findings import Finding, Result
    >>> text = render_markdown(Result([Finding("loss.finite", "loss", "pass", explanation="all finite")]))
    >>> "| PASS | `loss.finite` |" in text
    True
"""

from __future__ import annotations

import json
from typing import Any

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


def _cell(text: Any) -> str:
    """Escape text for a Markdown table cell."""
    value = "" if text is None else str(text)
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


def render_markdown(result: Result, *, title: str = "grpo-check report") -> str:
    """Render ``result`` as GitHub-flavoured Markdown."""
    lines: list[str] = [f"# {title}", "", f"**{headline(result)}**", ""]
    source = result.metadata.get("source")
    if source:
        lines += [f"Checked: `{source}`", ""]
    if result.metadata.get("incomplete"):
        lines += [f"> **Incomplete:** {result.metadata['incomplete']}", ""]

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
                f"| {row.stage} | {row.counts['fail']} | {row.counts['warn']} | {row.counts['pass']} | {other} "
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
                f"| {VERDICT_SYMBOL[finding.verdict.value]} | `{finding.check_id}` | {finding.stage} "
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
                    f"<details><summary>{key}</summary>",
                    "",
                    "```json",
                    json.dumps(value, indent=2, default=str),
                    "```",
                    "",
                    "</details>",
                    "",
                ]
            else:
                lines.append(f"- **{key}**: `{value}`")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _finding_block(finding: Finding) -> list[str]:
    """What, where, how much, allowed, likely cause, fix, as a Markdown list."""
    out = [f"### {VERDICT_SYMBOL[finding.verdict.value]} `{finding.check_id}` ({finding.stage})", ""]
    if finding.explanation:
        out.append(f"- **what**: {finding.explanation}")
    out.append(f"- **where**: {finding.where.describe()}")
    if finding.figure is not None:
        out.append(f"- **measured**: {fmt_number(finding.figure)} (allowed {fmt_number(finding.tolerance)})")
    if finding.likely_cause:
        catalog = f" (bug-catalog {finding.catalog_id})" if finding.catalog_id else ""
        out.append(f"- **likely cause**: {finding.likely_cause}{catalog}")
    if finding.fix:
        out.append(f"- **fix**: {finding.fix}")
    return out

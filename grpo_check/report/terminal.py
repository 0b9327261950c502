"""Terminal renderer (rich): headline counts, first divergence, per-stage summary, failing findings in full.

Example::

    >>> from grpo_check.findings import Finding, Result
    >>> print(render_terminal(Result([Finding("loss.finite", "loss", "pass")]), color=False))
    grpo-check: OK - 1 pass
    ...
"""

from __future__ import annotations

import io
import re

from grpo_check.coverage import coverage_lines
from grpo_check.findings import Finding, Result, Verdict, severity
from grpo_check.report._common import (
    VERDICT_SYMBOL,
    CheckGroup,
    finding_sort_key,
    fmt_number,
    group_by_check,
    headline,
    stage_rank,
    stage_summary,
)

STYLE = {
    "fail": "bold red",
    "warn": "yellow",
    "inconclusive": "magenta",
    "not_captured": "dim",
    "convention": "cyan",
    "pass": "green",
}


def render_terminal(
    result: Result, *, color: bool = True, width: int = 110, show: str = "warn", limit: int = 20
) -> str:
    """Render ``result`` for a terminal.

    Args:
        color: emit ANSI colours.
        width: wrap width.
        show: print full messages for findings at least this severe (``"fail"``, ``"warn"``, ``"pass"``).
        limit: at most this many full messages (the rest are counted).
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    buffer = io.StringIO()
    console = Console(
        file=buffer,
        force_terminal=color,
        color_system="standard" if color else None,
        width=width,
        no_color=not color,
        highlight=False,
        emoji=False,
    )
    worst = result.worst()
    console.print(
        Text(headline(result), style=STYLE.get(worst.value, "") + (" bold" if color else "")), soft_wrap=True
    )
    source = result.metadata.get("source")
    if source:
        console.print(Text(_printable(f"checked: {source}"), style="dim"))
    cost = checking_cost_line(result)
    if cost:
        console.print(Text(cost, style="dim"))
    incomplete = result.metadata.get("incomplete")
    if incomplete:
        console.print(Text(_printable(f"INCOMPLETE: {incomplete}"), style="bold yellow" if color else ""))
    coverage = coverage_lines(result.metadata.get("coverage"))
    if coverage:
        console.print()
        console.print(Text("Coverage", style="bold"))
        for line in coverage:
            style = "bold yellow" if line.startswith("GAP") else ("dim" if not line.startswith("ran") else "")
            console.print(Text(_printable(line), style=style if color else ""), soft_wrap=True)

    first = result.first_divergence()
    if first is not None:
        console.print()
        console.print(Text("First divergence", style="bold"))
        console.print(Text(_printable(first.message()), style="red"), soft_wrap=True)

    rows = stage_summary(result)
    if rows:
        console.print()
        table = Table(title=None, show_edge=False, pad_edge=False, box=None, header_style="bold")
        for column in ("stage", "fail", "warn", "pass", "other", "worst", "worst/tol"):
            table.add_column(column, justify="left" if column in ("stage", "worst") else "right")
        for row in rows:
            other = row.total - row.counts["fail"] - row.counts["warn"] - row.counts["pass"]
            table.add_row(
                row.stage,
                str(row.counts["fail"]),
                str(row.counts["warn"]),
                str(row.counts["pass"]),
                str(other),
                Text(VERDICT_SYMBOL[row.worst.value], style=STYLE[row.worst.value]),
                fmt_number(row.worst_ratio),
            )
        console.print(table)

    threshold = severity(Verdict(show)) if show in {v.value for v in Verdict} else severity(Verdict.WARN)
    verdicts = tuple(v for v in Verdict if severity(v) >= threshold)
    groups = sorted(group_by_check(result.findings, verdicts), key=lambda g: finding_sort_key(g.first))
    blocks: list[tuple[str, str]] = []  # (text, style): one per check, its first occurrence in full
    for group in groups:
        style = STYLE.get(group.verdict.value, "")
        more = _more_occurrences(group)
        if group.first is first:
            if more:
                blocks.append((f"{group.check_id}: {more} (the first is the first divergence above)", "dim"))
            continue
        blocks.append((group.first.message() + (f"\n  {more}" if more else ""), style))
    if blocks:
        console.print()
        for number, (text, style) in enumerate(blocks[:limit]):
            if number:
                console.print()
            console.print(Text(_printable(text), style=style), soft_wrap=True)
        if len(blocks) > limit:
            console.print(
                Text(
                    f"... and {len(blocks) - limit} more check(s) (see the Markdown/HTML report)", style="dim"
                )
            )
    conventions = group_by_check(result.findings, (Verdict.CONVENTION,))
    if conventions and threshold > severity(Verdict.CONVENTION):
        console.print()
        console.print(Text("Declared convention differences (not failures):", style="cyan"))
        for group in conventions[:limit]:
            count = f" ({group.occurrences()})" if group.count > 1 else ""
            console.print(
                Text(_printable(f"  {group.check_id}: {group.first.explanation}{count}"), style="cyan"),
                soft_wrap=True,
            )
    not_captured_line = _not_captured_summary(result)
    if not_captured_line:
        console.print(Text(not_captured_line, style="dim"), soft_wrap=True)
    return buffer.getvalue()


def _more_occurrences(group: CheckGroup) -> str | None:
    """``+ 7 more occurrences (8, steps 0-7); worst 0.9 (allowed 1e-05) at step 3, ...`` or ``None``."""
    if group.count == 1:
        return None
    worst = group.worst
    text = f"+ {group.count - 1} more occurrence(s) ({group.occurrences()})"
    if worst.figure is not None and worst is not group.first:
        text += f"; worst {fmt_number(worst.figure)} (allowed {fmt_number(worst.tolerance)}) at {worst.where.describe()}"
    return text


def _not_captured_summary(result: Result) -> str | None:
    """``not captured: 11 check(s) in batch, kl; missing completion_text, kl`` (from ``details["missing"]``)."""
    findings = result.by_verdict(Verdict.NOT_CAPTURED)
    if not findings:
        return None
    checks = sorted({f.check_id for f in findings})
    stages = sorted({f.stage for f in findings}, key=lambda s: (stage_rank(s), s))
    missing = sorted(
        {str(name) for f in findings for name in (f.details.get("missing") or []) if isinstance(name, str)}
    )
    text = f"not captured: {len(checks)} check(s) in {', '.join(stages)}"
    return text + (f"; record {', '.join(missing)} to run them" if missing else "")


def finding_line(finding: Finding) -> str:
    """One line per finding: verdict, check id, where, figure vs tolerance."""
    return (
        f"{VERDICT_SYMBOL[finding.verdict.value]:<12} {finding.check_id:<36} {finding.where.describe():<30} "
        f"{fmt_number(finding.figure)} (tol {fmt_number(finding.tolerance)})"
    )


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """Replace control characters (an ESC from a decoded completion would drive the terminal) by U+FFFD."""
    return _CONTROL.sub("\ufffd", text)


def checking_cost_line(result: Result) -> str | None:
    """What live checking cost the training process (``metadata["checking"]`` of a TRL attachment), as one
    line, or ``None`` when the result has no such record.

    >>> from grpo_check.findings import Result
    >>> checking = {"checking_seconds": 0.5, "training_seconds": 16.5, "overhead": 0.0313,
    ...             "checked_steps": 16, "steps": 200}
    >>> checking_cost_line(Result([], metadata={"checking": checking}))
    'checking cost: 0.50 s of 16.50 s training (overhead 3.1 %), 16 of 200 optimizer steps checked'
    """
    checking = result.metadata.get("checking")
    if not isinstance(checking, dict) or checking.get("overhead") is None:
        return None
    return (
        f"checking cost: {checking['checking_seconds']:.2f} s of {checking['training_seconds']:.2f} s training "
        f"(overhead {100 * checking['overhead']:.1f} %), {checking['checked_steps']} of {checking['steps']} "
        "optimizer steps checked"
    )

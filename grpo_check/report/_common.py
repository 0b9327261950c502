"""Helpers shared by the renderers: ordering, per-stage summary, number formatting. Stdlib only."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from grpo_check.findings import STAGES, Finding, Result, Verdict, severity

STAGE_ORDER: tuple[str, ...] = ("config", *STAGES, "run")
VERDICT_ORDER: tuple[str, ...] = ("fail", "warn", "inconclusive", "not_captured", "convention", "pass")
VERDICT_SYMBOL = {
    "fail": "FAIL",
    "warn": "WARN",
    "inconclusive": "INCONCLUSIVE",
    "not_captured": "NOT CAPTURED",
    "convention": "CONVENTION",
    "pass": "PASS",
}


def stage_rank(stage: str) -> int:
    return STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)


def finding_sort_key(finding: Finding) -> tuple:
    """Most severe first, then pipeline order, then step / micro-batch / rank."""
    where = finding.where
    return (
        -severity(finding.verdict),
        stage_rank(finding.stage),
        where.step if where.step is not None else -1,
        where.micro_batch if where.micro_batch is not None else -1,
        where.rank if where.rank is not None else -1,
        finding.check_id,
    )


def ordered_findings(result: Result) -> list[Finding]:
    """The first divergence first, then every other finding by :func:`finding_sort_key`."""
    first = result.first_divergence()
    rest = sorted((f for f in result.findings if f is not first), key=finding_sort_key)
    return ([first] if first is not None else []) + rest


@dataclasses.dataclass
class StageRow:
    stage: str
    counts: dict[str, int]
    worst: Verdict
    worst_ratio: float | None  # worst figure / tolerance among findings carrying both

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def stage_summary(result: Result) -> list[StageRow]:
    """One row per stage present in ``result``, in pipeline order."""
    rows: dict[str, StageRow] = {}
    for finding in result.findings:
        row = rows.get(finding.stage)
        if row is None:
            row = rows[finding.stage] = StageRow(
                finding.stage, {v.value: 0 for v in Verdict}, Verdict.PASS, None
            )
        row.counts[finding.verdict.value] += 1
        row.worst = max(row.worst, finding.verdict, key=severity)
        ratio = figure_ratio(finding)
        if ratio is not None and (row.worst_ratio is None or ratio > row.worst_ratio):
            row.worst_ratio = ratio
    return sorted(rows.values(), key=lambda r: (stage_rank(r.stage), r.stage))


def figure_ratio(finding: Finding) -> float | None:
    """``figure / tolerance`` where that reads as "error relative to its allowance", else ``None``.

    Some checks hold a figure to a lower bound (kept signal ≥ 0.5) or report a signed value (max log-prob
    ≤ 0); for those a passing figure can exceed its tolerance numerically. So a ratio above 1 is only used
    when the verdict agrees (warn/fail), and negative figures are skipped.
    """
    if finding.figure is None or finding.tolerance is None:
        return None
    figure, tolerance = float(finding.figure), abs(float(finding.tolerance))
    if math.isnan(figure) or math.isnan(tolerance) or figure < 0:
        return None
    if tolerance == 0:
        ratio = 0.0 if figure == 0 else math.inf
    else:
        ratio = figure / tolerance
    if ratio > 1 and severity(finding.verdict) < severity(Verdict.WARN):
        return None
    return ratio


def fmt_number(value: Any) -> str:
    """Compact number: ``1.23e-05``, ``0.5``, ``3``, ``-`` for None."""
    if value is None:
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number) or math.isinf(number):
        return str(number)
    if number == int(number) and abs(number) < 1e6:
        return str(int(number))
    return f"{number:.3g}"


def counts_line(result: Result) -> str:
    """``3 fail, 1 warn, 12 pass`` (only non-zero verdicts, most severe first)."""
    counts = result.counts()
    parts = [f"{counts[v]} {v.replace('_', ' ')}" for v in VERDICT_ORDER if counts.get(v)]
    return ", ".join(parts) if parts else "no findings"


def headline(result: Result) -> str:
    status = result.status()
    if status.startswith("OK") and result.metadata.get("incomplete"):
        status = "INCOMPLETE"  # nothing failed, but the run stopped before every check ran
    return f"grpo-check: {status} - {counts_line(result)}"


def metadata_items(result: Result) -> list[tuple[str, Any]]:
    """Metadata worth showing in a report, in a stable order."""
    keys = ("source", "trainer", "sources", "tolerances", "config", "versions")
    meta = result.metadata
    items = [(k, meta[k]) for k in keys if k in meta and meta[k] not in (None, {}, [])]
    items += [(k, v) for k, v in sorted(meta.items()) if k not in keys and v not in (None, {}, [])]
    return items


OCCURRENCE_ROWS = 20
"""At most this many occurrences of one failing/warning check are listed row by row (result.json has all)."""


@dataclasses.dataclass
class CheckGroup:
    """Every finding of one check with one verdict: what a report shows as one entry.

    ``worst`` is the occurrence with the largest ``figure / tolerance`` (see :func:`figure_ratio`), else the
    largest figure, else the first; ``first`` is the earliest in pipeline/step order.
    """

    check_id: str
    stage: str
    verdict: Verdict
    findings: list[Finding]

    @property
    def count(self) -> int:
        return len(self.findings)

    @property
    def first(self) -> Finding:
        return self.findings[0]

    @property
    def worst(self) -> Finding:
        return max(self.findings, key=_worst_key)

    @property
    def worst_ratio(self) -> float | None:
        return figure_ratio(self.worst)

    def steps(self) -> str:
        """``"0-999"``, ``"3"`` or ``"-"``: the span of steps the occurrences cover."""
        steps = sorted({f.where.step for f in self.findings if f.where.step is not None})
        if not steps:
            return "-"
        return str(steps[0]) if steps[0] == steps[-1] else f"{steps[0]}-{steps[-1]}"

    def occurrences(self) -> str:
        """``"1 occurrence, step 3"`` or ``"8000 occurrences, steps 0-999"``."""
        steps = self.steps()
        where = "" if steps == "-" else (f", step {steps}" if "-" not in steps else f", steps {steps}")
        return f"{self.count} occurrence{'s' if self.count != 1 else ''}{where}"

    def reasons(self) -> list[tuple[str, int]]:
        """Distinct reasons (``details["missing"]`` or the explanation) with their counts, commonest first."""
        counts: dict[str, int] = {}
        for finding in self.findings:
            missing = finding.details.get("missing") if isinstance(finding.details, dict) else None
            reason = finding.explanation or "-"
            if isinstance(missing, list) and missing:
                reason = f"{reason} (record {', '.join(str(m) for m in missing)})"
            counts[reason] = counts.get(reason, 0) + 1
        return sorted(counts.items(), key=lambda item: -item[1])


def _worst_key(finding: Finding) -> tuple[float, float]:
    ratio = figure_ratio(finding)
    figure = finding.figure if finding.figure is not None and not math.isnan(finding.figure) else -math.inf
    return (ratio if ratio is not None else -math.inf, abs(figure))


def group_by_check(findings: list[Finding], verdicts: tuple[Verdict, ...]) -> list[CheckGroup]:
    """Findings with one of ``verdicts`` grouped per (verdict, check), in :func:`finding_sort_key` order of
    each group's first occurrence (so the most severe, earliest-stage group comes first).

    >>> from grpo_check.findings import Where
    >>> fs = [Finding("loss.finite", "loss", "pass", where=Where(step=s)) for s in range(3)]
    >>> [(g.check_id, g.count, g.steps()) for g in group_by_check(fs, (Verdict.PASS,))]
    [('loss.finite', 3, '0-2')]
    """
    groups: dict[tuple[str, str], CheckGroup] = {}
    for finding in sorted((f for f in findings if f.verdict in verdicts), key=finding_sort_key):
        key = (finding.verdict.value, finding.check_id)
        group = groups.get(key)
        if group is None:
            group = groups[key] = CheckGroup(finding.check_id, finding.stage, finding.verdict, [])
        group.findings.append(finding)
    return list(groups.values())


@dataclasses.dataclass
class ReportSections:
    """What every file report shows, in order: the first divergence, failures and warnings grouped per check
    (each occurrence kept), passes aggregated per check, conventions, inconclusive and not-captured grouped."""

    first: Finding | None
    serious: list[CheckGroup]
    passed: list[CheckGroup]
    conventions: list[CheckGroup]
    undecided: list[CheckGroup]


def report_sections(result: Result) -> ReportSections:
    first = result.first_divergence()
    findings = result.findings
    return ReportSections(
        first=first,
        serious=group_by_check(findings, (Verdict.FAIL, Verdict.WARN)),
        passed=group_by_check(findings, (Verdict.PASS,)),
        conventions=group_by_check(findings, (Verdict.CONVENTION,)),
        undecided=group_by_check(findings, (Verdict.INCONCLUSIVE, Verdict.NOT_CAPTURED)),
    )


def reasons_text(group: CheckGroup, shown: int = 3) -> str:
    """The commonest reasons of a group, each with its count where there are several."""
    reasons = group.reasons()
    parts = [reason if len(reasons) == 1 else f"{reason} (×{count})" for reason, count in reasons[:shown]]
    if len(reasons) > shown:
        parts.append(f"and {len(reasons) - shown} other reason(s)")
    return "; ".join(parts)

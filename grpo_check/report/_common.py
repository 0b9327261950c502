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

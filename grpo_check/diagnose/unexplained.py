"""The last word: a failing comparison no signature explains still gets a diagnosis saying so, with where
and how much; an end-to-end failure inherits the cause of the earliest stage-isolated failure."""

from __future__ import annotations

from grpo_check.diagnose._context import Diagnosis
from grpo_check.findings import STAGES, Finding, Verdict

_ORDER = {s: i for i, s in enumerate(STAGES)}


def detect_unexplained(dx: Diagnosis) -> list[Finding]:
    isolated = [f for f in dx.failing() if not f.check_id.startswith("e2e.")]
    first = min(isolated, key=lambda f: _ORDER.get(f.stage, 99), default=None)
    for finding in dx.failing():
        if finding.check_id.startswith("e2e.") and finding.likely_cause is None and first is not None:
            finding.likely_cause = (
                f"inherited from the first stage-isolated divergence, {first.check_id} ({first.stage})"
                + (f": {first.likely_cause}" if first.likely_cause else "")
            )
            finding.fix = first.fix
            finding.catalog_id = first.catalog_id
    conventions = [f for f in dx.findings if f.kind == "compare" and f.verdict is Verdict.CONVENTION]
    if first is None and conventions:
        upstream = min(conventions, key=lambda f: _ORDER.get(f.stage, 99))
        for finding in dx.failing(prefix="e2e."):
            finding.verdict = Verdict.CONVENTION
            finding.likely_cause = (
                f"follows from the convention difference in {upstream.check_id}: {upstream.likely_cause}"
            )
            finding.catalog_id = upstream.catalog_id
            finding.fix = upstream.fix
    out: list[Finding] = []
    for finding in isolated:
        if finding.likely_cause is not None:
            continue
        rel = finding.details.get("max_rel_error")
        rel_text = f" ({rel:.3g} of the reference's scale)" if isinstance(rel, float) else ""
        figure = f"{finding.figure:.3g}" if finding.figure is not None else "n/a"
        out.append(
            dx.finding(
                check_id="diagnose.unexplained",
                stage=finding.stage,
                catalog_id=None,
                verdict=Verdict.INCONCLUSIVE,
                figure=finding.figure,
                tolerance=finding.tolerance,
                where=finding.where,
                explanation=(
                    f"no known signature matches {finding.check_id}: max |error| {figure}{rel_text} at "
                    f"{finding.where.describe()}, "
                    f"{finding.details.get('elements_beyond_tolerance', finding.details.get('nonfinite_elements', '?'))} "
                    "element(s) beyond tolerance"
                ),
                likely_cause=None,
                fix=None,
                details={"explains": finding.check_id},
            )
        )
    return out

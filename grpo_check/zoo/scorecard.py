"""The detection scorecard: run every mutant and control through ``compare`` and score what grpo-check found.

For a mutant (a pipeline with a planted bug) the scorecard asks three questions:

* **detected** — did the comparison fail at all (at least one ``FAIL`` finding)?
* **localised** — is ``Result.first_divergence()`` in the stage the bug lives in (and, for a case with several
  bugs, does every bug's stage carry a failure of its own)?
* **diagnosed** — does a finding at warn/fail level name the bug: its bug-catalog id (or one the case accepts
  as the same fault) among the findings' ``catalog_id``, or, for a bug the catalog has no number for, one of
  its keywords in a ``likely_cause``?

For a control (the same pipeline without the bug) the only question is whether anything failed: a ``FAIL`` is
a false positive. A pipeline or comparison that crashes counts as *not detected* for a mutant and as a false
positive for a control.

Each optimizer step is compared with the policy weights that step computed its log-probs with (the loop keeps a
snapshot per step), so the reference's own forward pass is held to the right model.

Example::

    >>> from grpo_check.zoo.scorecard import run_scorecard
    >>> card = run_scorecard(only=["S1-logsoftmax-sign", "ctl-grpo"])   # doctest: +SKIP
    >>> card.totals()["recall"]                                          # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable
from typing import Any

from grpo_check.findings import STAGES, Finding, Result, Verdict, severity
from grpo_check.zoo.cases import select_cases
from grpo_check.zoo.catalog import Bug, Case

__all__ = ["TARGETS", "BugScore", "CaseScore", "Scorecard", "evaluate_case", "run_scorecard", "score_result"]

TARGETS: dict[str, float] = {"recall": 1.0, "localisation": 0.95, "diagnosis": 0.90, "false_positives": 0}
"""What the zoo holds grpo-check to (issue 7): all bugs detected, ≥ 95 % localised, ≥ 90 % diagnosed, 0 FP."""


@dataclasses.dataclass
class BugScore:
    """How one planted bug fared: is there a failure in its stage, and does a finding name it?"""

    bug: Bug
    stage_failed: bool
    diagnosed: bool
    named_by: list[str]  # check ids of the findings that named it

    def to_dict(self) -> dict[str, Any]:
        return {
            "catalog_id": self.bug.catalog_id,
            "stage": self.bug.stage,
            "accepted_ids": list(self.bug.accepted_ids),
            "keywords": list(self.bug.keywords),
            "stage_failed": self.stage_failed,
            "diagnosed": self.diagnosed,
            "named_by": self.named_by,
        }


@dataclasses.dataclass
class CaseScore:
    """The scorecard row of one case."""

    case: Case
    detected: bool
    localised: bool
    warned: bool  # not failed, but a warning in the bug's stage or naming the bug
    diagnosed: bool
    first_stage: str | None  # stage of Result.first_divergence()
    first_check: str | None
    failing_checks: list[str]
    named_ids: list[str]  # every catalog id named by a warn/fail finding
    bugs: list[BugScore]
    seconds: float
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    error: str | None = None

    @property
    def false_positive(self) -> bool:
        return not self.case.is_mutant and (self.detected or self.error is not None)

    @property
    def ok(self) -> bool:
        if self.case.is_mutant:
            return self.detected and self.localised and self.diagnosed
        return not self.false_positive

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.case.to_dict(),
            "detected": self.detected,
            "warned_only": self.warned and not self.detected,
            "localised": self.localised,
            "diagnosed": self.diagnosed,
            "false_positive": self.false_positive,
            "first_divergence": {"stage": self.first_stage, "check_id": self.first_check},
            "failing_checks": self.failing_checks,
            "named_catalog_ids": self.named_ids,
            "bug_scores": [b.to_dict() for b in self.bugs],
            "counts": self.counts,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }


def _names_bug(finding: Finding, bug: Bug) -> bool:
    if finding.catalog_id is not None and str(finding.catalog_id).lstrip("#") in bug.accepted_ids:
        return True
    cause = (finding.likely_cause or "").lower()
    return any(word.lower() in cause for word in bug.keywords)


def score_result(case: Case, result: Result, *, seconds: float = 0.0, error: str | None = None) -> CaseScore:
    """Score one case's :class:`Result` against what the case declares (pure; no pipeline is run)."""
    failing = result.failures
    flagged = [f for f in result.findings if severity(f.verdict) >= severity(Verdict.WARN)]
    first = result.first_divergence()
    detected = bool(failing)
    bug_scores = []
    for bug in case.bugs:
        naming = [f for f in flagged if _names_bug(f, bug)]
        bug_scores.append(
            BugScore(
                bug=bug,
                stage_failed=any(f.stage == bug.stage for f in failing),
                diagnosed=bool(naming),
                named_by=sorted({f.check_id for f in naming}),
            )
        )
    localised = (
        detected
        and first is not None
        and first.stage == case.first_stage
        and all(b.stage_failed for b in bug_scores)
    )
    warned = any(
        f.verdict is Verdict.WARN and any(f.stage == b.stage for b in case.bugs) for f in flagged
    ) or any(b.diagnosed for b in bug_scores)
    return CaseScore(
        case=case,
        detected=detected,
        warned=warned,
        localised=bool(localised) if case.is_mutant else False,
        diagnosed=bool(bug_scores) and all(b.diagnosed for b in bug_scores),
        first_stage=first.stage if first else None,
        first_check=first.check_id if first else None,
        failing_checks=sorted({f.check_id for f in failing}),
        named_ids=sorted({str(f.catalog_id) for f in flagged if f.catalog_id}, key=_catalog_sort_key),
        bugs=bug_scores,
        seconds=seconds,
        counts=result.counts(),
        error=error,
    )


def _catalog_sort_key(catalog_id: str) -> tuple[int, int, str]:
    text = catalog_id.lstrip("#")
    if text.startswith("S") and text[1:].isdigit():
        return (0, int(text[1:]), text)
    return (1, int(text), text) if text.isdigit() else (2, 0, text)


def compare_run(run: Any) -> Result:
    """Compare a zoo run, one optimizer step at a time, each with the weights that step used.

    ``run`` has ``trace``, ``policy_at(step)`` and ``ref_model`` (:class:`grpo_check.zoo.loop.LoopRun`).
    """
    from grpo_check.compare import compare
    from grpo_check.trace.model import Trace

    if getattr(run, "result", None) is not None:
        # A TRL run: the adapter compared every step live, with the weights of that step; the single-trace
        # invariants (`grpo-check check`) run on the captured trace.
        from grpo_check.compare import check

        merged = Result(findings=list(run.result.findings), metadata=dict(run.result.metadata))
        merged.extend(check(run.trace).findings)
        return merged
    trace = run.trace
    spec = getattr(run, "spec", None) or trace.spec()
    by_step: dict[int, list[Any]] = {}
    for step in trace.steps:
        by_step.setdefault(int(step.meta.get("step") or 0), []).append(step)
    merged = Result()
    for number, steps in sorted(by_step.items()):
        part = Trace(
            manifest=trace.manifest, steps=steps, problems=list(trace.problems) if number == 0 else []
        )
        model = run.policy_at(number) if hasattr(run, "policy_at") else None
        result = compare(part, spec=spec, model=model, ref_model=getattr(run, "ref_model", None))
        if not merged.metadata:
            merged.metadata = dict(result.metadata)
        merged.extend(result.findings)
    merged.metadata["steps"] = len(trace.steps)
    return merged


def evaluate_case(case: Case) -> tuple[CaseScore, Result]:
    """Run one case's pipeline, compare it, and score it. Crashes are caught and scored, never raised."""
    start = time.perf_counter()
    try:
        run = case.make()
        result = compare_run(run)
    except Exception as exc:
        tb = traceback.format_exc(limit=6)
        score = score_result(case, Result(), seconds=time.perf_counter() - start, error=f"{exc!r}\n{tb}")
        return score, Result()
    return score_result(case, result, seconds=time.perf_counter() - start), result


@dataclasses.dataclass
class Scorecard:
    """All case scores plus the totals and whether the targets are met."""

    scores: list[CaseScore]
    seconds: float = 0.0
    results: dict[str, Result] = dataclasses.field(default_factory=dict)

    @property
    def mutants(self) -> list[CaseScore]:
        return [s for s in self.scores if s.case.is_mutant]

    @property
    def controls(self) -> list[CaseScore]:
        return [s for s in self.scores if not s.case.is_mutant]

    def totals(self) -> dict[str, Any]:
        mutants, controls = self.mutants, self.controls
        n = len(mutants)

        def share(flag: str) -> float | None:
            return None if n == 0 else sum(getattr(s, flag) for s in mutants) / n

        return {
            "mutants": n,
            "controls": len(controls),
            "detected": sum(s.detected for s in mutants),
            "localised": sum(s.localised for s in mutants),
            "diagnosed": sum(s.diagnosed for s in mutants),
            "recall": share("detected"),
            "localisation": share("localised"),
            "diagnosis": share("diagnosed"),
            "false_positives": sum(s.false_positive for s in controls),
            "errors": sum(s.error is not None for s in self.scores),
        }

    def target_status(self) -> dict[str, bool]:
        totals = self.totals()
        status = {}
        for key in ("recall", "localisation", "diagnosis"):
            value = totals[key]
            status[key] = value is None or value >= TARGETS[key] - 1e-12
        status["false_positives"] = totals["false_positives"] <= TARGETS["false_positives"]
        return status

    def targets_met(self) -> bool:
        return all(self.target_status().values())

    def exit_code(self) -> int:
        return 0 if self.targets_met() else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "grpo-check-zoo-scorecard",
            "format_version": 1,
            "targets": TARGETS,
            "totals": self.totals(),
            "targets_met": self.target_status(),
            "seconds": round(self.seconds, 2),
            "cases": [s.to_dict() for s in self.scores],
        }


ProgressCallback = Callable[[int, int, CaseScore], None]


def run_scorecard(
    only: list[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
    keep_results: bool = False,
) -> Scorecard:
    """Run the selected cases (all by default; see :func:`grpo_check.zoo.cases.select_cases`) and score them."""
    cases = select_cases(only)
    start = time.perf_counter()
    scores: list[CaseScore] = []
    results: dict[str, Result] = {}
    for index, case in enumerate(cases):
        score, result = evaluate_case(case)
        scores.append(score)
        if keep_results:
            results[case.id] = result
        if progress is not None:
            progress(index + 1, len(cases), score)
    return Scorecard(scores=scores, seconds=time.perf_counter() - start, results=results)


# ---------------------------------------------------------------------------------------------- rendering
def _mark(flag: bool) -> str:
    return "yes" if flag else "NO"


def _detected_mark(score: CaseScore) -> str:
    return "yes" if score.detected else ("warn" if score.warned else "NO")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def describe_score(score: CaseScore) -> str:
    """One progress line, e.g. ``S1-logsoftmax-sign: detected, first divergence logps (want logps), named S1``."""
    if score.error is not None:
        return f"{score.case.id}: ERROR {score.error.splitlines()[0]}"
    if not score.case.is_mutant:
        if score.false_positive:
            return f"{score.case.id}: FALSE POSITIVE ({', '.join(score.failing_checks)})"
        return f"{score.case.id}: clean ({score.counts.get('warn', 0)} warn, {score.counts.get('convention', 0)} convention)"
    if not score.detected:
        if score.warned:
            return f"{score.case.id}: MISSED (warning only; names {','.join(score.named_ids) or 'nothing'})"
        return f"{score.case.id}: MISSED"
    want = "+".join(b.label() for b in score.case.bugs)
    named = ",".join(score.named_ids) or "nothing"
    return (
        f"{score.case.id}: detected; first divergence {score.first_stage} (want {score.case.first_stage})"
        f"{'' if score.localised else ' MISLOCALISED'}; names {named} (want {want})"
        f"{'' if score.diagnosed else ' MISDIAGNOSED'}"
    )


def render_text(card: Scorecard) -> str:
    lines = ["grpo-check zoo: detection scorecard", ""]
    lines.append(
        f"{'case':44} {'bug':>6} {'stage':>10} {'det':>4} {'first div.':>11} {'loc':>4} {'diag':>5}  named"
    )
    for s in card.mutants:
        bug = "+".join(b.label() for b in s.case.bugs)
        lines.append(
            f"{s.case.id:44} {bug:>6} {s.case.first_stage or '-':>10} {_detected_mark(s):>4} "
            f"{s.first_stage or '-':>11} {_mark(s.localised):>4} {_mark(s.diagnosed):>5}  "
            f"{','.join(s.named_ids) or '-'}{'  ERROR' if s.error else ''}"
        )
    lines.append("")
    lines.append(f"{'control':44} {'result':>14}  failing checks")
    for s in card.controls:
        verdict = "ERROR" if s.error else ("FALSE POSITIVE" if s.false_positive else "clean")
        lines.append(f"{s.case.id:44} {verdict:>14}  {', '.join(s.failing_checks) or '-'}")
    lines += ["", *_totals_lines(card)]
    return "\n".join(lines)


def _totals_lines(card: Scorecard) -> list[str]:
    t, status = card.totals(), card.target_status()

    def flag(key: str) -> str:
        return "met" if status[key] else "NOT MET"

    return [
        f"recall (detected):     {t['detected']}/{t['mutants']} = {_pct(t['recall'])}   target 100 %  {flag('recall')}",
        f"localisation:          {t['localised']}/{t['mutants']} = {_pct(t['localisation'])}   target >= 95 %  "
        f"{flag('localisation')}",
        f"diagnosis:             {t['diagnosed']}/{t['mutants']} = {_pct(t['diagnosis'])}   target >= 90 %  "
        f"{flag('diagnosis')}",
        f"false positives:       {t['false_positives']}/{t['controls']} controls   target 0  {flag('false_positives')}",
        f"errors:                {t['errors']}",
        f"wall time:             {card.seconds:.1f} s",
        f"targets: {'MET' if card.targets_met() else 'NOT MET'}",
    ]


def render_markdown(card: Scorecard) -> str:
    lines = [
        "| mutant | bug | pipeline | bug stage | detected | first divergence | localised | diagnosed | catalog ids named |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in card.mutants:
        bug = " + ".join(b.label() for b in s.case.bugs)
        lines.append(
            f"| `{s.case.id}` | {bug} | {s.case.pipeline} | {s.case.first_stage} | {_detected_mark(s)} | "
            f"{s.first_stage or '-'} (`{s.first_check or '-'}`) | {_mark(s.localised)} | {_mark(s.diagnosed)} | "
            f"{', '.join(s.named_ids) or '-'} |"
        )
    lines += ["", "| control | result | failing checks |", "|---|---|---|"]
    for s in card.controls:
        verdict = "ERROR" if s.error else ("**false positive**" if s.false_positive else "clean")
        lines.append(f"| `{s.case.id}` ({s.case.title}) | {verdict} | {', '.join(s.failing_checks) or '-'} |")
    lines += ["", "```", *_totals_lines(card), "```"]
    return "\n".join(lines)


def stage_order(stage: str | None) -> int:
    return STAGES.index(stage) if stage in STAGES else len(STAGES)

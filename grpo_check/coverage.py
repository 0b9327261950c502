"""Coverage: which families of checks ran on a comparison, which could not, why, and how to make them run.

A comparison that says "OK" must have checked what it claims. Each :class:`Family` groups the checks of one
concern (the policy's forward log-probs, the reference model's forward, the loss, ∂loss/∂logps, ...); after a
comparison :func:`coverage_of` states for each whether it *ran* (at least one decided verdict), did *not run*
(and why, and how to supply what it needs) or does *not apply* to this configuration. The coverage is stored in
``Result.metadata["coverage"]`` (JSON-able) and is part of the verdict (:func:`coverage_status`):

* where the model was at hand (a live run, or ``--model``), a *core* family that could not run is a **gap**:
  the headline is ``INCOMPLETE`` and the exit code 4 (unless partial coverage is accepted);
* without a model (an offline trace), the forward families cannot run: the headline says ``OK (partial: …)``
  and names what to pass.

Standard library only.

>>> from grpo_check.findings import Finding, Verdict
>>> found = [Finding("loss.value", "loss", Verdict.PASS, kind="compare")]
>>> cov = coverage_of(found, beta=0.0, model_at_hand=False)
>>> [(f["id"], f["status"]) for f in cov["families"]][:3]
[('advantages', 'not_run'), ('forward_logps', 'not_run'), ('ref_forward', 'not_applicable')]
>>> coverage_status(cov)
('partial', 'rewards and advantages, forward log-probs, ∂loss/∂logps not checked')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from grpo_check.findings import Finding, Verdict, coverage_status

Status = Literal["ran", "not_run", "not_applicable"]

_DECIDED = (Verdict.PASS, Verdict.FAIL, Verdict.WARN, Verdict.CONVENTION)

NO_MODEL_HOW = "pass --model PATH: the policy's weights at the first captured step"
REF_MODEL_HOW = "pass --ref-model PATH: the frozen reference model"


@dataclasses.dataclass(frozen=True)
class Family:
    """One family of checks: the findings that belong to it, and whether it is core to the verdict."""

    id: str
    title: str
    core: bool
    check_ids: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    not_run_reason: str = "no step holds what these checks need"
    needs: tuple[str, ...] = ()  # the tensors its checks compare (named when none was captured)

    def owns(self, finding: Finding) -> bool:
        return (
            finding.check_id in self.check_ids
            or finding.check_id.startswith(self.prefixes or ("\0",))
            or finding.kind in self.kinds
        )


FAMILIES: tuple[Family, ...] = (
    Family(
        "advantages",
        "rewards and advantages",
        core=True,
        check_ids=("advantages.values", "rewards.total"),
        needs=("advantages",),
    ),
    Family("forward_logps", "forward log-probs", core=True, check_ids=("logps.model",), needs=("logps",)),
    Family(
        "ref_forward",
        "reference-model forward",
        core=True,
        check_ids=("logps.ref_model",),
        needs=("ref_logps",),
    ),
    Family("loss", "loss", core=True, check_ids=("loss.value", "loss.per_token"), needs=("loss",)),
    Family("loss_grad", "∂loss/∂logps", core=True, check_ids=("grad.logps_grad",), needs=("logps_grad",)),
    Family(
        "probes",
        "probes of the trainer's loss code",
        core=False,
        prefixes=("probe.",),
        not_run_reason="probing needs the trainer itself (compare --trainer, attach)",
    ),
    Family(
        "rederivations",
        "re-derivations",
        core=False,
        prefixes=("rederive.",),
        not_run_reason="no re-derivation applied to what was captured",
    ),
    Family("invariants", "invariants", core=False, kinds=("invariant",)),
)
"""Every family, in the order reports list them."""

FAMILY_TITLES: dict[str, str] = {family.id: family.title for family in FAMILIES}


def coverage_of(
    findings: Iterable[Finding],
    *,
    beta: float,
    model_at_hand: bool,
    ref_model_at_hand: bool | None = None,
    reasons: Mapping[str, str] | None = None,
    not_applicable: Mapping[str, str] | None = None,
    hows: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The coverage of a comparison whose findings are ``findings`` (JSON-able; see the module doc).

    Args:
        beta: the KL coefficient (``0``: there is no reference model, its forward does not apply).
        model_at_hand: whether the policy was available for the reference's own forward pass (a live run,
            ``--model``). Decides whether a core family that did not run is a gap (exit 4) or a partial run.
        ref_model_at_hand: the same for the reference model (default: ``model_at_hand``).
        reasons: why a family did not run, by family id, where the caller knows (a live forward that failed,
            probes not available on this trainer, ...). Otherwise the reason is read from the family's
            not-captured findings, or is the missing model.
        not_applicable: families that do not apply to this run, with the reason.
        hows: how to make a family run, by family id, where the caller knows better than the default (the
            model's path recorded in the trace, say).
    """
    findings = list(findings)
    reasons = dict(reasons or {})
    not_applicable = dict(not_applicable or {})
    if ref_model_at_hand is None:
        ref_model_at_hand = model_at_hand
    if beta == 0.0:
        not_applicable.setdefault("ref_forward", "beta = 0: the loss has no KL term and no reference model")
    families: list[dict[str, Any]] = []
    for family in FAMILIES:
        own = [f for f in findings if family.owns(f)]
        decided = [f for f in own if f.verdict in _DECIDED]
        entry: dict[str, Any] = {
            "id": family.id,
            "title": family.title,
            "core": family.core,
            "checks": len(decided),
        }
        if decided:
            entry.update(status="ran", reason=None, how=None, gap=False)
            rows = _forward_rows(decided)
            if rows is not None:
                entry["rows"] = rows
        elif family.id in not_applicable:
            entry.update(status="not_applicable", reason=not_applicable[family.id], how=None, gap=False)
        else:
            reason, how, at_hand = _why_not(family, own, reasons, model_at_hand, ref_model_at_hand)
            how = (hows or {}).get(family.id, how)
            entry.update(status="not_run", reason=reason, how=how, gap=family.core and at_hand)
        families.append(entry)
    return {"model_at_hand": model_at_hand, "ref_model_at_hand": ref_model_at_hand, "families": families}


def _forward_rows(findings: list[Finding]) -> dict[str, Any] | None:
    """How many rows the reference's own forward passes ran on, over the findings that record it
    (``details["forward_rows"]``: a row-subset forward, see ``grpo_check.stepref.row_subset``): checked rows,
    rows in all, and what the subsets covered; ``None`` when no finding records it."""
    parts = [(f.details or {}).get("forward_rows") for f in findings]
    parts = [p for p in parts if isinstance(p, Mapping)]
    if not parts:
        return None
    covers: list[str] = []
    for part in parts:
        covers += [c for c in part.get("covers") or () if c not in covers]
    return {
        "checked": sum(int(p.get("rows", 0)) for p in parts),
        "of": sum(int(p.get("of", 0)) for p in parts),
        "covers": covers,
    }


def rows_text(rows: Mapping[str, Any] | None) -> str:
    """``forward on 4 of 16 rows, covering every prompt padding, ...`` / ``forward on every row (16)``."""
    if not rows:
        return ""
    checked, total = rows.get("checked", 0), rows.get("of", 0)
    if checked >= total:
        return f"forward on every row ({total})"
    covers = rows.get("covers") or []
    return f"forward on {checked} of {total} rows" + (f", covering {', '.join(covers)}" if covers else "")


def _why_not(
    family: Family,
    own: list[Finding],
    reasons: Mapping[str, str],
    model_at_hand: bool,
    ref_model_at_hand: bool,
) -> tuple[str, str | None, bool]:
    """(reason, how to make it run, whether what it needed was at hand) for a family that did not run."""
    needs_model = family.id in ("forward_logps", "ref_forward")
    at_hand = ref_model_at_hand if family.id == "ref_forward" else model_at_hand
    if family.id in reasons:
        return reasons[family.id], None, at_hand if needs_model else model_at_hand
    if needs_model and not at_hand:
        return (
            ("no reference model" if family.id == "ref_forward" else "no model"),
            (REF_MODEL_HOW if family.id == "ref_forward" else NO_MODEL_HOW),
            False,
        )
    missing = sorted({name for f in own for name in (f.details or {}).get("missing", []) or []})
    if missing:
        return f"not captured: missing {', '.join(missing)}", f"record {', '.join(missing)}", model_at_hand
    inconclusive = [f for f in own if f.verdict is Verdict.INCONCLUSIVE]
    if inconclusive:
        first = " ".join(inconclusive[0].explanation.split())[:200]
        return (
            f"inconclusive wherever it ran ({first})" if first else "inconclusive wherever it ran",
            None,
            False,
        )
    if family.needs:
        names = ", ".join(family.needs)
        how = (
            "watch the log-probs (Recorder: s.watch('logps', logps))"
            if names == "logps_grad"
            else f"record {names}"
        )
        return f"not captured: no step holds {names}", how, model_at_hand
    return family.not_run_reason, None, model_at_hand


def coverage_gaps(coverage: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The families whose absence makes the run incomplete (core, could have run, did not)."""
    return [f for f in (coverage or {}).get("families", []) if f.get("gap")]


def coverage_lines(coverage: Mapping[str, Any] | None) -> list[str]:
    """One line per family for the reports: ``ran      forward log-probs (16 checks)`` /
    ``NOT RUN  ∂loss/∂logps: not captured: missing logps_grad (record logps_grad)``."""
    lines: list[str] = []
    for family in (coverage or {}).get("families", []):
        status = family.get("status")
        if status == "ran":
            checks = family["checks"]
            rows = rows_text(family.get("rows"))
            lines.append(
                f"ran      {family['title']} ({checks} check{'' if checks == 1 else 's'}{'; ' + rows if rows else ''})"
            )
        elif status == "not_applicable":
            lines.append(f"n/a      {family['title']}: {family['reason']}")
        else:
            label = "GAP     " if family.get("gap") else "not run "
            how = f"; {family['how']}" if family.get("how") else ""
            lines.append(f"{label} {family['title']}: {family['reason']}{how}")
    return lines


def merge_coverage(coverages: Iterable[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """One coverage for several comparisons of the same run (ranks, demo cells): a family ran if it ran in
    any; a gap anywhere stays a gap unless the family ran elsewhere."""
    parts = [c for c in coverages if c]
    if not parts:
        return None
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        for family in part.get("families", []):
            have = merged.get(family["id"])
            if have is None:
                merged[family["id"]] = dict(family)
            elif family["status"] == "ran":
                checks = have["checks"] + family["checks"] if have["status"] == "ran" else family["checks"]
                merged[family["id"]] = {**family, "checks": checks}
                rows = _merged_rows(have.get("rows") if have["status"] == "ran" else None, family.get("rows"))
                if rows is not None:
                    merged[family["id"]]["rows"] = rows
            elif have["status"] != "ran" and family.get("gap"):
                merged[family["id"]] = dict(family)
    order = [f.id for f in FAMILIES]
    return {
        "model_at_hand": any(p.get("model_at_hand") for p in parts),
        "ref_model_at_hand": any(p.get("ref_model_at_hand") for p in parts),
        "families": sorted(merged.values(), key=lambda f: order.index(f["id"]) if f["id"] in order else 99),
    }


def _merged_rows(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not a or not b:
        return dict(a or b) if (a or b) else None
    covers = list(a.get("covers") or [])
    covers += [c for c in b.get("covers") or [] if c not in covers]
    return {"checked": a["checked"] + b["checked"], "of": a["of"] + b["of"], "covers": covers}


__all__ = [
    "FAMILIES",
    "Family",
    "coverage_gaps",
    "coverage_lines",
    "coverage_of",
    "coverage_status",
    "merge_coverage",
    "rows_text",
]

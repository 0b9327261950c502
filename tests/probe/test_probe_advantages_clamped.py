"""clip.advantages_clamped: a loss that clips the advantages instead of the ratio is named by the probes."""

from __future__ import annotations

from _handwritten_loss import handwritten_loss

from grpo_check.config import GRPOSpec
from grpo_check.probe import run_probes

SPEC = GRPOSpec(num_generations=4, loss_type="grpo", gradient_accumulation_steps=2)


def variants_named(outcome) -> set[str]:
    return {f.details.get("variant") for f in outcome.failures if f.details.get("variant")}


def test_advantages_clamped_instead_of_the_ratio_is_named() -> None:
    outcome = run_probes(handwritten_loss(SPEC, ("advantages_clamped",)), SPEC)
    assert outcome.failures
    assert "clip.advantages_clamped" in variants_named(outcome), variants_named(outcome)
    named = [f for f in outcome.failures if f.details.get("variant") == "clip.advantages_clamped"]
    assert all("advantages instead of the ratio" in (f.likely_cause or "") for f in named)


def test_other_clip_bugs_are_not_named_advantages_clamped() -> None:
    for bug in ("lower_clip_dropped", "upper_clip_dropped"):
        outcome = run_probes(handwritten_loss(SPEC, (bug,)), SPEC)
        assert "clip.advantages_clamped" not in variants_named(outcome), bug


def test_correct_loss_is_silent() -> None:
    assert not run_probes(handwritten_loss(SPEC), SPEC).failures

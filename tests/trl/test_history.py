"""Shipped TRL bugs: which releases and settings have them, and how a failing run names them (no TRL: fast)."""

from __future__ import annotations

import pytest

from grpo_check.findings import Finding, Verdict, Where
from grpo_check.trl.history import SHIPPED_BUGS, name_shipped_bugs, shipped_bugs
from grpo_check.trl.versions import parse_version

T09 = {"temperature": 0.9, "loss_type": "bnpo", "gradient_accumulation_steps": 1, "steps_per_generation": 1}
DAPO_SPG4_GAS2 = {
    "temperature": 1.0,
    "loss_type": "dapo",
    "gradient_accumulation_steps": 2,
    "steps_per_generation": 4,
}


def _failing(stage: str, check_id: str, *, step: int = 0, verdict: Verdict = Verdict.FAIL) -> Finding:
    return Finding(
        check_id=check_id,
        stage=stage,
        verdict=verdict,
        figure=0.25,
        tolerance=1e-5,
        where=Where(step=step, micro_batch=0, rank=0),
        kind="compare",
        explanation=f"{check_id} differs",
    )


def test_every_entry_is_a_closed_range_fixed_by_the_next_release():
    for bug in SHIPPED_BUGS:
        assert parse_version(bug.first) <= parse_version(bug.last) < parse_version(bug.fixed_in)
        assert bug.pr > 0 and bug.stages and bug.trigger_text


@pytest.mark.parametrize(
    ("version", "settings", "expected"),
    [
        ("0.14.0", T09, ["trl-temperature-logps"]),
        ("0.15.2", T09, ["trl-temperature-logps"]),
        ("0.16.0", T09, []),  # the fixing release
        ("0.15.2", {**T09, "temperature": 1.0}, []),  # the bug vanishes at T=1
        ("0.22.0", DAPO_SPG4_GAS2, ["trl-scale-rewards-swapped", "trl-dapo-normaliser-spg"]),
        ("0.22.1", {"scale_rewards": "group"}, ["trl-scale-rewards-swapped"]),
        ("0.22.2", {"scale_rewards": "group"}, []),  # the fixing release
        ("0.21.0", {"scale_rewards": "batch"}, []),  # before the swap shipped
        ("1.9.0", DAPO_SPG4_GAS2, ["trl-dapo-normaliser-spg"]),
        ("1.9.1", DAPO_SPG4_GAS2, []),
        ("1.0.0", {**DAPO_SPG4_GAS2, "steps_per_generation": 2}, []),  # spg == GAS
        ("1.0.0", {**DAPO_SPG4_GAS2, "loss_type": "grpo"}, []),  # a per-sequence normaliser
        ("0.21.0", DAPO_SPG4_GAS2, []),  # before the global token normaliser shipped
    ],
)
def test_a_bug_is_reported_only_for_the_releases_and_settings_that_have_it(version, settings, expected):
    assert [bug.id for bug in shipped_bugs(version, settings)] == expected


def test_a_failing_stage_on_an_affected_release_is_named_with_fix_and_pr():
    findings = [_failing("logps", "logps.model", step=1), _failing("logps", "logps.ref_model", step=0)]
    named = name_shipped_bugs(findings, "0.15.2", T09)
    assert [f.check_id for f in named] == ["trl.shipped_bug.trl-temperature-logps"]
    finding = named[0]
    assert finding.verdict is Verdict.FAIL and finding.kind == "diagnosis"
    assert "fixed in 0.16.0" in finding.explanation and "huggingface/trl PR #3029" in finding.explanation
    assert finding.where.step == 0 and finding.check_id.endswith("temperature-logps")  # the earliest failure
    assert finding.details["explains"] == ["logps.model", "logps.ref_model"]
    for explained in findings:
        assert explained.details["shipped_bug"] == "trl-temperature-logps"
        assert "PR #3029" in explained.likely_cause and explained.fix == "upgrade to TRL >= 0.16.0"
    assert name_shipped_bugs(findings, "0.15.2", T09)[0].explanation == finding.explanation  # idempotent
    assert findings[0].likely_cause.count("PR #3029") == 1


def test_nothing_is_named_on_the_fixing_release_without_a_trigger_or_without_a_failure():
    assert name_shipped_bugs([_failing("logps", "logps.model")], "0.16.0", T09) == []
    assert name_shipped_bugs([_failing("logps", "logps.model")], "0.15.2", {**T09, "temperature": 1.0}) == []
    assert name_shipped_bugs([_failing("logps", "logps.model", verdict=Verdict.PASS)], "0.15.2", T09) == []
    # a failure in a stage the bug does not touch is not blamed on it
    assert name_shipped_bugs([_failing("advantages", "advantages.values")], "0.15.2", T09) == []


def test_a_cause_already_diagnosed_is_kept_and_the_bug_added():
    finding = _failing("loss", "loss.value")
    finding.likely_cause = "loss normaliser off by a constant factor"
    named = name_shipped_bugs([finding], "1.8.0", DAPO_SPG4_GAS2)
    assert [f.details["fixed_in"] for f in named] == ["1.9.1"]
    assert finding.likely_cause.startswith("loss normaliser off by a constant factor; shipped TRL bug")


def test_a_recorded_trl_trace_names_its_release_bugs_and_another_trace_does_not():
    from grpo_check.trl.history import name_shipped_bugs_in_trace

    manifest = {
        "trainer": "trl.GRPOTrainer (GRPOTrainer)",
        "versions": {"trl": "1.8.0"},
        "config": DAPO_SPG4_GAS2,
    }
    named = name_shipped_bugs_in_trace(manifest, [_failing("grad", "grad.logps_grad")])
    assert [f.details["shipped_bug"] for f in named] == ["trl-dapo-normaliser-spg"]
    assert (
        name_shipped_bugs_in_trace({**manifest, "trainer": "my-loop"}, [_failing("loss", "loss.value")]) == []
    )
    assert name_shipped_bugs_in_trace({**manifest, "versions": {}}, [_failing("loss", "loss.value")]) == []


DAPO_MASKED = {**DAPO_SPG4_GAS2, "steps_per_generation": 2, "mask_truncated_completions": True}


@pytest.mark.parametrize(
    ("version", "settings", "expected"),
    [
        ("1.8.0", DAPO_MASKED, ["trl-num-items-truncated"]),
        ("1.9.0", DAPO_MASKED, []),
        ("1.8.0", {**DAPO_MASKED, "mask_truncated_completions": False}, []),
        (
            "1.8.0",
            {**DAPO_MASKED, "steps_per_generation": 4},
            ["trl-dapo-normaliser-spg", "trl-num-items-truncated"],
        ),
    ],
)
def test_the_truncation_normaliser_bug_needs_masked_truncations_and_a_global_normaliser(
    version, settings, expected
):
    assert [bug.id for bug in shipped_bugs(version, settings)] == expected


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"loss_type": "luspo", "beta": 0.04, "importance_sampling_level": "sequence"},
            ["trl-luspo-unmasked"],
        ),
        ({"loss_type": "luspo", "beta": 0.0, "importance_sampling_level": "token"}, ["trl-luspo-unmasked"]),
        ({"loss_type": "luspo", "beta": 0.0, "importance_sampling_level": "sequence"}, []),  # (B, 1): exact
        ({"loss_type": "grpo", "beta": 0.04}, []),
    ],
)
def test_the_luspo_bug_needs_a_token_level_per_token_loss(settings, expected):
    assert [bug.id for bug in shipped_bugs("1.9.2", settings)] == expected
    assert shipped_bugs("1.10.0", settings) == [] and shipped_bugs("0.27.2", settings) == []


def test_the_entropy_bonus_bug_needs_a_bonus_a_global_normaliser_and_several_micro_batches():
    settings = {
        "loss_type": "dapo",
        "entropy_coef": 0.1,
        "gradient_accumulation_steps": 2,
        "steps_per_generation": 2,
    }
    assert [bug.id for bug in shipped_bugs("1.9.2", settings)] == ["trl-entropy-bonus-normaliser"]
    assert shipped_bugs("1.10.0", settings) == [] and shipped_bugs("1.7.1", settings) == []
    assert shipped_bugs("1.9.2", {**settings, "entropy_coef": 0.0}) == []
    assert shipped_bugs("1.9.2", {**settings, "loss_type": "bnpo"}) == []
    one = {**settings, "gradient_accumulation_steps": 1, "steps_per_generation": 1}
    assert shipped_bugs("1.9.2", one) == []  # one micro-batch: the two normalisers agree


def test_the_unscorable_rows_bug_is_known_from_the_captured_rewards_not_a_setting():
    assert [b.id for b in shipped_bugs("1.5.1", {"unscorable_rows": True})] == ["trl-unscorable-rows-counted"]
    assert shipped_bugs("1.5.1", {}) == [] and shipped_bugs("1.6.0", {"unscorable_rows": True}) == []
    named = name_shipped_bugs(
        [_failing("advantages", "advantages.values")], "1.5.1", {"unscorable_rows": True}
    )
    assert [f.details["pr"] for f in named] == [5902]


def test_the_attention_mask_bug_is_known_from_left_padded_prompts_and_only_on_0_14():
    padded = {"temperature": 1.0, "left_padded_prompts": True}
    assert [b.id for b in shipped_bugs("0.14.0", padded)] == ["trl-logps-no-attention-mask"]
    assert shipped_bugs("0.14.0", {**padded, "left_padded_prompts": False}) == []
    assert shipped_bugs("0.15.0", padded) == []
    both = [b.id for b in shipped_bugs("0.14.0", {**padded, "temperature": 0.7})]
    assert both == ["trl-logps-no-attention-mask", "trl-temperature-logps"]


def test_a_re_derivation_failing_in_the_bug_s_stage_is_explained_too():
    finding = _failing("loss", "rederive.num_items_in_batch")
    finding.kind = "rederive"
    settings = {"loss_type": "dapo", "mask_truncated_completions": True, "gradient_accumulation_steps": 1}
    named = name_shipped_bugs([finding], "1.8.0", settings)
    assert [f.details["shipped_bug"] for f in named] == ["trl-num-items-truncated"]
    assert finding.details["shipped_bug"] == "trl-num-items-truncated"

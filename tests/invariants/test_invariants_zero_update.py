"""A zero update (every advantage 0, no other gradient) leaves the policy as it was: ρ ≡ 1 and ref = policy
are then legitimate. The capture records whether the parameters changed (``meta policy_changed_since_*``); the
checks that read "an optimizer step happened" as "the policy moved" stay silent when it did not, and still
fire when it did. Likewise a coefficient the trainer moves per step (``meta spec_overrides``) is the one the
checks use."""

from __future__ import annotations

import torch
from invariants_builders import build_step, only, with_tensors

from grpo_check.config import GRPOSpec, spec_for_step
from grpo_check.findings import Verdict
from grpo_check.invariants import run_invariants


def run(step, spec, check_id):
    return only(run_invariants(step, spec, checks=[check_id]), check_id)


def test_moves_off_policy_is_silent_after_a_zero_update_and_fires_after_a_real_one():
    built = build_step(off_policy=True)
    stale = with_tensors(built.step, old_logps=built.step["logps"].clone())
    stale.meta["policy_changed_since_generation"] = True
    assert run(stale, built.spec, "ratio.moves_off_policy").verdict is Verdict.WARN
    stale.meta["policy_changed_since_generation"] = False
    finding = run(stale, built.spec, "ratio.moves_off_policy")
    assert finding.verdict is Verdict.PASS and finding.details.get("applicable") is False


def test_reference_frozen_is_silent_while_no_update_changed_the_policy():
    built = build_step(beta=0.04, step=3)
    follows = with_tensors(
        built.step, ref_logps=built.step["logps"].clone(), kl=torch.zeros_like(built.step["kl"])
    )
    follows.meta["policy_changed_since_start"] = True
    assert run(follows, built.spec, "kl.reference_frozen").verdict is Verdict.WARN
    follows.meta["policy_changed_since_start"] = False
    assert run(follows, built.spec, "kl.reference_frozen").details.get("applicable") is False


def test_old_logps_required_passes_a_zero_update_and_fails_a_skipped_old_logps():
    from grpo_check.rederive.checks import old_logps_check

    built = build_step(off_policy=True)
    stale = with_tensors(built.step, old_logps=built.step["logps"].clone())
    stale.meta.update({"step": 3, "scope": "micro_batch", "generation_step": 2})
    stale.meta["policy_changed_since_generation"] = True
    assert old_logps_check(stale, built.spec, None).verdict is Verdict.FAIL
    stale.meta["policy_changed_since_generation"] = False
    assert old_logps_check(stale, built.spec, None).verdict is Verdict.PASS


def test_sign_check_is_inconclusive_where_a_mask_leaves_the_kl_gradient_alone():
    built = build_step(beta=0.04, off_policy=True, seed=5)
    spec = built.spec
    assert run(built.step, spec, "grad.sign_matches_advantage").verdict is Verdict.PASS
    flipped = with_tensors(built.step, logps_grad=-built.step["logps_grad"])
    assert run(flipped, spec, "grad.sign_matches_advantage").verdict is Verdict.FAIL
    masked = GRPOSpec(**{**spec.to_dict(), "off_policy_mask_threshold": 0.5})
    assert run(flipped, masked, "grad.sign_matches_advantage").verdict is Verdict.INCONCLUSIVE


def test_a_per_step_coefficient_reaches_the_checks():
    built = build_step(off_policy=True, seed=2)
    assert run(built.step, built.spec, "grad.sign_matches_advantage").verdict is Verdict.PASS
    built.step.meta["spec_overrides"] = {"entropy_coef": 0.01}  # an entropy bonus adds either sign
    assert run(built.step, built.spec, "grad.sign_matches_advantage").verdict is Verdict.INCONCLUSIVE
    assert spec_for_step(built.spec, {"spec_overrides": {"beta": 1.0}}) is built.spec  # not a per-step field
    assert spec_for_step(built.spec, {"spec_overrides": {"entropy_coef": "x"}}) is built.spec


def test_ref_is_policy_diagnosis_needs_a_token_to_compare():
    from grpo_check.compare import compare_step

    built = build_step(beta=0.04, step=3, seed=4)
    same = with_tensors(
        built.step, ref_logps=built.step["logps"].clone(), kl=torch.zeros_like(built.step["kl"])
    )
    same.meta["optimizer_steps_since_old_logps"] = 0
    ids = {f.check_id for f in compare_step(same, built.spec)}
    assert "diagnose.ref_is_policy" in ids
    empty = with_tensors(same, completion_mask=torch.zeros_like(same["completion_mask"]))
    ids = {f.check_id for f in compare_step(empty, built.spec)}
    assert "diagnose.ref_is_policy" not in ids

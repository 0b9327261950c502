"""Every signature detector FIRES on a crafted broken step and stays SILENT on correct ones.

Broken steps come from :mod:`diagnose_mutants`: a correct step built from the reference, with one bug class
injected and the trainer's own downstream tensors recomputed from the broken upstream.
"""

from __future__ import annotations

import pytest
import torch
from diagnose_mutants import (
    advantages_with,
    detached,
    downstream_with,
    grad_scaled,
    logps_at_temperature,
    loss_sign_flipped,
    model_step,
    nan_reward_leak,
    recompute_downstream,
    regrouped,
    shifted_logps,
    sign_flipped_logps,
    truncated_sampler,
    with_advantages,
    with_logps,
)

from grpo_check.compare import compare_step
from grpo_check.compare.synthetic import make_step
from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.reference.advantages import compute_advantages

BASE = GRPOSpec(num_generations=4, loss_type="grpo", max_completion_length=6)
KL = BASE.replace(beta=0.04)
GAS = BASE.replace(loss_type="dapo", gradient_accumulation_steps=4)


def diagnoses(findings):
    return [f for f in findings if f.kind == "diagnosis"]


def named(findings, check_id):
    return [f for f in diagnoses(findings) if f.check_id == check_id]


def assert_only_diagnosis(findings, check_id, catalog_id, verdict=Verdict.FAIL):
    """Exactly one signature named, with its catalog id; the compare findings it explains carry it."""
    found = [f for f in diagnoses(findings) if f.verdict is not Verdict.PASS]
    assert [f.check_id for f in found] == [check_id], [f.message() for f in found]
    assert found[0].catalog_id == catalog_id
    assert found[0].verdict is verdict
    explained = [f for f in findings if f.kind == "compare" and f.catalog_id == catalog_id]
    assert explained, "the diagnosis must attach to the compare finding it explains"
    assert all(f.likely_cause and f.fix for f in explained)
    return found[0]


# --------------------------------------------------------------------------------------------- silence

CORRECT_SPECS = [
    BASE,
    KL,
    GAS,
    BASE.replace(loss_type="dr_grpo"),
    BASE.replace(loss_type="bnpo", beta=0.04, kl_estimator="k1"),
    KL.replace(kl_estimator="k2", use_bias_correction_kl=False),
    BASE.replace(std="population", adv_epsilon=1e-6),
    BASE.replace(importance_sampling_level="sequence"),
    BASE.replace(scale_rewards="none"),
    BASE.replace(scale_rewards="batch", loss_type="dapo"),
    GAS.replace(steps_per_generation=2, num_processes=2),
]


@pytest.mark.parametrize(
    "spec", CORRECT_SPECS, ids=lambda s: f"{s.loss_type}-b{s.beta}-{s.kl_estimator}-{s.std}"
)
@pytest.mark.parametrize("seed", [0, 1])
def test_silent_on_correct_steps(spec, seed):
    findings = compare_step(make_step(spec, seed=seed), spec)
    loud = [f for f in findings if f.verdict in (Verdict.FAIL, Verdict.WARN, Verdict.INCONCLUSIVE)]
    assert not loud, [f.message() for f in loud]


@pytest.mark.parametrize(
    "spec", [BASE.replace(temperature=0.7), BASE.replace(top_p=0.8, top_k=5)], ids=["T0.7", "top_p"]
)
def test_silent_with_model_forward(spec):
    step, model = model_step(spec)
    findings = compare_step(step, spec, model=model)
    assert not [f for f in findings if f.verdict in (Verdict.FAIL, Verdict.WARN, Verdict.INCONCLUSIVE)]
    assert any(f.check_id == "logps.model" and f.verdict is Verdict.PASS for f in findings)


# ------------------------------------------------------------------------------------------ advantages


def test_grouping_repeat_vs_interleave():
    findings = compare_step(regrouped(BASE), BASE)
    diag = assert_only_diagnosis(findings, "diagnose.grouping", "6")
    sums = {int(k): abs(v) for k, v in diag.details["group_sums"].items()}
    assert diag.where.prompt == max(sums, key=sums.get)  # the worst group is named
    # stage isolation: nothing downstream of advantages fails stage-isolated
    isolated = [f for f in findings if f.kind == "compare" and f.verdict is Verdict.FAIL]
    assert {f.stage for f in isolated if not f.check_id.startswith("e2e.")} == {"advantages"}


def test_epsilon_far_too_large_is_a_bug():
    diag = assert_only_diagnosis(
        compare_step(advantages_with(BASE, adv_epsilon=1e4), BASE), "diagnose.advantage_epsilon", "S2"
    )
    assert diag.figure == pytest.approx(1e4, rel=1e-2)


@pytest.mark.parametrize("changes", [{"std": "population"}, {"adv_epsilon": 1e-8}, {"adv_epsilon": 1e-6}])
def test_std_and_small_epsilon_are_conventions(changes):
    findings = compare_step(advantages_with(BASE, **changes), BASE)
    assert_only_diagnosis(findings, "diagnose.advantage_convention", "10", verdict=Verdict.CONVENTION)
    assert not [f for f in findings if f.verdict is Verdict.FAIL]
    assert [f.verdict for f in findings if f.check_id == "advantages.values"] == [Verdict.CONVENTION]


def test_population_std_names_the_std_convention():
    diag = named(
        compare_step(advantages_with(BASE, std="population"), BASE), "diagnose.advantage_convention"
    )[0]
    assert diag.details["std"] == "population"


def test_nan_reward_counted_as_zero_leaks():
    diag = assert_only_diagnosis(compare_step(nan_reward_leak(BASE), BASE), "diagnose.nan_reward_leak", "8")
    assert diag.where.row == 5 and diag.where.prompt == 1 and diag.where.generation == 1


def test_nan_advantages_leak():
    step = make_step(BASE)
    adv = step["advantages"].clone()
    adv[4:8] = float("nan")
    step.tensors["advantages"] = adv
    per_func = step["rewards_per_func"].clone()
    per_func[6] = float("nan")
    step.tensors["rewards_per_func"] = per_func
    findings = compare_step(step, BASE, end_to_end=False)
    diag = named(findings, "diagnose.nan_reward_leak")
    assert diag and diag[0].catalog_id == "8" and diag[0].where.row == 4


# --------------------------------------------------------------------------------------------- logps


@pytest.mark.parametrize("shift", [1, -1])
def test_token_shift(shift):
    step, model = shifted_logps(BASE, shift)
    diag = assert_only_diagnosis(compare_step(step, BASE, model=model), "diagnose.logps_shift", "X-shift")
    assert diag.details["shift"] == shift


def test_token_shift_without_model_uses_sampler():
    step, _ = shifted_logps(BASE, 1)
    assert named(compare_step(step, BASE), "diagnose.logps_shift")


def test_sign_flipped_log_softmax():
    step, model = sign_flipped_logps(BASE)
    diag = assert_only_diagnosis(compare_step(step, BASE, model=model), "diagnose.logps_sign", "S1")
    assert diag.figure > 0


def test_sign_flip_from_positive_logps_alone():
    step, _ = sign_flipped_logps(BASE)
    step.tensors.pop("sampler_logps")
    diag = named(compare_step(step, BASE), "diagnose.logps_sign")
    assert diag and diag[0].catalog_id == "S1"


@pytest.mark.parametrize(("used", "check"), [(1.0, "not divided"), (0.49, "twice")])
def test_temperature_wrong(used, check):
    spec = BASE.replace(temperature=0.7)
    step, model = logps_at_temperature(spec, used)
    diag = assert_only_diagnosis(compare_step(step, spec, model=model), "diagnose.temperature", "1")
    assert check in diag.explanation


def test_truncated_sampling_support():
    spec = BASE.replace(top_p=0.8)
    step, model = truncated_sampler(spec)
    assert_only_diagnosis(compare_step(step, spec, model=model), "diagnose.truncated_support", "3")


def test_truncated_support_without_model_is_a_warning():
    spec = BASE.replace(top_p=0.8)
    step, _ = truncated_sampler(spec)
    diag = named(compare_step(step, spec), "diagnose.truncated_support")
    assert diag and diag[0].verdict is Verdict.WARN


# ------------------------------------------------------------------------------------------ objective


@pytest.mark.parametrize(("factor", "name"), [(4.0, "GAS"), (0.25, "1/GAS")])
def test_gradient_accumulation_factor(factor, name):
    diag = assert_only_diagnosis(
        compare_step(grad_scaled(GAS, factor), GAS), "diagnose.normalizer_factor", "4"
    )
    assert diag.details["factor_name"] == name


def test_unnamed_constant_factor_still_reported():
    diag = assert_only_diagnosis(
        compare_step(grad_scaled(BASE, 1.7), BASE), "diagnose.normalizer_factor", "4"
    )
    assert diag.figure == pytest.approx(1.7, rel=1e-3)


@pytest.mark.parametrize("estimator", ["k1", "k2"])
def test_kl_estimator_identified(estimator):
    step = downstream_with(KL, kl_estimator=estimator)
    diag = assert_only_diagnosis(compare_step(step, KL), "diagnose.kl_estimator", "18")
    assert diag.details["estimator"].endswith(estimator)


def test_kl_estimator_identified_from_gradient_alone():
    step = downstream_with(KL, kl_estimator="k1")
    for name in ("kl", "per_token_loss", "loss"):
        step.tensors.pop(name)
    diag = assert_only_diagnosis(compare_step(step, KL), "diagnose.objective_variant", "18")
    assert "k1" in diag.details["variant"] and diag.stage == "kl"


@pytest.mark.parametrize(
    ("spec", "aggregation"),
    [
        (BASE, "seq_mean_token_sum_norm"),
        (BASE, "token_mean"),
        (BASE.replace(loss_type="dr_grpo"), "seq_mean_token_mean"),
    ],
)
def test_aggregation_mode_identified(spec, aggregation):
    diag = assert_only_diagnosis(
        compare_step(downstream_with(spec, aggregation=aggregation), spec), "diagnose.objective_variant", "5"
    )
    assert aggregation in diag.details["variant"]


def test_declared_aggregation_is_a_convention():
    step = downstream_with(BASE, aggregation="seq_mean_token_sum_norm")
    step.meta["loss_type"] = "dr_grpo"
    findings = compare_step(step, BASE, end_to_end=False)
    assert_only_diagnosis(findings, "diagnose.objective_variant", "5", verdict=Verdict.CONVENTION)


def test_sequence_vs_token_ratio():
    assert_only_diagnosis(
        compare_step(downstream_with(BASE, importance_sampling_level="sequence"), BASE),
        "diagnose.objective_variant",
        "X-ratio-level",
    )


def test_clipping_not_applied():
    step = downstream_with(BASE, epsilon=1e12)
    diag = assert_only_diagnosis(compare_step(step, BASE), "diagnose.clipping_not_applied", "21")
    row, token = diag.where.row, diag.where.token
    reference = make_step(BASE)["logps_grad"]
    assert reference[row, token] == 0 and step["logps_grad"][row, token] != 0  # a clipped token is named


def test_detached_ratio_zero_gradient():
    diag = assert_only_diagnosis(compare_step(detached(BASE), BASE), "diagnose.detached_grad", "21")
    assert diag.figure == 0.0


def test_missing_gradient_from_recorder_meta():
    step = make_step(BASE)
    step.tensors.pop("logps_grad")
    step.meta["missing_grads"] = ["logps_grad"]
    assert named(compare_step(step, BASE), "diagnose.detached_grad")


def test_detached_policy_term_with_kl():
    assert_only_diagnosis(compare_step(detached(KL), KL), "diagnose.objective_variant", "21")


def test_loss_sign_flipped():
    diag = assert_only_diagnosis(compare_step(loss_sign_flipped(BASE), BASE), "diagnose.loss_sign", "21")
    assert diag.figure == pytest.approx(-1.0)


def test_nan_origin_traced_to_first_stage():
    step = make_step(BASE)
    grad = step["logps_grad"].clone()
    logps = step["logps"].clone()
    logps[2, 1] = float("nan")
    grad[2, 1] = float("nan")
    step.tensors.update(logps=logps, logps_grad=grad)
    findings = compare_step(step, BASE, end_to_end=False)
    origin = named(findings, "diagnose.nan_origin")
    assert origin and origin[0].stage == "logps" and (origin[0].where.row, origin[0].where.token) == (2, 1)


def test_loss_near_zero_is_explained_not_failed():
    step = make_step(BASE, off_policy=0.0)
    findings = compare_step(step, BASE)
    note = named(findings, "diagnose.loss_near_zero")
    assert note and note[0].verdict is Verdict.PASS and note[0].catalog_id == "31"
    assert not [f for f in findings if f.verdict is Verdict.FAIL]


def test_loss_near_zero_silent_off_policy():
    assert not named(compare_step(make_step(BASE), BASE), "diagnose.loss_near_zero")


def test_unexplained_difference_still_located():
    step = make_step(BASE)
    grad = step["logps_grad"].clone()
    grad[7, 2] += 0.5
    step.tensors["logps_grad"] = grad
    findings = compare_step(step, BASE)
    diag = named(findings, "diagnose.unexplained")
    assert diag and diag[0].verdict is Verdict.INCONCLUSIVE
    assert (diag[0].where.row, diag[0].where.token) == (7, 2)
    assert diag[0].figure == pytest.approx(0.5, rel=1e-5)


def test_diagnose_accepts_plain_mapping_reference():
    from grpo_check.compare.stages import compare_stages
    from grpo_check.compare.tolerances import TolerancePolicy
    from grpo_check.diagnose import diagnose

    step = grad_scaled(GAS, 4.0)
    findings, reference = compare_stages(step, GAS, TolerancePolicy())
    out = diagnose(step, dict(reference.tensors), GAS, findings)
    assert [f.catalog_id for f in out] == ["4"]
    assert torch.is_tensor(reference.tensors["logps_grad"])


def test_advantages_in_another_row_order():
    from diagnose_mutants import with_advantages

    step = make_step(BASE)
    transposed = step["advantages"].double().view(-1, BASE.num_generations).T.reshape(-1)
    step = with_advantages(step, BASE, transposed)
    diag = assert_only_diagnosis(compare_step(step, BASE), "diagnose.advantages_permuted", "6")
    assert diag.details["rows_moved"] > 0


@pytest.mark.parametrize("shift", [1, -1])
def test_logits_misaligned_by_one(shift):
    from diagnose_mutants import logit_shifted

    step, model = logit_shifted(BASE, shift)
    diag = assert_only_diagnosis(compare_step(step, BASE, model=model), "diagnose.logps_shift", "X-shift")
    assert diag.details == {"shift": shift, "shifted": "logits"}


def test_left_padding_without_position_ids():
    from diagnose_mutants import left_padded

    step, model = left_padded(BASE, "arange")
    diag = assert_only_diagnosis(compare_step(step, BASE, model=model), "diagnose.position_ids", "14")
    assert diag.where.row % 2 == 1  # a left-padded row is the worst offender


def test_left_padding_with_position_ids_is_silent():
    from diagnose_mutants import left_padded

    step, model = left_padded(BASE, "from_mask")
    findings = compare_step(step, BASE, model=model)
    assert not [f for f in findings if f.verdict in (Verdict.FAIL, Verdict.WARN, Verdict.INCONCLUSIVE)]


def test_kl_arguments_swapped():
    from diagnose_mutants import kl_swapped

    diag = assert_only_diagnosis(compare_step(kl_swapped(KL), KL), "diagnose.kl_estimator", "18")
    assert diag.details["swapped_arguments"] is True


def test_kl_penalty_sign_flipped():
    step = downstream_with(KL, beta=-KL.beta)
    step.tensors.pop("kl")  # the KL values are right; only its sign in the loss is wrong
    diag = assert_only_diagnosis(compare_step(step, KL), "diagnose.objective_variant", "21")
    assert diag.details["variant"] == "KL penalty with the wrong sign" and diag.stage == "loss"


def test_unscorable_reward_scored_fails_in_rewards_stage():
    findings = compare_step(nan_reward_leak(BASE), BASE)
    (unscorable,) = [f for f in findings if f.check_id == "rewards.unscorable"]
    assert unscorable.verdict is Verdict.FAIL and unscorable.where.row == 5
    assert unscorable.catalog_id == "8"


def test_unscorable_reward_recorded_but_unused_passes():
    step = make_step(BASE)
    per_func = step["rewards_per_func"].clone()
    per_func[5, :] = float("nan")
    step = with_advantages(step, BASE, compute_advantages(per_func, step["group_index"], BASE).advantages)
    step.tensors["rewards_per_func"] = per_func
    step.tensors["rewards"] = torch.nan_to_num(per_func, nan=0.0).sum(1)  # TRL-style 0 for the unscorable row
    findings = compare_step(step, BASE)
    assert not [f for f in findings if f.verdict is Verdict.FAIL]


def test_old_logps_in_another_precision():
    step, model = model_step(BASE)
    step.meta["optimizer_steps_since_old_logps"] = 0
    findings = compare_step(step, BASE, model=model)
    assert [f.verdict for f in findings if f.check_id == "logps.old_model"] == [Verdict.PASS]
    step.tensors["old_logps"] = step["logps"].to(torch.bfloat16).to(torch.float32)  # bf16 'old' forward
    step = recompute_downstream(step, BASE)
    diag = assert_only_diagnosis(compare_step(step, BASE, model=model), "diagnose.old_logps_mismatch", "16")
    assert diag.details["bf16_quantised"] is True


def test_reference_model_is_the_policy():
    from grpo_check.compare.synthetic import TinyLM

    step, model = model_step(KL)
    step.tensors["ref_logps"] = step["logps"].clone()  # the "reference" forward ran the policy
    step = recompute_downstream(step, KL)
    diag = assert_only_diagnosis(
        compare_step(step, KL, model=model, ref_model=TinyLM(seed=7)), "diagnose.ref_is_policy", "20"
    )
    assert diag.stage == "logps"


def test_reference_model_distinct_is_silent():
    from grpo_check.compare.synthetic import TinyLM
    from grpo_check.reference.logps import logps_from_model

    ref_model = TinyLM(seed=7)
    step, model = model_step(KL)
    step.tensors["ref_logps"] = logps_from_model(
        ref_model, step["prompt_ids"], step["prompt_mask"], step["completion_ids"], step["completion_mask"]
    ).to(torch.float32)
    step = recompute_downstream(step, KL)
    findings = compare_step(step, KL, model=model, ref_model=ref_model)
    assert not [f for f in findings if f.verdict in (Verdict.FAIL, Verdict.WARN, Verdict.INCONCLUSIVE)]


def _with_tool_mask(spec):
    step = make_step(spec)
    tool_mask = torch.ones_like(step["completion_mask"])
    tool_mask[:, 1:3] = 0  # tokens 1-2 of every row came from a tool
    step.tensors["tool_mask"] = tool_mask
    return step


def test_tool_tokens_trained():
    step = recompute_downstream(_with_tool_mask(BASE), BASE, tool_mask=None)
    diag = assert_only_diagnosis(compare_step(step, BASE), "diagnose.objective_variant", "28")
    assert diag.stage == "loss"


def test_tool_tokens_masked_is_silent():
    step = recompute_downstream(_with_tool_mask(BASE), BASE)
    assert not [f for f in compare_step(step, BASE) if f.verdict in (Verdict.FAIL, Verdict.WARN)]


def test_ref_equal_to_policy_is_silent_where_the_reference_model_is_the_policy():
    """Before any update the reference model IS the policy: a trainer whose log-probs are wrong on both sides
    (S1, sign-flipped log-softmax) has ref_logps == logps legitimately. #20 must not be named; S1 is."""
    step, model = model_step(KL)
    flipped = -step["logps"].double()
    step = with_logps(step, KL, flipped)
    step.tensors["ref_logps"] = flipped.to(torch.float32)
    step = recompute_downstream(step, KL)
    findings = compare_step(step, KL, model=model, ref_model=model)
    assert next(f for f in findings if f.check_id == "logps.ref_model").verdict is Verdict.FAIL
    assert not [f for f in findings if f.check_id == "diagnose.ref_is_policy"]
    assert "S1" in {f.catalog_id for f in findings if f.kind == "diagnosis"}


@pytest.mark.parametrize("identical", [True, False])
def test_reference_log_probs_bit_identical_to_the_policy_without_a_reference_model(identical):
    """No reference model to compare with: ref_logps bit-identical to the policy's after optimizer steps (β > 0)
    is the tell of #20 (a WARN); one differing token is enough to stay silent."""
    step = make_step(KL)
    step.meta.update(step=3, optimizer_steps_since_old_logps=0)
    ref = step["logps"].clone()
    if not identical:
        ref[0, 0] = ref[0, 0] - 0.01
    step.tensors["ref_logps"] = ref
    step = recompute_downstream(step, KL)
    diag = named(compare_step(step, KL), "diagnose.ref_is_policy")
    if identical:
        assert diag and diag[0].catalog_id == "20" and diag[0].verdict is Verdict.WARN
    else:
        assert not diag

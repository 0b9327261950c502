"""Probes: the closed forms agree with the reference (a cross-check of both), and check() fires/stays silent."""

from __future__ import annotations

import math
import re

import pytest
import torch

from grpo_check import reference
from grpo_check.config import GRPOSpec
from grpo_check.findings import GRPOCheckError, InputError
from grpo_check.testing.probes import (
    advantage_pair_probe,
    advantage_probe,
    aggregation_probe,
    all_probes,
    clip_probe,
    kl_probe,
    on_policy_probe,
)

ADV_SPECS = [
    GRPOSpec(std=std, adv_epsilon=eps, scale_rewards=scale)
    for std in ("sample", "population")
    for eps in (1e-4, 1e-8)
    for scale in ("group", "none")
]
CLIPPED_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")


@pytest.mark.parametrize("spec", ADV_SPECS, ids=lambda s: f"{s.std}-{s.adv_epsilon:g}-{s.scale_rewards}")
@pytest.mark.parametrize("make", [advantage_probe, advantage_pair_probe])
def test_advantage_closed_forms_agree_with_reference(make, spec: GRPOSpec) -> None:
    probe = make(spec)
    inputs = probe.inputs()
    expected = reference.compute_advantages(inputs["rewards"], inputs["group_index"], probe.spec).advantages
    probe.check(expected)  # silent: the reference agrees with the closed form
    torch.testing.assert_close(probe.expected()["advantages"], expected, rtol=1e-12, atol=1e-12)


def test_advantage_pair_is_one_over_root_two() -> None:
    probe = advantage_pair_probe(GRPOSpec(adv_epsilon=0.0 + 1e-300))
    assert probe.expected()["advantages"][1].item() == pytest.approx(1 / math.sqrt(2), rel=1e-12)


def _reference_policy_outputs(probe, loss_type: str) -> dict[str, torch.Tensor]:
    inputs = probe.inputs()
    spec = probe.spec
    out = reference.per_token_loss(inputs["logps"], inputs["old_logps"], inputs["advantages"],
                                   inputs["completion_mask"], spec)  # fmt: skip
    mask = inputs["completion_mask"].bool()
    loss = reference.aggregate_loss(out.per_token_loss, inputs["completion_mask"], spec,
                                    probe.meta["num_items_in_batch"]).loss  # fmt: skip
    grad = reference.autograd_logps_grad(
        inputs["logps"],
        lambda leaf: reference.aggregate_loss(
            reference.per_token_loss(leaf, inputs["old_logps"], inputs["advantages"], inputs["completion_mask"],
                                     spec).per_token_loss,
            inputs["completion_mask"], spec, probe.meta["num_items_in_batch"],
        ).loss,
    )  # fmt: skip
    clipped = (out.is_low_clipped | out.is_high_clipped) & mask
    return {
        "ratio": out.ratio,
        "clipped_ratio": out.clipped_ratio,
        "is_low_clipped": out.is_low_clipped,
        "is_high_clipped": out.is_high_clipped,
        "clip_fraction": clipped.sum() / mask.sum(),
        "per_token_loss": out.per_token_loss,
        "loss": loss,
        "logps_grad": grad,
    }


@pytest.mark.parametrize("loss_type", CLIPPED_TYPES)
@pytest.mark.parametrize("make", [on_policy_probe, clip_probe])
def test_ratio_and_clip_closed_forms_agree_with_reference(make, loss_type: str) -> None:
    probe = make(loss_type)
    outputs = _reference_policy_outputs(probe, loss_type)
    probe.check(outputs)  # every quantity: ratio, clip masks, clip fraction, loss, gradient


def test_clip_probe_gradient_is_zero_exactly_where_clipped() -> None:
    expected = clip_probe().expected()
    clipped = expected["is_low_clipped"] | expected["is_high_clipped"]
    assert bool((expected["logps_grad"][clipped] == 0).all())
    assert bool((expected["logps_grad"][~clipped] != 0).all())
    assert expected["clip_fraction"].item() == pytest.approx(1 / 3)


def test_on_policy_loss_is_zero_but_gradient_is_not() -> None:
    expected = on_policy_probe().expected()
    assert expected["loss"].item() == 0.0
    advantages = torch.tensor(on_policy_probe().input_values["advantages"]).unsqueeze(1)
    assert bool((torch.sign(expected["logps_grad"]) == -torch.sign(advantages)).all())


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_closed_forms_agree_with_reference(estimator: str) -> None:
    probe = kl_probe(estimator)
    inputs = probe.inputs()
    kl = reference.per_token_kl(inputs["logps"], inputs["ref_logps"], estimator)
    grad = reference.kl_estimator_grad(inputs["logps"], inputs["ref_logps"], estimator)
    probe.check({"kl": kl, "kl_grad": grad})


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "luspo", "sapo", "cispo"])
def test_aggregation_closed_forms_agree_with_reference(loss_type: str) -> None:
    probe = aggregation_probe(loss_type)
    inputs = probe.inputs()
    loss = reference.aggregate_loss(inputs["per_token_loss"], inputs["completion_mask"], probe.spec,
                                    probe.meta["num_items_in_batch"]).loss  # fmt: skip
    weights = reference.aggregation_weights(
        inputs["completion_mask"], probe.spec, probe.meta["num_items_in_batch"]
    )
    probe.check({"loss": loss, "per_token_loss_grad": weights})


def test_aggregation_losses_differ_by_loss_type() -> None:
    losses = {t: aggregation_probe(t).expected()["loss"].item() for t in ("grpo", "dapo", "dr_grpo", "luspo")}
    assert losses == pytest.approx({"grpo": 3.0, "dapo": 2.5, "dr_grpo": 1.25, "luspo": 5.0})


# ---------------------------------------------------------------- check() fires and stays silent


def test_advantage_check_fires_on_population_std_and_names_coordinates() -> None:
    sample_probe = advantage_probe(GRPOSpec(std="sample"))
    population = advantage_probe(GRPOSpec(std="population")).expected()["advantages"]
    with pytest.raises(GRPOCheckError) as info:
        sample_probe.check(population.float())
    message = str(info.value)
    assert "probe.advantages.advantages" in message
    assert re.search(r"prompt \d, generation \d, row \d+", message)
    assert info.value.finding.stage == "advantages"


def test_advantage_check_fires_on_nan_leak() -> None:
    probe = advantage_probe()
    leaked = probe.expected()["advantages"].clone()
    leaked[9] = float("nan")
    with pytest.raises(GRPOCheckError, match="row 9"):
        probe.check(leaked)


def _grpo_loss(logps, old_logps, advantages, completion_mask, spec, detach_ratio=False, use_max=False, **_):
    ratio = torch.exp(logps - old_logps)
    if detach_ratio:
        ratio = ratio.detach()
    clipped = torch.clamp(ratio, 1 - spec.epsilon, 1 + spec.epsilon_high_effective)
    adv = advantages.unsqueeze(1)
    pick = torch.max if use_max else torch.min
    per_token = -pick(ratio * adv, clipped * adv)
    mask = completion_mask
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def test_check_fn_passes_a_correct_loss_function() -> None:
    clip_probe().check_fn(_grpo_loss)
    on_policy_probe().check_fn(_grpo_loss)


def test_check_fn_catches_a_detached_ratio_through_the_gradient() -> None:
    # on policy the loss VALUE is right (0) — only the gradient shows the bug
    with pytest.raises(GRPOCheckError) as info:
        on_policy_probe().check_fn(lambda **kw: _grpo_loss(**kw, detach_ratio=True))
    assert info.value.finding.check_id == "probe.on_policy.logps_grad"


def test_check_fn_catches_max_instead_of_min() -> None:
    with pytest.raises(GRPOCheckError, match=r"probe 'clip'"):
        clip_probe().check_fn(lambda **kw: _grpo_loss(**kw, use_max=True))


def test_kl_check_fn_catches_the_wrong_estimator() -> None:
    probe = kl_probe("k3")
    probe.check_fn(lambda logps, ref_logps: torch.exp(ref_logps - logps) - (ref_logps - logps) - 1)
    with pytest.raises(GRPOCheckError, match="kl"):
        probe.check_fn(lambda logps, ref_logps: logps - ref_logps)


def test_aggregation_check_fn_catches_token_mean_for_grpo() -> None:
    probe = aggregation_probe("grpo")

    def seq_mean(per_token_loss, completion_mask):
        return ((per_token_loss * completion_mask).sum(-1) / completion_mask.sum(-1)).mean()

    def token_mean(per_token_loss, completion_mask):
        return (per_token_loss * completion_mask).sum() / completion_mask.sum()

    probe.check_fn(seq_mean)
    with pytest.raises(GRPOCheckError) as info:
        probe.check_fn(token_mean)
    assert "actual 2.5 vs expected 3" in str(info.value)


def test_unknown_output_names_and_unsupported_specs_are_input_errors() -> None:
    with pytest.raises(InputError, match="no expected value"):
        advantage_probe().check({"ratios": torch.zeros(3)})
    with pytest.raises(InputError):
        advantage_probe(GRPOSpec(scale_rewards="batch"))
    with pytest.raises(InputError):
        kl_probe("k4")


def test_all_probes_follow_the_spec() -> None:
    probes = all_probes(GRPOSpec(loss_type="dr_grpo", kl_estimator="k2"))
    names = [p.name for p in probes]
    assert names == ["advantages", "advantages_pair", "on_policy", "clip", "kl", "aggregation"]
    assert probes[4].spec.kl_estimator == "k2"
    assert probes[5].spec.loss_type == "dr_grpo"

"""Cross-check the reference against TRL 1.16 itself: TRL's real ``GRPOTrainer._compute_loss`` is called
with a minimal stand-in ``self`` (no model: the policy log-probs are injected), for every loss type and the
main options; loss value and ∂loss/∂logps must match the reference to float64 rounding."""

from __future__ import annotations

import collections
import types

import pytest
import torch

from grpo_check.config import LOSS_TYPES, GRPOSpec
from grpo_check.reference import (
    aggregate_loss,
    autograd_logps_grad,
    closed_form_logps_grad,
    compute_advantages,
    high_entropy_mask,
    off_policy_sequence_mask,
    per_token_loss,
    vespo_gamma_weights,
)

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
GRPOTrainer = trl_grpo.GRPOTrainer


class _Accelerator:
    num_processes = 1
    process_index = 0

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x

    def pad_across_processes(self, x, dim=0, pad_index=0):
        return x


def _fake_trainer(spec: GRPOSpec, logps: torch.Tensor, entropies: torch.Tensor, gas: int, spg: int):
    args = types.SimpleNamespace(
        use_bias_correction_kl=spec.use_bias_correction_kl,
        delta=spec.delta,
        sapo_temperature_pos=spec.sapo_temperature_pos,
        sapo_temperature_neg=spec.sapo_temperature_neg,
        vespo_k_pos=spec.vespo_k_pos,
        vespo_lambda_pos=spec.vespo_lambda_pos,
        vespo_k_neg=spec.vespo_k_neg,
        vespo_lambda_neg=spec.vespo_lambda_neg,
        steps_per_generation=spg,
    )
    fake = types.SimpleNamespace(
        args=args,
        aux_loss_enabled=False,
        top_entropy_quantile=spec.top_entropy_quantile,
        off_policy_mask_threshold=spec.off_policy_mask_threshold,
        importance_sampling_level=spec.importance_sampling_level,
        beta=spec.beta,
        loss_type=spec.loss_type,
        epsilon_low=spec.epsilon_low,
        epsilon_high=spec.epsilon_high_effective,
        use_vllm=spec.sampler_is_correction,
        vllm_importance_sampling_correction=spec.sampler_is_correction,
        model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=gas,
        max_completion_length=spec.max_completion_length,
        accelerator=_Accelerator(),
        _entropy_bonus_enabled=spec.entropy_coef != 0.0,
        use_adaptive_entropy=False,
        entropy_coef=spec.entropy_coef,
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
        get_off_policy_mask=GRPOTrainer.get_off_policy_mask,
        get_gamma_weights=GRPOTrainer.get_gamma_weights,
    )
    fake.get_high_entropy_mask = types.MethodType(GRPOTrainer.get_high_entropy_mask, fake)
    fake._get_per_token_logps_and_entropies = lambda *a, **k: (logps, entropies, None)
    fake.accelerator.sync_gradients = True
    return fake


def _batch(seed: int):
    gen = torch.Generator().manual_seed(seed)
    rows, length = 6, 5
    mask = (torch.rand(rows, length, generator=gen) > 0.25).to(torch.float64)
    mask[:, 0] = 1.0
    logps = -3.0 * torch.rand(rows, length, generator=gen, dtype=torch.float64)
    old = logps + 0.3 * torch.randn(rows, length, generator=gen, dtype=torch.float64)
    ref = logps + 0.3 * torch.randn(rows, length, generator=gen, dtype=torch.float64)
    sampler = old + 0.2 * torch.randn(rows, length, generator=gen, dtype=torch.float64)
    # float32-representable: TRL takes the entropy quantile in float32, so a token sitting exactly on the
    # quantile must have the same value in both precisions for the comparison to be exact.
    entropies = torch.rand(rows, length, generator=gen, dtype=torch.float32).to(torch.float64)
    advantages = torch.randn(rows, generator=gen, dtype=torch.float64)
    return mask, logps, old, ref, sampler, entropies, advantages


OPTIONS = [
    {},
    {"importance_sampling_level": "sequence"},
    {"beta": 0.05},
    {"beta": 0.05, "use_bias_correction_kl": False},
    {"beta": 0.05, "importance_sampling_level": "sequence"},
    {"delta": 1.25},
    {"off_policy_mask_threshold": 0.02},
    {"top_entropy_quantile": 0.5},
    {"entropy_coef": 0.01},
    {"sampler_is_correction": True, "sampler_is_mode": "token_truncate", "sampler_is_clip_max": 1.2},
    {"sampler_is_correction": True, "sampler_is_mode": "sequence_mask", "sampler_is_clip_max": 1.5},
]


# every loss type with the first three option sets; every further option set with two loss types (rotating,
# so each loss type meets several options) — ~40 TRL calls keep the file fast.
_FURTHER = {  # option-set index -> loss types it is combined with
    3: ("grpo", "vespo"),  # beta without ratio weighting
    4: ("dapo", "sapo"),  # beta at sequence level
    5: ("dr_grpo", "luspo"),  # delta (clipped-surrogate types only)
    6: ("bnpo", "cispo"),  # off-policy mask
    7: ("grpo", "vespo"),  # entropy mask
    8: ("dapo", "sapo"),  # entropy bonus
    9: ("cispo", "luspo", "vespo"),  # token-level sampler IS
    10: ("bnpo", "dr_grpo", "vespo"),  # sequence-level sampler IS
}
COMBINATIONS = [(lt, opt) for lt in LOSS_TYPES for opt in OPTIONS[:3]] + [
    (lt, OPTIONS[index]) for index, types in _FURTHER.items() for lt in types
]


@pytest.mark.parametrize(
    ("loss_type", "options"),
    COMBINATIONS,
    ids=[f"{lt}-" + (",".join(f"{k}={v}" for k, v in o.items()) or "default") for lt, o in COMBINATIONS],
)
def test_loss_and_gradient_match_trl_compute_loss(loss_type, options):
    mask, logps, old, ref, sampler, entropies, advantages = _batch(
        LOSS_TYPES.index(loss_type) * 100 + OPTIONS.index(options)
    )
    epsilon_high = 4.0 if loss_type == "cispo" else 0.28
    spec = GRPOSpec(
        loss_type=loss_type, epsilon=0.2, epsilon_high=epsilon_high, max_completion_length=7, **options
    )
    gas, spg, num_items = 2, 4, 37
    from grpo_check.reference import sampler_is_ratio

    is_ratio = None
    if spec.sampler_is_correction:
        is_ratio = sampler_is_ratio(
            old, sampler, mask, spec.sampler_is_mode, spec.sampler_is_clip_min, spec.sampler_is_clip_max
        )

    trl_logps = logps.clone().requires_grad_(True)
    fake = _fake_trainer(spec, trl_logps, entropies, gas, spg)
    inputs = {
        "prompt_ids": torch.zeros(6, 1, dtype=torch.long),
        "prompt_mask": torch.ones(6, 1, dtype=torch.long),
        "completion_ids": torch.zeros(6, 5, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "sampling_per_token_logps": sampler,
        "num_items_in_batch": torch.tensor(float(num_items), dtype=torch.float64),
    }
    if is_ratio is not None:
        inputs["importance_sampling_ratio"] = is_ratio
    trl_loss = GRPOTrainer._compute_loss(fake, None, inputs)
    (trl_grad,) = torch.autograd.grad(trl_loss, trl_logps)

    kwargs = dict(ref_logps=ref, entropies=entropies, sampler_logps=sampler, sampler_is_ratio=is_ratio)
    agg = dict(gradient_accumulation_steps=gas, steps_per_generation=spg)

    def ours(current):
        token = per_token_loss(current, old, advantages, mask, spec, **kwargs)
        return aggregate_loss(
            token.per_token_loss,
            mask,
            spec,
            num_items,
            entropies=entropies,
            entropy_mask=token.entropy_mask,
            **agg,
        ).loss

    # TRL builds the SAPO temperatures with torch.where(..., python floats), i.e. in float32 (1.05 is not
    # exact there); the reference keeps float64, so sapo agrees to ~1e-7 relative instead of rounding level.
    rtol, atol = (1e-6, 1e-7) if loss_type == "sapo" else (1e-10, 1e-14)
    torch.testing.assert_close(ours(logps), trl_loss.detach(), rtol=rtol, atol=atol)
    grad = autograd_logps_grad(logps, ours)
    torch.testing.assert_close(grad, trl_grad, rtol=rtol, atol=atol)
    closed = closed_form_logps_grad(
        logps, old, advantages, mask, spec, num_items_in_batch=num_items, **kwargs, **agg
    )
    torch.testing.assert_close(closed, trl_grad, rtol=rtol, atol=atol)


def test_a_wrong_normaliser_is_detected_against_trl():
    """The cross-check is not vacuous: a GAS-forgetting dapo normaliser differs from TRL's."""
    mask, logps, old, _, _, _, advantages = _batch(3)
    spec = GRPOSpec(loss_type="dapo")
    fake = _fake_trainer(spec, logps, torch.zeros_like(logps), 2, 4)
    inputs = {
        "prompt_ids": torch.zeros(6, 1, dtype=torch.long),
        "prompt_mask": torch.ones(6, 1, dtype=torch.long),
        "completion_ids": torch.zeros(6, 5, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "num_items_in_batch": torch.tensor(37.0, dtype=torch.float64),
    }
    trl_loss = GRPOTrainer._compute_loss(fake, None, inputs)
    token = per_token_loss(logps, old, advantages, mask, spec).per_token_loss
    right = aggregate_loss(token, mask, spec, 37, gradient_accumulation_steps=2, steps_per_generation=4).loss
    wrong = aggregate_loss(token, mask, spec, 37, gradient_accumulation_steps=1, steps_per_generation=1).loss
    torch.testing.assert_close(right, trl_loss)
    assert not torch.allclose(wrong, trl_loss)


def test_static_helpers_match_trl():
    mask, logps, _, _, sampler, entropies, advantages = _batch(7)
    adv = advantages.unsqueeze(1)
    ours = off_policy_sequence_mask(adv, logps, sampler, mask, 0.05)
    theirs = GRPOTrainer.get_off_policy_mask(adv, logps, sampler, mask, 0.05)
    torch.testing.assert_close(ours, theirs.to(torch.float64))
    log_ratio = 0.1 * (logps - sampler)
    is_ratio = torch.rand_like(logps) + 0.5
    for weights in (None, is_ratio):
        torch.testing.assert_close(
            vespo_gamma_weights(adv, log_ratio, mask, weights),
            GRPOTrainer.get_gamma_weights(adv, log_ratio, mask, weights),
        )
    fake = _fake_trainer(GRPOSpec(), logps, entropies, 1, 1)
    for quantile in (0.2, 0.5, 0.9):
        ours_mask = high_entropy_mask(entropies, mask, quantile)
        theirs_mask = GRPOTrainer.get_high_entropy_mask(fake, entropies.float(), mask, 1 - quantile)
        assert torch.equal(ours_mask, theirs_mask)


def _trl_advantages(rewards_per_func, weights, num_generations, scale_rewards, multi):
    """TRL 1.16 `_generate_and_score_completions` advantage block, transcribed (contiguous groups)."""
    from trl.trainer.utils import nanstd

    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    if multi == "sum_then_normalize":
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        mean = torch.nanmean(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations)
        if scale_rewards in ("group", "none"):
            std = nanstd(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations)
        else:
            std = nanstd(rewards).expand_as(rewards)
        adv = rewards - mean
        if scale_rewards != "none":
            adv = adv / (std + 1e-4)
    else:
        grouped = rewards_per_func.view(-1, num_generations, rewards_per_func.shape[1])
        mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
        std_k = nanstd(grouped, dim=1, keepdim=True)
        reward_k = ((grouped - mean_k) / (std_k + 1e-4)).view(-1, rewards_per_func.shape[1])
        rewards = (reward_k * weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        adv = (rewards - torch.nanmean(rewards)) / (nanstd(rewards).expand_as(rewards) + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
@pytest.mark.parametrize("multi", ["sum_then_normalize", "normalize_then_sum"])
def test_advantages_match_trl(scale_rewards, multi):
    gen = torch.Generator().manual_seed(11)
    rewards = torch.randint(0, 3, (12, 2), generator=gen).to(torch.float64)
    rewards[1, 0] = float("nan")
    rewards[5] = float("nan")  # unscorable row
    rewards[8:12, 1] = 2.0  # an all-equal column in the last group
    weights = torch.tensor([1.0, 0.5], dtype=torch.float64)
    spec = GRPOSpec(num_generations=4, scale_rewards=scale_rewards, multi_objective_aggregation=multi)
    # shuffle rows: group membership must come from group_index, not position
    perm = torch.randperm(12, generator=gen)
    group_index = torch.arange(12) // 4
    ours = compute_advantages(rewards[perm], group_index[perm], spec, reward_weights=weights).advantages
    theirs = _trl_advantages(rewards, weights, 4, scale_rewards, multi)[perm]
    # TRL's nanstd computes the Bessel factor count/(count-1) from int64 counts, which gives a float32
    # tensor: its advantages carry ~1e-8 relative error even in float64. Hence rtol=1e-7, not 1e-12.
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-9)

"""Objectives and gradients: autograd == closed form for every loss type, accumulation/sharding invariance,
clipping and sign properties, and a hand-transcription of TRL 1.16's per-token formulas (O1–O6, N1–N6, G1–G7)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_check.config import AGGREGATIONS, LOSS_TYPES, GRPOSpec
from grpo_check.reference import (
    aggregate_loss,
    autograd_logps_grad,
    closed_form_logps_grad,
    per_token_loss,
)

FAST = settings(max_examples=15, deadline=None)


def _batch(seed, rows=4, length=5, shift=0.3):
    gen = torch.Generator().manual_seed(seed)
    logps = -3.0 * torch.rand(rows, length, generator=gen, dtype=torch.float64) - 0.01
    old = logps + shift * torch.randn(rows, length, generator=gen, dtype=torch.float64)
    ref = logps + 0.3 * torch.randn(rows, length, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, length + 1, (rows,), generator=gen)
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.float64)
    advantages = torch.randn(rows, generator=gen, dtype=torch.float64)
    return logps, old, ref, mask, advantages


def _loss(spec, logps, old, ref, mask, advantages, **agg):
    token = per_token_loss(logps, old, advantages, mask, spec, ref_logps=ref)
    return aggregate_loss(token.per_token_loss, mask, spec, **agg).loss


@FAST
@given(
    st.integers(0, 10_000),
    st.sampled_from(LOSS_TYPES),
    st.sampled_from(["token", "sequence"]),
    st.sampled_from([0.0, 0.05]),
    st.sampled_from(["k1", "k2", "k3"]),
    st.booleans(),
)
def test_autograd_equals_closed_form_for_every_loss_type(seed, loss_type, level, beta, estimator, bias):
    logps, old, ref, mask, advantages = _batch(seed)
    spec = GRPOSpec(
        loss_type=loss_type, importance_sampling_level=level, beta=beta, kl_estimator=estimator,
        use_bias_correction_kl=bias, epsilon_high=4.0 if loss_type == "cispo" else 0.28, max_completion_length=6,
    )  # fmt: skip
    agg = {"num_items_in_batch": 17, "gradient_accumulation_steps": 2}
    auto = autograd_logps_grad(logps, lambda x: _loss(spec, x, old, ref, mask, advantages, **agg))
    closed = closed_form_logps_grad(
        logps,
        old,
        advantages,
        mask,
        spec,
        ref_logps=ref,
        num_items_in_batch=17,
        gradient_accumulation_steps=2,
    )
    torch.testing.assert_close(closed, auto, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "luspo", "cispo", "vespo", "sapo"])
def test_micro_batch_accumulation_gives_the_full_batch_gradient(loss_type):
    """Split 6 rows into 3 micro-batches with the right normaliser: Σ micro-batch grads == full-batch grad."""
    logps, old, _ref, mask, advantages = _batch(5, rows=6)
    spec = GRPOSpec(
        loss_type=loss_type, max_completion_length=5, epsilon_high=4.0 if loss_type == "cispo" else 0.28
    )
    tokens = mask.sum().item()
    full = closed_form_logps_grad(logps, old, advantages, mask, spec, num_items_in_batch=tokens)
    parts = []
    for rows in (slice(0, 2), slice(2, 4), slice(4, 6)):
        parts.append(
            closed_form_logps_grad(
                logps[rows],
                old[rows],
                advantages[rows],
                mask[rows],
                spec,
                num_items_in_batch=tokens,
                gradient_accumulation_steps=3,
                steps_per_generation=3,
            )
        )
    torch.testing.assert_close(torch.cat(parts), full, rtol=1e-12, atol=1e-15)


def test_bnpo_local_normaliser_is_not_accumulation_invariant():
    """Firing: BNPO's local token count makes accumulated gradients depend on the split (TRL semantics)."""
    logps, old, _ref, mask, advantages = _batch(6, rows=4)
    mask[0, 1:] = 0.0  # unequal token counts between the two micro-batches
    spec = GRPOSpec(loss_type="bnpo")
    full = closed_form_logps_grad(logps, old, advantages, mask, spec)
    split = torch.cat(
        [
            closed_form_logps_grad(
                logps[r], old[r], advantages[r], mask[r], spec, gradient_accumulation_steps=2
            )
            for r in (slice(0, 2), slice(2, 4))
        ]
    )
    assert not torch.allclose(split, full)


def test_dapo_normaliser_with_processes_and_generation_steps():
    """N3: normaliser = N/P·K/S; 2 processes × 2 accumulation steps over one generation batch of 4 micro-batches."""
    logps, old, _ref, mask, advantages = _batch(8, rows=2)
    spec = GRPOSpec(loss_type="dapo")
    out = aggregate_loss(
        per_token_loss(logps, old, advantages, mask, spec).per_token_loss, mask, spec, 40,
        gradient_accumulation_steps=2, num_processes=2, steps_per_generation=2,
    )  # fmt: skip
    assert out.loss_normalizer.item() == pytest.approx(40 / 2 * 2 / 2)


@FAST
@given(st.integers(0, 10_000))
def test_gradient_is_zero_where_the_clip_binds_and_sign_opposes_advantage_elsewhere(seed):
    logps, old, _ref, mask, advantages = _batch(seed, shift=0.6)
    spec = GRPOSpec(loss_type="dapo", epsilon=0.2, epsilon_high=0.28)
    token = per_token_loss(logps, old, advantages, mask, spec)
    grad = closed_form_logps_grad(logps, old, advantages, mask, spec)
    binds = (token.is_low_clipped | token.is_high_clipped) & mask.bool()
    assert torch.all(grad[binds] == 0)
    free = mask.bool() & ~binds & (advantages.unsqueeze(1) != 0)
    assert torch.all(torch.sign(grad[free]) == -torch.sign(advantages.unsqueeze(1).expand_as(grad)[free]))


def test_per_token_weights_of_each_aggregation():
    """Bug-catalog #5: ∂L/∂ℓ_it is 1/(B·|o_i|) (grpo), 1/Σ|o| (dapo/bnpo), 1/(B·L_max) (dr_grpo), 1/B (luspo)."""
    logps = torch.full((2, 4), -1.0, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float64)
    advantages = torch.tensor([-1.0, -1.0], dtype=torch.float64)  # on-policy: ∂ℓ/∂logp = −A = 1
    expected = {
        "grpo": [[1 / 8] * 4, [1 / 2, 0, 0, 0]],
        "bnpo": [[1 / 5] * 4, [1 / 5, 0, 0, 0]],
        "dr_grpo": [[1 / 16] * 4, [1 / 16, 0, 0, 0]],
        "luspo": [[1 / 2] * 4, [1 / 2, 0, 0, 0]],
    }
    for loss_type, weights in expected.items():
        spec = GRPOSpec(loss_type=loss_type, max_completion_length=8)
        grad = closed_form_logps_grad(logps, None, advantages, mask, spec)
        torch.testing.assert_close(grad, torch.tensor(weights, dtype=torch.float64))
    assert set(AGGREGATIONS) == {GRPOSpec(loss_type=lt).aggregation_effective for lt in LOSS_TYPES}


def _trl_style_per_token_loss(
    loss_type, logps, old, advantages, eps_low, eps_high, tau_pos=1.0, tau_neg=1.05
):
    """The per-token formulas of TRL 1.16 `_compute_loss`, written out by hand (token level, no KL)."""
    rows, length = logps.shape
    out = [[0.0] * length for _ in range(rows)]
    for i in range(rows):
        a = advantages[i].item()
        for t in range(length):
            ratio = math.exp(logps[i, t].item() - old[i, t].item())
            if loss_type == "cispo":
                out[i][t] = -min(ratio, eps_high) * a * logps[i, t].item()
            elif loss_type == "sapo":
                tau = tau_pos if a > 0 else tau_neg
                out[i][t] = -(1 / (1 + math.exp(-tau * (ratio - 1)))) * 4 / tau * a
            else:
                out[i][t] = -min(ratio * a, min(max(ratio, 1 - eps_low), 1 + eps_high) * a)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo"])
def test_hand_written_trl_formula_matches(loss_type):
    logps, old, _ref, mask, advantages = _batch(9)
    eps_high = 4.0 if loss_type == "cispo" else 0.28
    spec = GRPOSpec(loss_type=loss_type, epsilon=0.2, epsilon_high=eps_high, max_completion_length=5)
    ours = per_token_loss(logps, old, advantages, mask, spec).per_token_loss
    theirs = _trl_style_per_token_loss(loss_type, logps, old, advantages, 0.2, eps_high)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    rows = mask.sum(-1).clamp(min=1)
    manual = {
        "grpo": ((theirs * mask).sum(-1) / rows).mean(),
        "sapo": ((theirs * mask).sum(-1) / rows).mean(),
        "bnpo": (theirs * mask).sum() / mask.sum(),
        "dr_grpo": (theirs * mask).sum() / (mask.shape[0] * 5),
        "dapo": (theirs * mask).sum() / mask.sum(),
        "cispo": (theirs * mask).sum() / mask.sum(),
        "luspo": (theirs * mask).sum(-1).mean(),
    }[loss_type]
    got = aggregate_loss(ours, mask, spec, mask.sum()).loss
    torch.testing.assert_close(got, manual)

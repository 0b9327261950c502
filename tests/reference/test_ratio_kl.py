"""Ratios and KL estimators: on-policy identities, non-negativity, closed-form gradients (P1–P8, K1–K4, G6–G7)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_check.reference import (
    autograd_logps_grad,
    clip_masks,
    importance_log_ratio,
    kl_estimator_grad,
    kl_k1,
    kl_k2,
    kl_k3,
    per_token_kl,
)

FAST = settings(max_examples=25, deadline=None)
logp_values = st.lists(st.floats(-30, -1e-6, allow_nan=False), min_size=1, max_size=12)


@FAST
@given(logp_values, st.sampled_from(["token", "sequence"]))
def test_ratio_is_exactly_one_on_policy(values, level):
    logps = torch.tensor([values], dtype=torch.float64)
    log_ratio = importance_log_ratio(logps, logps.clone(), torch.ones_like(logps), level)
    assert torch.equal(log_ratio.exp(), torch.ones_like(log_ratio))


@FAST
@given(logp_values, logp_values)
def test_k2_k3_are_non_negative_and_zero_only_at_equality(a, b):
    n = min(len(a), len(b))
    logps, ref = torch.tensor(a[:n], dtype=torch.float64), torch.tensor(b[:n], dtype=torch.float64)
    assert (kl_k2(logps, ref) >= 0).all() and (kl_k3(logps, ref) >= 0).all()
    assert torch.equal(kl_k3(logps, logps), torch.zeros_like(logps))


def test_k3_is_accurate_for_tiny_gaps():
    """expm1 form: for a gap x=1e-9, k3 ≈ x²/2 = 5e-19; the naive e^x − x − 1 returns 0 or garbage."""
    logps = torch.tensor([-1.0], dtype=torch.float64)
    ref = logps + 1e-9
    assert abs(kl_k3(logps, ref).item() - 0.5e-18) < 1e-24
    naive = torch.exp(ref - logps) - (ref - logps) - 1
    assert abs(naive.item() - 0.5e-18) > 1e-20  # the naive form is visibly wrong here (why expm1 is used)


@FAST
@given(logp_values, logp_values)
def test_kl_gradients_match_closed_forms(a, b):
    n = min(len(a), len(b))
    logps, ref = torch.tensor([a[:n]], dtype=torch.float64), torch.tensor([b[:n]], dtype=torch.float64)
    logps = logps.clamp(min=ref - 20)  # keep e^(ref−logp) finite and well-scaled
    for estimator, function in (("k1", kl_k1), ("k2", kl_k2), ("k3", kl_k3)):
        grad = autograd_logps_grad(logps, lambda x, f=function: f(x, ref).sum())
        torch.testing.assert_close(grad, kl_estimator_grad(logps, ref, estimator), rtol=1e-9, atol=1e-12)


def test_ratio_weighted_k3_gradient_is_log_ratio_on_policy():
    logps = torch.tensor([[-1.0, -2.0, -0.3]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0, -0.3]], dtype=torch.float64)

    def loss(x):
        ratio = (x - x.detach()).exp()  # = 1 in value, carries the gradient
        return per_token_kl(x, ref, "k3", ratio).sum()

    torch.testing.assert_close(autograd_logps_grad(logps, loss), logps - ref)
    # and plain k3 does not: its gradient is 1 − π_ref/π (firing)
    plain = autograd_logps_grad(logps, lambda x: per_token_kl(x, ref, "k3").sum())
    assert not torch.allclose(plain, logps - ref)


def test_clip_masks_follow_trl_definition():
    ratio = torch.tensor([[0.5, 0.5, 1.5, 1.5, 1.0]], dtype=torch.float64)
    advantages = torch.tensor([[-1.0, 1.0, 1.0, -1.0, 1.0]], dtype=torch.float64)
    low, high = clip_masks(ratio, advantages, 0.2, 0.28)
    assert low.tolist() == [[True, False, False, False, False]]
    assert high.tolist() == [[False, False, True, False, False]]

"""The ``assert_*`` form of every invariant: raise :class:`~grpo_check.findings.GRPOCheckError` on FAIL.

One function per registered check, named ``assert_<stage>_<name>``, plus ``assert_<name>`` where that name
is unique across stages. Each takes an optional positional :class:`~grpo_check.trace.model.TraceStep` and
keyword inputs (tensors by canonical name, ``completion_text``, ``meta=`` or single meta keys), ``spec=``,
``tolerance=`` and ``strict=`` (also raise on WARN); it returns the finding when the check passes. A test
(``tests/invariants/test_invariants_asserts.py``) keeps this module in step with the registry.

    >>> import torch
    >>> from grpo_check.invariants.asserts import assert_group_sum_zero
    >>> assert_group_sum_zero(advantages=torch.tensor([1.0, -1.0]), group_index=torch.tensor([0, 0])).verdict.value
    'pass'
"""

from __future__ import annotations

from typing import Any

from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding
from grpo_check.trace.model import TraceStep


def _check(
    check_id: str,
    step: TraceStep | None,
    spec: GRPOSpec | None,
    tolerance: float | None,
    strict: bool,
    inputs: Any,
) -> Finding:
    __tracebackhide__ = True
    from grpo_check.invariants import check_step

    return check_step(check_id, step, spec=spec, tolerance=tolerance, strict=strict, **inputs)


def assert_batch_masks_binary(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``batch.masks_binary``: completion_mask, prompt_mask and tool_mask hold only 0 and 1.

    Inputs: completion_mask or prompt_mask or tool_mask. Tolerance: exact.
    """
    __tracebackhide__ = True
    return _check("batch.masks_binary", step, spec, tolerance, strict, inputs)


def assert_batch_mask_prefix(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``batch.mask_prefix``: each completion_mask row is a prefix: ones, then zeros (no hole, no restart).

    Inputs: completion_mask. Tolerance: exact.
    """
    __tracebackhide__ = True
    return _check("batch.mask_prefix", step, spec, tolerance, strict, inputs)


def assert_batch_mask_prefix_eos(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``batch.mask_prefix_eos``: completion_mask covers exactly the tokens up to and including the first
        EOS (or max length).

    Inputs: completion_ids, completion_mask, meta.eos_token_ids. Tolerance: exact.
    """
    __tracebackhide__ = True
    return _check("batch.mask_prefix_eos", step, spec, tolerance, strict, inputs)


def assert_batch_group_sizes(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``batch.group_sizes``: every group_index group has exactly G rows (partial groups: a warning).

    Inputs: group_index. Tolerance: exact.
    """
    __tracebackhide__ = True
    return _check("batch.group_sizes", step, spec, tolerance, strict, inputs)


def assert_batch_text_nonempty(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``batch.text_nonempty``: decoded completion text is non-empty wherever the tokenizer's decode of the
        completion is (without that decode: wherever the completion has tokens other than EOS and pad).

    Inputs: completion_mask, completion_text. Tolerance: exact.
    """
    __tracebackhide__ = True
    return _check("batch.text_nonempty", step, spec, tolerance, strict, inputs)


def assert_batch_text_faithful(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``batch.text_faithful``: the completion text the rewards scored equals the tokenizer's decode of the
        completion tokens.

    Inputs: completion_text, meta.decoded_completion_text. Tolerance: exact (up to surrounding whitespace).
    """
    __tracebackhide__ = True
    return _check("batch.text_faithful", step, spec, tolerance, strict, inputs)


def assert_rewards_finite(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``rewards.finite``: rewards are finite; NaN only marks an unscorable row (every reward function
        returned None).

    Inputs: rewards_per_func or rewards or reward_weights. Tolerance: exact.
    """
    __tracebackhide__ = True
    return _check("rewards.finite", step, spec, tolerance, strict, inputs)


def assert_rewards_total_is_weighted_sum(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``rewards.total_is_weighted_sum``: total reward = nansum(rewards_per_func × reward_weights) on
        scorable rows.

    Inputs: rewards, rewards_per_func. Tolerance: rtol/atol of the rewards dtype (torch.testing defaults),
        scaled by Σ|w·r|.
    """
    __tracebackhide__ = True
    return _check("rewards.total_is_weighted_sum", step, spec, tolerance, strict, inputs)


def assert_advantages_finite(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``advantages.finite``: every advantage is finite.

    Inputs: advantages. Tolerance: exact.
    """
    __tracebackhide__ = True
    return _check("advantages.finite", step, spec, tolerance, strict, inputs)


def assert_advantages_group_sum_zero(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``advantages.group_sum_zero``: advantages of each prompt group sum to ≈ 0.

    Inputs: advantages, group_index. Tolerance: atol + rtol·Σ|A| of the group, rtol/atol of the advantages dtype
        (torch.testing defaults).
    """
    __tracebackhide__ = True
    return _check("advantages.group_sum_zero", step, spec, tolerance, strict, inputs)


def assert_advantages_bounded(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``advantages.bounded``: |A| ≤ (G−1)/√G (sample std) or √(G−1) (population std), ignoring epsilon.

    Inputs: advantages, group_index. Tolerance: bound·(1 + rtol) + atol of the advantages dtype.
    """
    __tracebackhide__ = True
    return _check("advantages.bounded", step, spec, tolerance, strict, inputs)


def assert_advantages_epsilon_negligible(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``advantages.epsilon_negligible``: where a group's rewards vary, advantages keep ≥ 50% of (r −
        mean)/std: epsilon only stabilises, it never dominates the std.

    Inputs: advantages, group_index, rewards or advantages, group_index, rewards_per_func. Tolerance: retention
        σ/(σ+ε) ≥ 0.5 for groups with σ > 10·min(ε, 1e-3).
    """
    __tracebackhide__ = True
    return _check("advantages.epsilon_negligible", step, spec, tolerance, strict, inputs)


def assert_advantages_constant_group_zero(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``advantages.constant_group_zero``: a group whose rewards are all equal (or with < 2 scorable rows)
        gets A = 0.

    Inputs: advantages, group_index, rewards or advantages, group_index, rewards_per_func. Tolerance: atol of
        the advantages dtype + min(1e-2, G·eps(rewards)·max|r|/ε) for the mean's rounding.
    """
    __tracebackhide__ = True
    return _check("advantages.constant_group_zero", step, spec, tolerance, strict, inputs)


def assert_advantages_unscorable_zero(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``advantages.unscorable_zero``: unscorable rows (all rewards NaN) carry A = 0 and do not leak into
        their group: the other rows stay finite and sum to 0.

    Inputs: advantages, rewards_per_func or advantages, rewards. Tolerance: exact 0 on unscorable rows; group
        sums as advantages.group_sum_zero.
    """
    __tracebackhide__ = True
    return _check("advantages.unscorable_zero", step, spec, tolerance, strict, inputs)


def assert_advantages_sign_follows_rewards(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``advantages.sign_follows_rewards``: within a group, A > 0 exactly for rewards above the group mean
        and A < 0 below it.

    Inputs: advantages, group_index, rewards or advantages, group_index, rewards_per_func. Tolerance: rows with
        |r − mean| ≤ rtol·max|r| or |A| ≤ atol (dtype defaults) are not judged.
    """
    __tracebackhide__ = True
    return _check("advantages.sign_follows_rewards", step, spec, tolerance, strict, inputs)


def assert_logps_finite(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``logps.finite``: logps, old_logps, ref_logps, sampler_logps and entropies are finite on completion
        tokens.

    Inputs: logps or old_logps or ref_logps or sampler_logps or entropies. Tolerance: exact.
    """
    __tracebackhide__ = True
    return _check("logps.finite", step, spec, tolerance, strict, inputs)


def assert_logps_nonpositive(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``logps.nonpositive``: every log-prob is ≤ 0 on completion tokens (log of a probability).

    Inputs: logps or old_logps or ref_logps or sampler_logps. Tolerance: 64·eps of the dtype (0 for 16-bit); >
        0.5 or > 25% of tokens positive is a sign error.
    """
    __tracebackhide__ = True
    return _check("logps.nonpositive", step, spec, tolerance, strict, inputs)


def assert_logps_bf16_quantised(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``logps.bf16_quantised``: log-probs are not quantised to the bf16/fp16 grid (more than half the
        tokens exactly on it).

    Inputs: logps or old_logps or ref_logps or sampler_logps. Tolerance: fraction on the bf16 grid ≤ 0.5
        (genuine float32 values land there ~1/65536 of the time).
    """
    __tracebackhide__ = True
    return _check("logps.bf16_quantised", step, spec, tolerance, strict, inputs)


def assert_logps_entropies_nonnegative(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``logps.entropies_nonnegative``: per-token entropies are ≥ 0 on completion tokens.

    Inputs: entropies. Tolerance: 64·eps of the dtype × max(1, max H).
    """
    __tracebackhide__ = True
    return _check("logps.entropies_nonnegative", step, spec, tolerance, strict, inputs)


def assert_ratio_finite(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``ratio.finite``: ratio, clipped_ratio and sampler_is_ratio are finite on completion tokens.

    Inputs: ratio or clipped_ratio or sampler_is_ratio. Tolerance: exact.
    """
    __tracebackhide__ = True
    return _check("ratio.finite", step, spec, tolerance, strict, inputs)


def assert_ratio_one_on_policy(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``ratio.one_on_policy``: ρ ≡ 1 (logps = old_logps) when no optimizer step happened since old log-
        probs were taken.

    Inputs: logps, old_logps or ratio. Tolerance: rtol·max(1, max|logp|) + atol of the logps dtype
        (torch.testing defaults); up to |log ρ| = 0.05 a warning (low-precision noise).
    """
    __tracebackhide__ = True
    return _check("ratio.one_on_policy", step, spec, tolerance, strict, inputs)


def assert_ratio_moves_off_policy(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``ratio.moves_off_policy``: after an optimizer step, logps differ from old_logps somewhere (otherwise
        clipping is inert).

    Inputs: logps, old_logps, meta.optimizer_steps_since_old_logps. Tolerance: exact equality on every token is
        flagged.
    """
    __tracebackhide__ = True
    return _check("ratio.moves_off_policy", step, spec, tolerance, strict, inputs)


def assert_ratio_matches_logps(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``ratio.matches_logps``: ratio = exp(logps − old_logps) per token (exp of the masked mean for
        sequence-level GSPO).

    Inputs: ratio, logps, old_logps. Tolerance: (rtol of ratio + rtol of logps·max|logp|)·ρ + atol
        (torch.testing defaults per dtype).
    """
    __tracebackhide__ = True
    return _check("ratio.matches_logps", step, spec, tolerance, strict, inputs)


def assert_ratio_clip_masks_consistent(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``ratio.clip_masks_consistent``: is_low_clipped = (ρ < 1−ε_low) ∧ (A < 0) and is_high_clipped = (ρ >
        1+ε_high) ∧ (A > 0).

    Inputs: is_low_clipped, advantages, ratio or is_high_clipped, advantages, ratio or is_low_clipped,
        advantages, logps, old_logps or is_high_clipped, advantages, logps, old_logps. Tolerance: tokens within
        rtol of a clip boundary are skipped.
    """
    __tracebackhide__ = True
    return _check("ratio.clip_masks_consistent", step, spec, tolerance, strict, inputs)


def assert_ratio_clip_metrics_in_unit_interval(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``ratio.clip_metrics_in_unit_interval``: logged clip-fraction metrics (meta keys or meta['metrics']
        with clip_ratio / clip_frac) are in [0, 1].

    Inputs: (step meta). Tolerance: exact.
    """
    __tracebackhide__ = True
    return _check("ratio.clip_metrics_in_unit_interval", step, spec, tolerance, strict, inputs)


def assert_kl_finite(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``kl.finite``: per-token KL is finite on completion tokens.

    Inputs: kl. Tolerance: exact.
    """
    __tracebackhide__ = True
    return _check("kl.finite", step, spec, tolerance, strict, inputs)


def assert_kl_nonnegative(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``kl.nonnegative``: k2 and k3 (and ρ·k3) per-token KL estimates are ≥ 0 (k1 may be negative).

    Inputs: kl. Tolerance: rtol of the kl dtype × max(1, max|kl|).
    """
    __tracebackhide__ = True
    return _check("kl.nonnegative", step, spec, tolerance, strict, inputs)


def assert_kl_zero_at_step0(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``kl.zero_at_step0``: at step 0 (no optimizer step yet) the policy equals the reference: logps =
        ref_logps, KL = 0.

    Inputs: logps, ref_logps, meta.step or kl, meta.step. Tolerance: rtol·max(1, max|logp|) + atol of the logps
        dtype (torch.testing defaults).
    """
    __tracebackhide__ = True
    return _check("kl.zero_at_step0", step, spec, tolerance, strict, inputs)


def assert_kl_reference_frozen(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``kl.reference_frozen``: after optimizer steps (step ≥ 1) the policy has moved away from the
        reference somewhere (logps ≠ ref_logps, KL ≠ 0).

    Inputs: logps, ref_logps, meta.step or kl, meta.step. Tolerance: flagged when every token is within the on-
        policy tolerance (rtol·max(1, max|logp|) + atol).
    """
    __tracebackhide__ = True
    return _check("kl.reference_frozen", step, spec, tolerance, strict, inputs)


def assert_loss_finite(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``loss.finite``: per_token_loss (on completion tokens), loss and loss_normalizer are finite.

    Inputs: per_token_loss or loss or loss_normalizer. Tolerance: exact.
    """
    __tracebackhide__ = True
    return _check("loss.finite", step, spec, tolerance, strict, inputs)


def assert_loss_normalizer_positive(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``loss.normalizer_positive``: the loss normaliser (denominator) is > 0.

    Inputs: loss_normalizer. Tolerance: exact.
    """
    __tracebackhide__ = True
    return _check("loss.normalizer_positive", step, spec, tolerance, strict, inputs)


def assert_grad_finite(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``grad.finite``: ∂loss/∂logps is finite on completion tokens.

    Inputs: logps_grad. Tolerance: exact.
    """
    __tracebackhide__ = True
    return _check("grad.finite", step, spec, tolerance, strict, inputs)


def assert_grad_zero_outside_loss_mask(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``grad.zero_outside_loss_mask``: ∂loss/∂logp_t = 0 wherever the loss mask (completion_mask ∧
        tool_mask ∧ ¬truncated) is 0.

    Inputs: logps_grad, completion_mask. Tolerance: exact 0.
    """
    __tracebackhide__ = True
    return _check("grad.zero_outside_loss_mask", step, spec, tolerance, strict, inputs)


def assert_grad_sign_matches_advantage(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``grad.sign_matches_advantage``: on unclipped tokens, sign(∂L/∂logp_t) = −sign(A) (the update raises
        log-probs of A > 0).

    Inputs: logps_grad, advantages. Tolerance: exact sign; tokens within 1e-4 of a clip boundary, or where
        β·|∂KL| could rival |A|·ρ, skipped.
    """
    __tracebackhide__ = True
    return _check("grad.sign_matches_advantage", step, spec, tolerance, strict, inputs)


def assert_grad_zero_where_clipped(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``grad.zero_where_clipped``: ∂L/∂logp_t = 0 exactly where clipping is active ((A>0 ∧ ρ>1+ε_high) ∨
        (A<0 ∧ ρ<1−ε_low)).

    Inputs: logps_grad, advantages, ratio or logps_grad, advantages, logps, old_logps or logps_grad, advantages,
        is_low_clipped or logps_grad, advantages, is_high_clipped. Tolerance: exact 0; tokens within 1e-4 of a
        clip boundary skipped.
    """
    __tracebackhide__ = True
    return _check("grad.zero_where_clipped", step, spec, tolerance, strict, inputs)


def assert_grad_kl_sign_where_kl_dominates(
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Assert ``grad.kl_sign_where_kl_dominates``: where the policy term is zero (A = 0, or clipped) or far smaller
        than β·∂KL, ∂L/∂logp_t has the sign of ∂KL_t/∂logp_t: the penalty pulls the policy towards the
        reference.

    Inputs: logps_grad, advantages, logps, ref_logps. Tolerance: exact sign; tokens with |∂KL/∂logp| ≤ 1e-6, or
        where the policy term is within 2× of β·|∂KL|, not judged.
    """
    __tracebackhide__ = True
    return _check("grad.kl_sign_where_kl_dominates", step, spec, tolerance, strict, inputs)


# the short names, where unique across stages
assert_masks_binary = assert_batch_masks_binary
assert_mask_prefix = assert_batch_mask_prefix
assert_mask_prefix_eos = assert_batch_mask_prefix_eos
assert_group_sizes = assert_batch_group_sizes
assert_text_nonempty = assert_batch_text_nonempty
assert_text_faithful = assert_batch_text_faithful
assert_total_is_weighted_sum = assert_rewards_total_is_weighted_sum
assert_group_sum_zero = assert_advantages_group_sum_zero
assert_bounded = assert_advantages_bounded
assert_epsilon_negligible = assert_advantages_epsilon_negligible
assert_constant_group_zero = assert_advantages_constant_group_zero
assert_unscorable_zero = assert_advantages_unscorable_zero
assert_sign_follows_rewards = assert_advantages_sign_follows_rewards
assert_nonpositive = assert_logps_nonpositive
assert_bf16_quantised = assert_logps_bf16_quantised
assert_entropies_nonnegative = assert_logps_entropies_nonnegative
assert_one_on_policy = assert_ratio_one_on_policy
assert_moves_off_policy = assert_ratio_moves_off_policy
assert_matches_logps = assert_ratio_matches_logps
assert_clip_masks_consistent = assert_ratio_clip_masks_consistent
assert_clip_metrics_in_unit_interval = assert_ratio_clip_metrics_in_unit_interval
assert_nonnegative = assert_kl_nonnegative
assert_zero_at_step0 = assert_kl_zero_at_step0
assert_reference_frozen = assert_kl_reference_frozen
assert_normalizer_positive = assert_loss_normalizer_positive
assert_zero_outside_loss_mask = assert_grad_zero_outside_loss_mask
assert_sign_matches_advantage = assert_grad_sign_matches_advantage
assert_zero_where_clipped = assert_grad_zero_where_clipped
assert_kl_sign_where_kl_dominates = assert_grad_kl_sign_where_kl_dominates

__all__ = [
    "assert_advantages_bounded",
    "assert_advantages_constant_group_zero",
    "assert_advantages_epsilon_negligible",
    "assert_advantages_finite",
    "assert_advantages_group_sum_zero",
    "assert_advantages_sign_follows_rewards",
    "assert_advantages_unscorable_zero",
    "assert_batch_group_sizes",
    "assert_batch_mask_prefix",
    "assert_batch_mask_prefix_eos",
    "assert_batch_masks_binary",
    "assert_batch_text_faithful",
    "assert_batch_text_nonempty",
    "assert_bf16_quantised",
    "assert_bounded",
    "assert_clip_masks_consistent",
    "assert_clip_metrics_in_unit_interval",
    "assert_constant_group_zero",
    "assert_entropies_nonnegative",
    "assert_epsilon_negligible",
    "assert_grad_finite",
    "assert_grad_kl_sign_where_kl_dominates",
    "assert_grad_sign_matches_advantage",
    "assert_grad_zero_outside_loss_mask",
    "assert_grad_zero_where_clipped",
    "assert_group_sizes",
    "assert_group_sum_zero",
    "assert_kl_finite",
    "assert_kl_nonnegative",
    "assert_kl_reference_frozen",
    "assert_kl_sign_where_kl_dominates",
    "assert_kl_zero_at_step0",
    "assert_logps_bf16_quantised",
    "assert_logps_entropies_nonnegative",
    "assert_logps_finite",
    "assert_logps_nonpositive",
    "assert_loss_finite",
    "assert_loss_normalizer_positive",
    "assert_mask_prefix",
    "assert_mask_prefix_eos",
    "assert_masks_binary",
    "assert_matches_logps",
    "assert_moves_off_policy",
    "assert_nonnegative",
    "assert_nonpositive",
    "assert_normalizer_positive",
    "assert_one_on_policy",
    "assert_ratio_clip_masks_consistent",
    "assert_ratio_clip_metrics_in_unit_interval",
    "assert_ratio_finite",
    "assert_ratio_matches_logps",
    "assert_ratio_moves_off_policy",
    "assert_ratio_one_on_policy",
    "assert_reference_frozen",
    "assert_rewards_finite",
    "assert_rewards_total_is_weighted_sum",
    "assert_sign_follows_rewards",
    "assert_sign_matches_advantage",
    "assert_text_faithful",
    "assert_text_nonempty",
    "assert_total_is_weighted_sum",
    "assert_unscorable_zero",
    "assert_zero_at_step0",
    "assert_zero_outside_loss_mask",
    "assert_zero_where_clipped",
]

"""assert_matches_reference catches buggy user functions (with the smallest batch) and passes correct ones."""

from __future__ import annotations

import pytest
import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import GRPOCheckError, InputError
from grpo_check.testing import assert_matches_reference

EXAMPLES = 25


# ---------------------------------------------------------------- advantages


def advantages(rewards, num_generations, eps=1e-4, std="sample"):
    grouped = rewards.view(-1, num_generations)
    finite = ~torch.isnan(grouped)
    count = finite.sum(1, keepdim=True)
    # shifted mean (c + Σ(r − c)/n, c the group minimum): an all-equal group gets advantage exactly 0, as the
    # reference's, instead of a float residue that σ + ε blows up (bug-catalog 9)
    shift = torch.where(finite, grouped, torch.inf).amin(1, keepdim=True)
    shift = torch.where(torch.isinf(shift), 0.0, shift)
    mean = shift + torch.where(finite, grouped - shift, 0.0).sum(1, keepdim=True) / count.clamp(min=1)
    ss = torch.where(finite, (grouped - mean) ** 2, 0.0).sum(1, keepdim=True)
    dof = (count - 1) if std == "sample" else count
    adv = (grouped - mean) / ((ss / dof.clamp(min=1)).sqrt() + eps)
    adv = torch.where(count > 1, adv, 0.0)
    return torch.nan_to_num(adv, nan=0.0).view(-1)


def advantages_by_group_index(rewards, group_index):
    out = torch.zeros_like(rewards)
    for label in group_index.unique():
        rows = group_index == label
        out[rows] = advantages(rewards[rows], int(rows.sum()))
    return out


def advantages_eps_1e4(rewards, num_generations):
    return advantages(rewards, num_generations, eps=1e4)


def advantages_population(rewards, num_generations):
    return advantages(rewards, num_generations, std="population")


def advantages_repeat(rewards, num_generations):
    # the classic bug: groups taken as view(G, -1), i.e. rows i, i+P, i+2P, ... (repeat instead of repeat_interleave)
    prompts = rewards.numel() // num_generations
    strided = rewards.view(num_generations, prompts).T.reshape(-1)
    return advantages(strided, num_generations).view(prompts, num_generations).T.reshape(-1)


def test_correct_advantages_pass() -> None:
    assert_matches_reference(advantages, "advantages", GRPOSpec(), max_examples=EXAMPLES)
    assert_matches_reference(advantages_by_group_index, "advantages", GRPOSpec(), max_examples=EXAMPLES)


def test_wrong_epsilon_is_caught_with_the_smallest_batch() -> None:
    with pytest.raises(GRPOCheckError) as info:
        assert_matches_reference(advantages_eps_1e4, "advantages", GRPOSpec(), max_examples=EXAMPLES)
    message = str(info.value)
    assert "stage 'advantages'" in message
    assert "smallest failing batch" in message
    # shrunk to one prompt of two generations with rewards that differ
    assert "B=2 rows = 1 prompt(s) x G=2" in message
    assert "advantage epsilon far too large" in info.value.finding.likely_cause
    assert info.value.finding.catalog_id == "S2"


def test_repeat_instead_of_repeat_interleave_is_caught() -> None:
    with pytest.raises(GRPOCheckError) as info:
        assert_matches_reference(advantages_repeat, "advantages", GRPOSpec(), max_examples=EXAMPLES)
    assert "2 prompt(s)" in str(info.value)  # a grouping bug needs (and shrinks to) two prompts
    assert "repeat_interleave" in info.value.finding.likely_cause


def test_another_std_convention_is_a_convention_not_a_failure() -> None:
    """As in ``grpo-check compare``: population std where the config says sample differs from the reference by
    the per-group factor √((G−1)/G), a convention difference (bug-catalog 10), not a bug."""
    for std in ("sample", "population"):
        assert_matches_reference(
            advantages_population, "advantages", GRPOSpec(std=std), max_examples=EXAMPLES
        )


# ---------------------------------------------------------------- logps


def logps(logits, input_ids, logits_to_keep, temperature):
    logits = logits[:, :-1, :][:, -logits_to_keep:] / temperature
    ids = input_ids[:, -logits_to_keep:]
    return torch.log_softmax(logits.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def logps_off_by_one(logits, input_ids, logits_to_keep, temperature):
    logits = logits[:, -logits_to_keep:] / temperature  # forgot to drop the last logit
    ids = input_ids[:, -logits_to_keep:]
    return torch.log_softmax(logits.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def test_logps_shift() -> None:
    spec = GRPOSpec(temperature=0.7)
    assert_matches_reference(logps, "logps", spec, max_examples=EXAMPLES)
    with pytest.raises(GRPOCheckError) as info:
        assert_matches_reference(logps_off_by_one, "logps", spec, max_examples=EXAMPLES)
    assert "off-by-one shift" in info.value.finding.likely_cause
    assert "stage 'logps'" in str(info.value)


# ---------------------------------------------------------------- loss and aggregation


def seq_mean_token_mean(per_token_loss, completion_mask):
    return ((per_token_loss * completion_mask).sum(-1) / completion_mask.sum(-1).clamp(min=1)).mean()


def token_mean(per_token_loss, completion_mask):
    return (per_token_loss * completion_mask).sum() / completion_mask.sum().clamp(min=1)


def test_wrong_aggregation_is_caught() -> None:
    assert_matches_reference(
        seq_mean_token_mean, "aggregation", GRPOSpec(loss_type="grpo"), max_examples=EXAMPLES
    )
    assert_matches_reference(token_mean, "aggregation", GRPOSpec(loss_type="bnpo"), max_examples=EXAMPLES)
    with pytest.raises(GRPOCheckError) as info:
        assert_matches_reference(token_mean, "aggregation", GRPOSpec(loss_type="grpo"), max_examples=EXAMPLES)
    assert "'token_mean' where loss_type='grpo' uses 'seq_mean_token_mean'" in info.value.finding.likely_cause


def grpo_loss(logps, old_logps, advantages, completion_mask, spec):
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - spec.epsilon_low, 1 + spec.epsilon_high_effective)
    adv = advantages.unsqueeze(1)
    return seq_mean_token_mean(-torch.min(ratio * adv, clipped * adv), completion_mask)


def grpo_loss_detached(logps, old_logps, advantages, completion_mask, spec):
    return grpo_loss(logps.detach(), old_logps, advantages, completion_mask, spec)


def test_loss_value_and_gradient() -> None:
    spec = GRPOSpec(loss_type="grpo", epsilon_high=0.28)
    assert_matches_reference(grpo_loss, "loss", spec, max_examples=EXAMPLES)
    # same value, no gradient: only the gradient comparison can see it
    with pytest.raises(GRPOCheckError) as info:
        assert_matches_reference(grpo_loss_detached, "loss", spec, max_examples=EXAMPLES)
    assert info.value.finding.stage == "grad"
    assert "detached" in info.value.finding.likely_cause


# ---------------------------------------------------------------- ratio and kl


def test_ratio_and_kl() -> None:
    assert_matches_reference(
        lambda logps, old_logps: torch.exp(logps - old_logps), "ratio", max_examples=EXAMPLES
    )
    k3 = lambda logps, ref_logps: torch.exp(ref_logps - logps) - (ref_logps - logps) - 1  # noqa: E731
    assert_matches_reference(k3, "kl", GRPOSpec(kl_estimator="k3"), max_examples=EXAMPLES)
    with pytest.raises(GRPOCheckError, match="KL estimator k3 used instead of k1"):
        assert_matches_reference(k3, "kl", GRPOSpec(kl_estimator="k1"), max_examples=EXAMPLES)


# ---------------------------------------------------------------- usage errors and crashes


def test_a_crashing_function_is_reported_on_the_smallest_batch() -> None:
    def crashes_on_masked_rows(per_token_loss, completion_mask):
        if bool((completion_mask.sum(-1) == 0).any()):
            raise ZeroDivisionError("empty row")
        return seq_mean_token_mean(per_token_loss, completion_mask)

    with pytest.raises(GRPOCheckError, match="raised ZeroDivisionError: empty row"):
        assert_matches_reference(
            crashes_on_masked_rows, "aggregation", GRPOSpec(loss_type="grpo"), max_examples=EXAMPLES
        )
    # the same function passes when the user says empty rows never happen
    assert_matches_reference(
        crashes_on_masked_rows, "aggregation", GRPOSpec(loss_type="grpo"), max_examples=10, masked_rows=False
    )


def test_usage_errors_fail_fast() -> None:
    with pytest.raises(InputError, match="stage must be one of"):
        assert_matches_reference(advantages, "advantage")
    with pytest.raises(InputError, match="parameter 'banana'"):
        assert_matches_reference(lambda rewards, num_generations, banana: rewards, "advantages")


def test_low_precision_inputs_get_a_matching_tolerance() -> None:
    """A correct loss computed in bf16 (or in bf16 and returned as float64) passes; a wrong one still fails."""
    bf16 = (torch.float32, torch.bfloat16)
    spec = GRPOSpec(loss_type="grpo")
    assert_matches_reference(grpo_loss, "loss", spec, max_examples=EXAMPLES, dtypes=bf16)

    def upcast(**kw):
        return grpo_loss(
            **{k: kw[k] for k in ("logps", "old_logps", "advantages", "completion_mask", "spec")}
        ).double()

    assert_matches_reference(upcast, "loss", spec, max_examples=EXAMPLES, dtypes=bf16)
    with pytest.raises(GRPOCheckError):
        assert_matches_reference(
            token_mean, "aggregation", spec, max_examples=EXAMPLES, dtypes=(torch.bfloat16,)
        )


def test_config_may_be_a_dict_and_a_bad_one_is_named() -> None:
    """A dict config used to fail deep inside with AttributeError: 'dict' object has no attribute 'replace'."""

    def zero_advantages(rewards, num_generations):
        return rewards * 0

    with pytest.raises(GRPOCheckError):  # a dict is accepted: the (wrong) function is still caught
        assert_matches_reference(
            zero_advantages, stage="advantages", config={"num_generations": 2}, max_examples=5
        )
    with pytest.raises(InputError, match="num_generation"):
        assert_matches_reference(zero_advantages, stage="advantages", config={"num_generation": 2})
    with pytest.raises(TypeError, match=r"config must be a grpo_check\.GRPOSpec"):
        assert_matches_reference(zero_advantages, stage="advantages", config=3)

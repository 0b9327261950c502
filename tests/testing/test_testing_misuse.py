"""The public assertions on malformed input: a clear ``InputError`` (or a FAIL), never a silent pass.

Each case shows the mistake refused (or the broken value failing) and the correct call passing.
"""

from __future__ import annotations

import pytest
import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import GRPOCheckError, InputError
from grpo_check.testing import (
    assert_advantages_close,
    assert_grad_close,
    assert_kl_close,
    assert_logps_close,
    assert_loss_close,
    assert_matches_reference,
    assert_ratio_close,
)

B, P, T, V = 4, 3, 5, 11
SPEC = GRPOSpec(num_generations=2, loss_type="grpo")
NAN = torch.full((B, T), float("nan"))
MASK = torch.ones(B, T, dtype=torch.long)


def _logps(seed: int = 0) -> torch.Tensor:
    return -torch.rand(B, T, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ a NaN/inf reference is matched exactly


def test_a_nan_reference_no_longer_lets_any_value_through() -> None:
    """allowed = atol + rtol·|NaN| is NaN, and ``diff > NaN`` is never true: every element used to pass."""
    with pytest.raises(GRPOCheckError, match="trainer 7 vs reference nan"):
        assert_ratio_close(torch.full((B, T), 7.0), logps=NAN, old_logps=NAN, completion_mask=MASK)
    with pytest.raises(GRPOCheckError, match="reference nan"):
        assert_kl_close(torch.full((B, T), 7.0), logps=NAN, ref_logps=NAN, completion_mask=MASK)
    nan_logits = torch.full((B, P + T, V), float("nan"))
    ids = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))
    with pytest.raises(GRPOCheckError, match="reference nan"):
        assert_logps_close(-torch.ones(B, T), logits=nan_logits, completion_ids=ids, prompt_length=P)
    with pytest.raises(GRPOCheckError, match="trainer 123 vs reference nan"):
        assert_loss_close(
            torch.tensor(123.0),
            logps=NAN,
            old_logps=NAN,
            advantages=torch.ones(B),
            completion_mask=MASK,
            spec=SPEC,
        )
    # NaN where the reference is NaN too fails as in the CLI, naming the upstream tensor as the origin;
    # a finite reference keeps its tolerance
    with pytest.raises(GRPOCheckError, match="comes from an upstream tensor"):
        assert_ratio_close(NAN.clone(), logps=NAN, old_logps=NAN, completion_mask=MASK)
    logps = _logps()
    assert_ratio_close(torch.ones(B, T), logps=logps, old_logps=logps, completion_mask=MASK)


def test_an_infinite_reference_is_matched_only_by_the_same_infinity() -> None:
    minus_inf = torch.full((B, T), float("-inf"))
    zeros = torch.zeros(B, T)
    with pytest.raises(GRPOCheckError, match="reference -inf"):  # k1 = logps − ref = −inf; 0 used to pass
        assert_kl_close(zeros, logps=minus_inf, ref_logps=zeros, estimator="k1", completion_mask=MASK)
    with pytest.raises(GRPOCheckError, match="comes from an upstream tensor"):  # the same -inf: inherited
        assert_kl_close(
            minus_inf.clone(), logps=minus_inf, ref_logps=zeros, estimator="k1", completion_mask=MASK
        )


# ------------------------------------------------------------------ None where a tensor is checked


def test_a_none_gradient_or_loss_is_an_input_error_not_a_pass() -> None:
    logps, advantages = _logps(), torch.tensor([1.0, -1.0, 0.5, -0.5])
    inputs = {"logps": logps, "old_logps": logps - 0.05, "advantages": advantages, "completion_mask": MASK}
    with pytest.raises(InputError, match="no gradient reached logps"):
        assert_grad_close(None, spec=SPEC, **inputs)
    with pytest.raises(InputError, match="the loss to check is None"):
        assert_loss_close(None, spec=SPEC, **inputs)
    leaf = logps.clone().requires_grad_(True)
    ratio = torch.exp(leaf - inputs["old_logps"])
    loss = (-(ratio * advantages[:, None]) * MASK).sum(-1).div(MASK.sum(-1)).mean()
    loss.backward()
    assert_grad_close(leaf.grad, spec=SPEC, **inputs)
    assert_loss_close(loss.detach(), spec=SPEC, **inputs)


# ------------------------------------------------------------------ tolerances


@pytest.mark.parametrize("rtol", [-1.0, "1e-3", float("nan"), True])
def test_a_tolerance_must_be_a_number_at_least_zero(rtol) -> None:
    rewards = torch.tensor([1.0, 0.0])
    advantages = torch.tensor([0.707, -0.707])
    with pytest.raises(InputError, match="rtol must be a number >= 0"):
        assert_advantages_close(advantages, rewards=rewards, num_generations=2, rtol=rtol)
    assert_advantages_close(advantages, rewards=rewards, num_generations=2, rtol=1e-3)


# ------------------------------------------------------------------ shapes


def test_inputs_that_do_not_fit_together_name_the_input() -> None:
    logps = _logps()
    with pytest.raises(InputError, match=r"field 'old_logps': has shape \(4, 3\), but logps has \(4, 5\)"):
        assert_ratio_close(logps, logps=logps, old_logps=logps[:, :3], completion_mask=MASK)
    with pytest.raises(InputError, match=r"field 'advantages': has shape \(3,\)"):
        assert_loss_close(
            torch.tensor(0.0),
            logps=logps,
            old_logps=logps,
            advantages=torch.ones(3),
            completion_mask=MASK,
            spec=SPEC,
        )
    logits = torch.randn(B, P + T, V)
    ids = torch.randint(0, V, (B, T))
    with pytest.raises(InputError, match=r"field 'logits': has shape \(8, 11\)"):
        assert_logps_close(logps, logits=logits[0], completion_ids=ids, prompt_length=P)
    with pytest.raises(InputError, match="outside the vocabulary of the logits"):
        assert_logps_close(logps, logits=logits, completion_ids=ids + V, prompt_length=P)
    correct = torch.log_softmax(logits[:, P - 1 : -1].double(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert_logps_close(correct, logits=logits, completion_ids=ids, prompt_length=P)


def test_a_trainer_tensor_of_the_wrong_shape_fails() -> None:
    """The inputs fit together but the tensor under test does not: the trainer is wrong (FAIL), not the call."""
    logps = _logps()
    inputs = {"logps": logps, "old_logps": logps, "advantages": torch.ones(B), "completion_mask": MASK}
    with pytest.raises(GRPOCheckError, match=r"∂loss/∂logps has shape \(4, 3\), expected \(4, 5\)"):
        assert_grad_close(torch.zeros(B, 3), spec=SPEC, **inputs)
    with pytest.raises(GRPOCheckError, match=r"ratio has shape \(4, 1\), expected \(4, 5\)"):
        assert_ratio_close(torch.ones(B, 1), logps=logps, old_logps=logps, completion_mask=MASK)
    sequence = GRPOSpec(importance_sampling_level="sequence")
    assert_ratio_close(torch.ones(B, 1), logps=logps, old_logps=logps, completion_mask=MASK, spec=sequence)


# ------------------------------------------------------------------ GRPOSpec


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_generations": "4"}, "field 'num_generations': must be a whole number"),
        ({"beta": float("nan")}, "field 'beta': must be a finite number"),
        ({"epsilon": -0.2}, "field 'epsilon': must be >= 0"),
        ({"adv_epsilon": -1.0}, "field 'adv_epsilon': must be >= 0"),
        ({"top_p": 0.0}, r"field 'top_p': must be in \(0, 1\]"),
        ({"use_bias_correction_kl": 1}, "field 'use_bias_correction_kl': must be True or False"),
        ({"num_iterations": 0}, "field 'num_iterations': must be >= 1"),
    ],
)
def test_a_spec_refuses_values_of_the_wrong_kind(fields, message) -> None:
    with pytest.raises(InputError, match=message):
        GRPOSpec(**fields)


def test_a_spec_takes_numbers_of_either_kind_where_a_float_is_declared() -> None:
    import numpy

    assert GRPOSpec(temperature=1, beta=0, epsilon=0).temperature == 1
    from_numpy = GRPOSpec(num_generations=numpy.int64(4), beta=numpy.float32(0.5))  # stored as plain numbers
    assert type(from_numpy.num_generations) is int and type(from_numpy.beta) is float
    assert GRPOSpec(beta=-0.04).beta == -0.04  # the diagnoses model a KL added with the wrong sign so


# ------------------------------------------------------------------ assert_matches_reference


def _advantages(rewards, num_generations):
    grouped = rewards.view(-1, num_generations)
    finite = ~torch.isnan(grouped)
    count = finite.sum(1, keepdim=True)
    mean = torch.nanmean(grouped, 1, keepdim=True)
    spread = torch.where(finite, (grouped - mean) ** 2, 0.0).sum(1, keepdim=True) / (count - 1).clamp(min=1)
    out = torch.where(count > 1, (grouped - mean) / (spread.sqrt() + 1e-4), 0.0)
    return torch.nan_to_num(out, nan=0.0).view(-1)


def test_a_function_that_forgets_to_return_is_named() -> None:
    def forgets(rewards, num_generations):
        _advantages(rewards, num_generations)

    with pytest.raises(InputError, match="got None: did it forget to return"):
        assert_matches_reference(forgets, stage="advantages", max_examples=2)
    with pytest.raises(InputError, match="got a tuple of tensors"):
        assert_matches_reference(lambda rewards, num_generations: (_advantages(rewards, num_generations), 0),
                                 stage="advantages", max_examples=2)  # fmt: skip
    assert_matches_reference(_advantages, stage="advantages", max_examples=3)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"max_examples": 0}, "max_examples"),
        ({"num_prompts": 0}, "num_prompts"),
        ({"num_prompts": (3, 1)}, "num_prompts"),
        ({"max_length": 0}, "max_length"),
        ({"dtypes": ()}, "dtypes"),
        ({"dtypes": (torch.int64,)}, "dtypes"),
    ],
)
def test_generation_settings_are_checked_before_hypothesis_sees_them(settings, field) -> None:
    with pytest.raises(InputError, match=f"field '{field}'"):
        assert_matches_reference(_advantages, stage="advantages", **settings)


def test_one_dtype_alone_is_taken() -> None:
    assert_matches_reference(_advantages, stage="advantages", dtypes=torch.float32, max_examples=2)

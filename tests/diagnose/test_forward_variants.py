"""diagnose.forward_variant: trainer log-probs equal a known wrong forward pass of the model.

* ``no_attention_mask``: the log-prob helper calls ``model(input_ids)`` without the mask (left padding
  attended to);
* ``temperature_1``: the reference model's logits are not divided by the sampling temperature.

Each fires on the broken forward and is silent on the correct one; a tiny Llama (attention reads the mask).
"""

from __future__ import annotations

import torch

from grpo_check.compare import compare_step
from grpo_check.compare.synthetic import make_step
from grpo_check.config import GRPOSpec
from grpo_check.demo.model import build_policy, build_tokenizer
from grpo_check.findings import Verdict
from grpo_check.reference.logps import logps_from_model

SPEC = GRPOSpec(num_generations=4, loss_type="grpo", max_completion_length=6, temperature=0.7, beta=0.04)


def llama_step(*, no_mask: bool = False, ref_temperature: float | None = None):
    model = build_policy(build_tokenizer(), seed=0).eval()
    ref_model = build_policy(build_tokenizer(), seed=1).eval()
    step = make_step(SPEC, vocab_size=30, prompt_length=5, off_policy=0.0, sampler_noise=0.0)
    prompt_mask = step["prompt_mask"].clone()
    prompt_mask[1::2, :2] = 0  # every other row: two pad tokens on the left
    step.tensors["prompt_mask"] = prompt_mask
    args = (step["prompt_ids"], prompt_mask, step["completion_ids"], step["completion_mask"])
    with torch.no_grad():
        right = logps_from_model(model, *args, SPEC.temperature)
        if no_mask:
            ones = (args[0], torch.ones_like(prompt_mask), args[2], torch.ones_like(args[3]))
            policy = logps_from_model(model, *ones, SPEC.temperature, positions="arange")
        else:
            policy = right
        ref = logps_from_model(ref_model, *args, ref_temperature or SPEC.temperature)
    step.tensors["logps"] = policy.float()
    step.tensors["old_logps"] = policy.float()
    step.tensors["ref_logps"] = ref.float()
    for name in ("ratio", "kl", "per_token_loss", "loss", "logps_grad", "sampler_logps"):
        step.tensors.pop(name, None)  # the downstream stages are not under test here
    return step, model, ref_model


def variant_findings(findings):
    return [f for f in findings if f.check_id == "diagnose.forward_variant"]


def not_passing(findings):
    return [f for f in findings if f.verdict in (Verdict.FAIL, Verdict.WARN)]


def test_forward_without_attention_mask_is_named() -> None:
    step, model, ref_model = llama_step(no_mask=True)
    findings = compare_step(step, SPEC, model=model, ref_model=ref_model)
    (diag,) = variant_findings(findings)
    assert diag.details == {"variant": "no_attention_mask", "quantity": "logps"}
    assert "without the attention mask" in diag.explanation
    assert diag.where.row is not None and diag.where.row % 2 == 1  # a left-padded row is the worst


def test_reference_model_at_temperature_one_is_named() -> None:
    step, model, ref_model = llama_step(ref_temperature=1.0)
    findings = compare_step(step, SPEC, model=model, ref_model=ref_model)
    (diag,) = variant_findings(findings)
    assert diag.details == {"variant": "temperature_1", "quantity": "ref_logps"}
    assert diag.catalog_id == "1" and "T=0.7" in diag.explanation


def test_correct_forwards_are_silent() -> None:
    step, model, ref_model = llama_step()
    findings = compare_step(step, SPEC, model=model, ref_model=ref_model)
    assert not variant_findings(findings)
    assert not [f for f in not_passing(findings) if f.stage == "logps"]

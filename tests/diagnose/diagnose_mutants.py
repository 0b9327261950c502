"""Crafted broken steps: each mimics one bug class on a correct step built from the reference.

A "trainer" with a bug upstream still computes its own downstream tensors consistently from its (wrong)
upstream, so :func:`recompute_downstream` re-derives ratio/kl/loss/grad from the mutated tensors with a
(possibly different) spec — exactly what stage isolation must see through.
"""

from __future__ import annotations

import torch

from grpo_check.compare.stages import reference_downstream
from grpo_check.compare.synthetic import TinyLM, make_step
from grpo_check.config import GRPOSpec
from grpo_check.reference.advantages import compute_advantages
from grpo_check.reference.logps import completion_logits, logps_from_model, sampling_kept_mass
from grpo_check.trace.model import TraceStep

DOWNSTREAM = ("ratio", "clipped_ratio", "kl", "per_token_loss", "loss", "logps_grad")


def recompute_downstream(step: TraceStep, spec: GRPOSpec, **overrides) -> TraceStep:
    """Re-derive the trainer's downstream tensors from its own upstream with ``spec`` (float32)."""
    out = reference_downstream(step, spec, **overrides)
    assert out is not None
    for name in DOWNSTREAM:
        if name in out:
            step.tensors[name] = out[name].to(torch.float32)
        else:
            step.tensors.pop(name, None)
    return step


def with_advantages(step: TraceStep, spec: GRPOSpec, advantages: torch.Tensor) -> TraceStep:
    step.tensors["advantages"] = advantages.to(torch.float32)
    return recompute_downstream(step, spec)


def regrouped(spec: GRPOSpec, seed: int = 0) -> TraceStep:
    """Advantages grouped with strided rows (repeat) although prompts were laid out with repeat_interleave."""
    step = make_step(spec, seed=seed)
    rows = step["group_index"].numel()
    wrong = torch.arange(rows) % (rows // spec.num_generations)
    adv = compute_advantages(step["rewards_per_func"], wrong, spec).advantages
    return with_advantages(step, spec, adv)


def advantages_with(spec: GRPOSpec, seed: int = 0, **changes) -> TraceStep:
    step = make_step(spec, seed=seed)
    adv = compute_advantages(
        step["rewards_per_func"], step["group_index"], spec.replace(**changes)
    ).advantages
    return with_advantages(step, spec, adv)


def nan_reward_leak(spec: GRPOSpec, seed: int = 0) -> TraceStep:
    step = make_step(spec, seed=seed)
    per_func = step["rewards_per_func"].clone()
    per_func[5, :] = float("nan")
    step.tensors["rewards_per_func"] = per_func
    step.tensors["rewards"] = torch.nan_to_num(per_func, nan=0.0).sum(1)
    adv = compute_advantages(torch.nan_to_num(per_func, nan=0.0), step["group_index"], spec).advantages
    return with_advantages(step, spec, adv)


def grad_scaled(spec: GRPOSpec, factor: float, seed: int = 0) -> TraceStep:
    step = make_step(spec, seed=seed)
    for name in ("loss", "logps_grad"):
        step.tensors[name] = step[name] * factor
    return step


def downstream_with(spec: GRPOSpec, seed: int = 0, **changes) -> TraceStep:
    """The trainer's loss computed with another objective (aggregation, KL estimator, clipping, level)."""
    step = make_step(spec, seed=seed)
    return recompute_downstream(step, spec.replace(**changes))


def detached(spec: GRPOSpec, seed: int = 0) -> TraceStep:
    """Ratio detached: the policy term has no gradient (only the KL term, if any, trains)."""
    step = make_step(spec, seed=seed)
    out = reference_downstream(step, spec, advantages=torch.zeros_like(step["advantages"]))
    step.tensors["logps_grad"] = out["logps_grad"].to(torch.float32)
    return step


def loss_sign_flipped(spec: GRPOSpec, seed: int = 0) -> TraceStep:
    step = make_step(spec, seed=seed)
    for name in ("per_token_loss", "loss", "logps_grad"):
        step.tensors[name] = -step[name]
    return step


def model_step(spec: GRPOSpec, seed: int = 0) -> tuple[TraceStep, TinyLM]:
    model = TinyLM(seed=seed)
    return make_step(spec, seed=seed, model=model, off_policy=0.0, sampler_noise=0.0), model


def with_logps(step: TraceStep, spec: GRPOSpec, logps: torch.Tensor) -> TraceStep:
    """The trainer's own logps (and old_logps: the same function at the same weights) replaced."""
    step.tensors["logps"] = logps.to(torch.float32)
    step.tensors["old_logps"] = logps.to(torch.float32)
    return recompute_downstream(step, spec)


def shifted_logps(spec: GRPOSpec, shift: int, seed: int = 0) -> tuple[TraceStep, TinyLM]:
    step, model = model_step(spec, seed)
    full = logps_from_model(
        model,
        step["prompt_ids"],
        step["prompt_mask"],
        step["completion_ids"],
        step["completion_mask"],
        spec.temperature,
    )
    shifted = torch.roll(full, shifts=-shift, dims=1)  # trainer[:, t] = true[:, t + shift]
    return with_logps(step, spec, shifted), model


def logps_at_temperature(spec: GRPOSpec, temperature: float, seed: int = 0) -> tuple[TraceStep, TinyLM]:
    step, model = model_step(spec, seed)
    wrong = logps_from_model(
        model,
        step["prompt_ids"],
        step["prompt_mask"],
        step["completion_ids"],
        step["completion_mask"],
        temperature,
    )
    return with_logps(step, spec, wrong), model


def sign_flipped_logps(spec: GRPOSpec, seed: int = 0) -> tuple[TraceStep, TinyLM]:
    step, model = model_step(spec, seed)
    return with_logps(step, spec, -step["logps"].double()), model


def truncated_sampler(spec: GRPOSpec, seed: int = 0) -> tuple[TraceStep, TinyLM]:
    """A renormalising sampler: sampler_logps = logps − log S_t."""
    step, model = model_step(spec, seed)
    input_ids = torch.cat([step["prompt_ids"], step["completion_ids"]], dim=1)
    attention = torch.cat([step["prompt_mask"], step["completion_mask"]], dim=1)
    from grpo_check.reference.logps import position_ids_from_mask

    with torch.no_grad():
        full = model(input_ids, attention, position_ids_from_mask(attention)).logits
    logits = completion_logits(full, step["prompt_ids"].shape[1])
    kept = sampling_kept_mass(
        logits, step["completion_ids"], spec.temperature, spec.top_p, spec.top_k, spec.min_p
    )
    step.tensors["sampler_logps"] = (step["old_logps"].double() - torch.log(kept)).to(torch.float32)
    return step, model


def logit_shifted(spec: GRPOSpec, shift: int, seed: int = 0) -> tuple[TraceStep, TinyLM]:
    """Token t scored by the logits at position P−1+t+shift (e.g. logits[:, P:] for shift = +1)."""
    from grpo_check.compare.stages import model_logps_shifted

    step, model = model_step(spec, seed)
    return with_logps(step, spec, model_logps_shifted(model, step, spec.temperature, shift)), model


def left_padded(spec: GRPOSpec, positions: str, seed: int = 0) -> tuple[TraceStep, TinyLM]:
    """Left-padded prompts; the trainer's forward uses ``positions`` ("from_mask" is right, "arange" is #14)."""
    step, model = model_step(spec, seed)
    prompt_mask = step["prompt_mask"].clone()
    prompt_mask[1::2, :2] = 0  # every other row: two pad tokens on the left
    step.tensors["prompt_mask"] = prompt_mask
    logps = logps_from_model(
        model,
        step["prompt_ids"],
        prompt_mask,
        step["completion_ids"],
        step["completion_mask"],
        spec.temperature,
        positions=positions,
    )
    step.tensors["sampler_logps"] = logps_from_model(
        model,
        step["prompt_ids"],
        prompt_mask,
        step["completion_ids"],
        step["completion_mask"],
        spec.temperature,
    ).to(torch.float32)
    return with_logps(step, spec, logps), model


def kl_swapped(spec: GRPOSpec, seed: int = 0) -> TraceStep:
    """k3 with its arguments exchanged: the trainer's kl is k3(ref_logps, logps)."""
    from grpo_check.reference.kl import per_token_kl

    step = make_step(spec, seed=seed)
    step.tensors["kl"] = per_token_kl(step["ref_logps"], step["logps"], "k3").to(torch.float32)
    return step

"""Audit rules ``GA2xx``: sampling, the sampler's distribution against the trainer's (top-p/top-k,
temperature, vLLM importance sampling)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grpo_check.audit.registry import (
    _POST_INIT,
    _TRAINER_INIT,
    SAMPLING_OVERRIDE_KEYS,
    AuditContext,
    Hit,
    _as_float,
    _as_int,
    rule,
)


@rule(
    "GA201",
    "truncated sampling (top-p/top-k/min-p) with no importance-sampling correction",
    "warning",
    ("top_p", "top_k", "min_p", "use_vllm", "vllm_importance_sampling_correction"),
    reason=(
        "The sampler draws from the distribution renormalised over the top-p/top-k/min-p support, while the "
        "trainer scores tokens under the full-vocabulary softmax. The rollouts are then silently off-policy: "
        "sampler log-prob = trainer log-prob − log S_t (S_t = kept mass), and nothing corrects it."
    ),
    source="TRL #6789; bug-catalog #3",
    fix=(
        "Sample with top_p = 1, top_k = 0, min_p unset; or use vLLM with vllm_importance_sampling_correction = true "
        "(processed logprobs) so the mismatch is weighted out."
    ),
    catalog_id="3",
)
def _truncated_sampling(ctx: AuditContext) -> Hit | None:
    truncations = _sampling_truncations(ctx.values)
    if not truncations:
        return None
    if ctx["use_vllm"] and ctx["vllm_importance_sampling_correction"]:
        return None
    return Hit(
        f"{', '.join(truncations)} without importance-sampling correction: trainer and sampler "
        "distributions differ on every truncated step",
        fields=("top_p", "top_k", "min_p", "generation_kwargs"),
    )


def _sampling_truncations(values: Mapping[str, Any]) -> list[str]:
    merged = dict(values)
    overrides = values.get("generation_kwargs")
    if isinstance(overrides, Mapping):
        merged.update({k: overrides[k] for k in ("top_p", "top_k", "min_p") if k in overrides})
    out = []
    top_p, top_k, min_p = (
        _as_float(merged.get("top_p")),
        _as_int(merged.get("top_k")),
        _as_float(merged.get("min_p")),
    )
    if top_p is not None and top_p < 1.0:
        out.append(f"top_p = {top_p}")
    if top_k is not None and top_k > 0:
        out.append(f"top_k = {top_k}")
    if min_p is not None and min_p > 0.0:
        out.append(f"min_p = {min_p}")
    return out


@rule(
    "GA202",
    "generation_kwargs overrides a sampling parameter the trainer also uses",
    "error",
    ("generation_kwargs", "temperature", "top_p", "top_k", "min_p", "repetition_penalty"),
    reason=(
        "generation_kwargs is applied on top of the sampling parameters, so the sampler uses its value while "
        "the trainer still divides logits by args.temperature (and assumes the other args). A temperature "
        "override makes every log-prob the trainer computes belong to a different distribution than the one "
        "sampled from: the ratio is ≠ 1 on-policy and the KL is biased."
    ),
    source="trl/trainer/grpo_trainer.py __init__ (generation_kwargs.update after temperature; _get_per_token_logps uses self.temperature); bug-catalog #1",
    fix="Set temperature/top_p/top_k/min_p/repetition_penalty through their own GRPOConfig fields, not generation_kwargs.",
    catalog_id="1",
)
def _generation_kwargs_override(ctx: AuditContext) -> Hit | None:
    overrides = ctx["generation_kwargs"]
    if not isinstance(overrides, Mapping):
        return None
    clashes = []
    for key in SAMPLING_OVERRIDE_KEYS:
        if key in overrides and overrides[key] != ctx[key]:
            clashes.append(f"{key}: {overrides[key]!r} (trainer uses {ctx[key]!r})")
    if not clashes:
        return None
    return Hit("generation_kwargs overrides " + "; ".join(clashes))


@rule(
    "GA203",
    "very low sampling temperature",
    "warning",
    ("temperature",),
    reason=(
        "GRPO learns only from groups whose rewards differ. At low temperature the G completions of a prompt "
        "are near-identical, most groups have zero reward variance and carry no signal; temperature ≤ 0 is "
        "invalid (TRL divides logits by it)."
    ),
    source="DAPO (arXiv 2503.14476) dynamic sampling motivation; bug-catalog #25 (zero-variance groups)",
    fix="Sample at temperature ≈ 0.7–1.0 for training (evaluate greedily if you like).",
    catalog_id="25",
)
def _low_temperature(ctx: AuditContext) -> Hit | None:
    value = _as_float(ctx["temperature"])
    if value is None or value >= 0.5:
        return None
    return Hit(f"temperature = {value} < 0.5", figure=value, details={"allowed_min": 0.5})


@rule(
    "GA204",
    "repetition_penalty changes the sampling distribution",
    "warning",
    ("repetition_penalty",),
    reason=(
        "repetition_penalty rescales logits of already-seen tokens in the sampler only; the trainer scores "
        "the plain policy, so rollouts are off-policy by an amount that grows with completion length."
    ),
    source="bug-catalog #1 (trainer and sampler log-probs differ); transformers RepetitionPenaltyLogitsProcessor",
    fix="Keep repetition_penalty = 1.0 for RL rollouts; shape repetition through the reward instead.",
    catalog_id="1",
)
def _repetition_penalty(ctx: AuditContext) -> Hit | None:
    value = _as_float(ctx["repetition_penalty"])
    if value is None or value == 1.0:
        return None
    return Hit(f"repetition_penalty = {value} ≠ 1", figure=value)


@rule(
    "GA205",
    "vLLM rollouts without importance-sampling correction",
    "warning",
    ("use_vllm", "vllm_importance_sampling_correction"),
    reason=(
        "vLLM and the training forward disagree on log-probs even with identical weights (kernels, precision, "
        "batching). Without the truncated IS correction the update is silently off-policy."
    ),
    source="verl PR #2953 (TIS); TRL PR #3867; bug-catalog #1",
    fix="Set vllm_importance_sampling_correction = true (default since TRL 0.23).",
    catalog_id="1",
)
def _vllm_without_is(ctx: AuditContext) -> Hit | None:
    if ctx["use_vllm"] and not ctx["vllm_importance_sampling_correction"]:
        return Hit("use_vllm = true with vllm_importance_sampling_correction = false")
    return None


@rule(
    "GA206",
    "vLLM importance-sampling bounds are inconsistent",
    "error",
    (
        "vllm_importance_sampling_mode",
        "vllm_importance_sampling_clip_min",
        "vllm_importance_sampling_clip_max",
    ),
    reason=(
        "The IS weights are clipped (truncate modes) or masked (mask modes) to [C_min, C_max]. C_min ≥ C_max "
        "leaves no valid ratio; a truncate mode with neither bound does nothing. GRPOConfig refuses both, "
        "whether or not vLLM is used (C_max < 1 is GA208)."
    ),
    source=f"{_POST_INIT} (clip_min < clip_max; *_truncate needs a bound); TRL docs for vllm_importance_sampling_mode",
    fix="Use 0 ≤ C_min < 1 < C_max (TRL default: C_max = 3, C_min unset).",
    catalog_id="1",
)
def _vllm_is_bounds(ctx: AuditContext) -> Hit | None:
    # GRPOConfig.__post_init__ refuses the first two whether or not vLLM is used.
    low = _as_float(ctx["vllm_importance_sampling_clip_min"])
    high = _as_float(ctx["vllm_importance_sampling_clip_max"])
    mode = str(ctx.get("vllm_importance_sampling_mode", ""))
    if low is not None and high is not None and low >= high:
        return Hit(f"vllm_importance_sampling_clip_min = {low} ≥ clip_max = {high}")
    if (
        ctx["vllm_importance_sampling_correction"]
        and mode.endswith("_truncate")
        and low is None
        and high is None
    ):
        return Hit(f"vllm_importance_sampling_mode = {mode!r} with neither clip bound set")
    return None


@rule(
    "GA208",
    "vLLM importance-sampling cap below 1",
    "error",
    ("vllm_importance_sampling_clip_max",),
    reason=(
        "The IS weights are clipped (truncate modes) or masked (mask modes) above C_max. C_max < 1 caps or "
        "removes the on-policy ratio 1 itself: every token the sampler and trainer agree on is down-weighted "
        "or dropped. TRL accepts the value."
    ),
    source="TRL docs for vllm_importance_sampling_mode / vllm_importance_sampling_clip_max",
    fix="Use C_max > 1 (TRL default: 3).",
    catalog_id="1",
)
def _vllm_is_cap_below_one(ctx: AuditContext) -> Hit | None:
    high = _as_float(ctx["vllm_importance_sampling_clip_max"])
    if not (ctx["use_vllm"] and ctx["vllm_importance_sampling_correction"]):
        return None
    if high is not None and high < 1.0:
        return Hit(
            f"vllm_importance_sampling_clip_max = {high} < 1 excludes the on-policy ratio 1", figure=high
        )
    return None


@rule(
    "GA207",
    "vespo with a sequence-level vLLM IS mode",
    "error",
    ("loss_type", "use_vllm", "vllm_importance_sampling_mode"),
    reason="VESPO needs token-level vLLM IS weights; TRL raises at trainer construction for sequence modes.",
    source=f"{_TRAINER_INIT}: 'VESPO loss requires vllm_importance_sampling_mode to be either token_truncate or token_mask'",
    fix="Set vllm_importance_sampling_mode to 'token_truncate' or 'token_mask'.",
)
def _vespo_vllm_mode(ctx: AuditContext) -> Hit | None:
    if (
        ctx["loss_type"] == "vespo"
        and ctx["use_vllm"]
        and ctx["vllm_importance_sampling_correction"]
        and ctx["vllm_importance_sampling_mode"] not in ("token_truncate", "token_mask")
    ):
        return Hit(
            f"loss_type = 'vespo' with vllm_importance_sampling_mode = {ctx['vllm_importance_sampling_mode']!r}"
        )
    return None

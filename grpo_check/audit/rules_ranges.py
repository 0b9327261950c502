"""Audit rules ``GA3xx``: ranges the GRPO literature recommends."""

from __future__ import annotations

from grpo_check.audit.registry import _GRPO_SKILL, AuditContext, Hit, _as_float, _as_int, rule


def _outside(value: float | None, low: float, high: float) -> bool:
    return value is not None and not (low <= value <= high)


@rule(
    "GA301",
    "learning rate outside 1e-7 – 5e-6",
    "warning",
    ("learning_rate",),
    reason=(
        "RL fine-tuning of an LLM is far more sensitive than SFT: GRPO recipes use 1e-7 – 5e-6 (TRL defaults "
        "to 1e-6). An SFT-like 5e-5 typically collapses the policy within tens of steps; below 1e-7 nothing moves."
    ),
    source=f"{_GRPO_SKILL}; TRL GRPOConfig learning_rate default 1e-6",
    fix="Use a learning rate in 1e-7 – 5e-6 (1e-6 is the usual start; LoRA tolerates ~10× more).",
)
def _learning_rate_range(ctx: AuditContext) -> Hit | None:
    value = _as_float(ctx["learning_rate"])
    if not _outside(value, 1e-7, 5e-6):
        return None
    return Hit(
        f"learning_rate = {value:g} outside [1e-7, 5e-6]", figure=value, details={"range": [1e-7, 5e-6]}
    )


@rule(
    "GA302",
    "num_generations outside 4 – 16",
    "warning",
    ("num_generations",),
    reason=(
        "G sets the baseline's quality: with G = 2–3 the group mean/std are extremely noisy (|A| ≤ (G−1)/√G) "
        "and many groups have zero variance; beyond 16 the compute per prompt rarely pays off."
    ),
    source=f"{_GRPO_SKILL}; DeepSeekMath (arXiv 2402.03300) used G = 64 for a different budget; bug-catalog #9",
    fix="Use num_generations in 4 – 16 (8 is TRL's default).",
    catalog_id="9",
)
def _generations_range(ctx: AuditContext) -> Hit | None:
    value = _as_int(ctx["num_generations"])
    if value is None or value < 2 or 4 <= value <= 16:
        return None  # < 2 is GA004's error
    return Hit(f"num_generations = {value} outside [4, 16]", figure=float(value), details={"range": [4, 16]})


@rule(
    "GA303",
    "KL coefficient beta above 0.1 or negative",
    "warning",
    ("beta",),
    reason=(
        "beta weighs the KL penalty to the reference. Above 0.1 it dominates the policy gradient and the "
        "model barely moves from the reference; a negative beta rewards drifting away."
    ),
    source=f"{_GRPO_SKILL} (beta 0.01–0.1); DeepSeekMath (arXiv 2402.03300) beta 0.04",
    fix="Use beta = 0 (no KL, TRL ≥ 0.19 default) or 0.001 – 0.1.",
)
def _beta_high(ctx: AuditContext) -> Hit | None:
    value = _as_float(ctx["beta"])
    if value is None or 0.0 <= value <= 0.1:
        return None
    return Hit(f"beta = {value} outside [0, 0.1]", figure=value, details={"range": [0.0, 0.1]})


@rule(
    "GA304",
    "very small non-zero beta",
    "info",
    ("beta",),
    reason=(
        "0 < beta < 0.01 keeps the cost of a reference model (memory, a forward pass per step) for a penalty "
        "that hardly constrains the policy. DeepSeek-R1 uses 0.001 deliberately; otherwise consider 0 or 0.01–0.1."
    ),
    source=f"{_GRPO_SKILL} (beta 0.01–0.1); DeepSeek-R1 (arXiv 2501.12948) beta 0.001; TRL docs for beta",
    fix="Use beta = 0 to drop the reference model, or a value in 0.01 – 0.1.",
)
def _beta_tiny(ctx: AuditContext) -> Hit | None:
    value = _as_float(ctx["beta"])
    if value is None or not (0.0 < value < 0.01):
        return None
    return Hit(f"beta = {value} < 0.01", figure=value)


@rule(
    "GA305",
    "clip epsilon outside 0.1 – 0.3",
    "warning",
    ("epsilon", "loss_type"),
    reason=(
        "epsilon bounds the ratio to [1−ε, 1+ε] (PPO clipping). Below 0.1 almost every off-policy token is "
        "clipped and contributes no gradient; above 0.3 clipping no longer limits destructive updates."
    ),
    source=f"{_GRPO_SKILL} (epsilon 0.1–0.2); PPO (arXiv 1707.06347); DAPO uses 0.2/0.28",
    fix="Use epsilon ≈ 0.2 (and epsilon_high ≈ 0.28 for clip-higher).",
)
def _epsilon_range(ctx: AuditContext) -> Hit | None:
    value = _as_float(ctx["epsilon"])
    if ctx["loss_type"] in ("cispo", "sapo", "vespo") or value is None:
        return None
    if value < 1e-3 or value >= 1.0:
        return None  # GA306's error
    if not _outside(value, 0.1, 0.3):
        return None
    return Hit(f"epsilon = {value} outside [0.1, 0.3]", figure=value, details={"range": [0.1, 0.3]})


@rule(
    "GA306",
    "clip epsilon that looks like an advantage epsilon (or ≥ 1)",
    "error",
    ("epsilon",),
    reason=(
        "GRPOConfig.epsilon is the PPO clip range, not the small constant added to the reward std (TRL fixes "
        "that at 1e-4). A value < 1e-3 clips the ratio to ≈ 1 so every off-policy token loses its gradient; "
        "a value ≥ 1 makes the lower bound 1 − ε ≤ 0. Both usually mean the advantage epsilon (1e-8 – 1e-4) "
        "was put in the wrong field."
    ),
    source=f"{_GRPO_SKILL} (epsilon (clip) 0.1–0.2 vs epsilon (advantage) 1e-8–1e-4); bug-catalog S2",
    fix="Set epsilon ≈ 0.2. The advantage epsilon is not configurable in TRL.",
    catalog_id="S2",
)
def _epsilon_confused(ctx: AuditContext) -> Hit | None:
    value = _as_float(ctx["epsilon"])
    if value is None or ctx["loss_type"] in ("cispo", "sapo", "vespo"):
        return None
    if value < 1e-3 or value >= 1.0:
        return Hit(f"epsilon = {value:g}: clip range [{1 - value:g}, {1 + value:g}]", figure=value)
    return None


@rule(
    "GA307",
    "many iterations per generation batch",
    "warning",
    ("num_iterations",),
    reason=(
        "Each extra pass (μ) over the same rollouts moves the policy further from the sampler; beyond ~4 "
        "passes most tokens sit outside the clip range and the update is heavily off-policy."
    ),
    source="DeepSeekMath (arXiv 2402.03300) Alg. 1 (μ inner iterations); PPO practice of a few epochs per batch; bug-catalog #17",
    fix="Use num_iterations between 1 and 4.",
    catalog_id="17",
)
def _iterations_range(ctx: AuditContext) -> Hit | None:
    value = _as_int(ctx["num_iterations"])
    if value is None or value <= 4:
        return None
    return Hit(f"num_iterations = {value} > 4", figure=float(value))


@rule(
    "GA308",
    "gradient clipping disabled",
    "info",
    ("max_grad_norm",),
    reason="A single group with extreme advantages (near-zero std) can produce a huge gradient; GRPO recipes clip at 1.0.",
    source="transformers TrainingArguments max_grad_norm; bug-catalog #9 (float residue → advantage ×4000)",
    fix="Keep max_grad_norm = 1.0.",
    catalog_id="9",
)
def _no_grad_clipping(ctx: AuditContext) -> Hit | None:
    value = _as_float(ctx["max_grad_norm"])
    if value is None and ctx.is_set("max_grad_norm"):
        return Hit("max_grad_norm = null")
    if value is not None and value <= 0:
        return Hit(f"max_grad_norm = {value}", figure=value)
    return None


@rule(
    "GA309",
    "bf16 log-probs without an fp32 LM head",
    "info",
    ("bf16", "cast_lm_head_to_fp32"),
    reason=(
        "In bf16 the log-softmax is quantised (steps of ~0.01–0.1 nats at large logits) and can even exceed 0; "
        "ratios and KL inherit that noise. ScaleRL computes the LM head in fp32."
    ),
    source="transformers #31267; ScaleRL (arXiv 2510.13786); TRL docs for cast_lm_head_to_fp32; bug-catalog #32",
    fix="Set cast_lm_head_to_fp32 = true (untied embeddings) or train in fp32 while debugging.",
    catalog_id="32",
)
def _bf16_logps(ctx: AuditContext) -> Hit | None:
    if ctx["bf16"] is True and not ctx["cast_lm_head_to_fp32"]:
        return Hit("bf16 = true with cast_lm_head_to_fp32 = false")
    return None

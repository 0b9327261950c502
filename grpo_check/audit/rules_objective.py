"""Audit rules ``GA1xx``: objective settings that silently change what is optimised."""

from __future__ import annotations

from grpo_check.audit.registry import (
    _COMPUTE_LOSS,
    _TRAINER_INIT,
    TOKEN_SUM_LOSSES,
    AuditContext,
    Hit,
    _as_float,
    _as_int,
    rule,
)


@rule(
    "GA101",
    "loss_type 'grpo' normalises per sequence (length bias)",
    "warning",
    ("loss_type",),
    reason=(
        "loss_type='grpo' averages each completion's token losses before averaging completions, so a token "
        "of a long completion weighs 1/|o_i| as much: correct long answers are under-rewarded and wrong long "
        "answers under-penalised, so responses drift longer when they are wrong (Dr. GRPO, arXiv 2503.20783)."
    ),
    source="Liu et al., 'Understanding R1-Zero-Like Training' (Dr. GRPO, arXiv 2503.20783); TRL docs for loss_type; bug-catalog #5",
    fix="Use loss_type='dapo' (TRL ≥ 0.22 default) or 'dr_grpo'; keep 'grpo' only to reproduce the original paper.",
    catalog_id="5",
)
def _grpo_length_bias(ctx: AuditContext) -> Hit | None:
    if ctx["loss_type"] != "grpo":
        return None
    how = "set explicitly" if ctx.is_set("loss_type") else f"the implicit behaviour of TRL {ctx.version}"
    return Hit(f"loss_type = 'grpo' ({how}): per-token weight 1/(B·|o_i|) depends on completion length")


@rule(
    "GA102",
    "std scaling per group adds a question-difficulty bias",
    "info",
    ("scale_rewards",),
    reason=(
        "Dividing advantages by the group std up-weights questions whose rewards barely vary (very easy or "
        "very hard ones) — a bias Dr. GRPO removes with scale_rewards='none'; a near-constant group also "
        "turns float residue into huge advantages."
    ),
    source="Dr. GRPO (arXiv 2503.20783); TRL docs for scale_rewards; bug-catalog #9 (NeMo-RL PR #4161)",
    fix="Consider scale_rewards='none' (Dr. GRPO) or 'batch' (PPO-Lite, arXiv 2508.08221); 'group' is the classic GRPO choice.",
    catalog_id="9",
)
def _group_std_bias(ctx: AuditContext) -> Hit | None:
    if ctx["scale_rewards"] != "group":
        return None
    return Hit("scale_rewards = 'group': advantages divided by each group's std")


@rule(
    "GA103",
    "bnpo normalises by the local token count",
    "warning",
    ("loss_type", "gradient_accumulation_steps", "num_processes", "per_device_train_batch_size"),
    reason=(
        "loss_type='bnpo' divides by the active tokens of the local micro-batch, then by GAS. With gradient "
        "accumulation or several processes the per-token weight varies with how tokens fall into "
        "micro-batches, so the same data gives a different gradient at a different GAS."
    ),
    source=f"{_COMPUTE_LOSS} (bnpo branch); TRL docs for loss_type; bug-catalog #4 (TRL #3021)",
    fix="Use loss_type='dapo' (global token count) — the same objective without the micro-batch dependence.",
    catalog_id="4",
)
def _bnpo_local_normaliser(ctx: AuditContext) -> Hit | None:
    if ctx["loss_type"] != "bnpo":
        return None
    accumulation = _as_int(ctx["gradient_accumulation_steps"]) or 1
    processes = int(ctx.get("num_processes", 1))
    if accumulation == 1 and processes == 1:
        return None
    return Hit(
        f"loss_type = 'bnpo' with gradient_accumulation_steps = {accumulation} and {processes} process(es): "
        "token weights depend on the micro-batch partition"
    )


@rule(
    "GA104",
    "dr_grpo without max_completion_length",
    "error",
    ("loss_type", "max_completion_length"),
    reason="dr_grpo divides the summed token loss by B × max_completion_length; with no length it fails or is undefined.",
    source=f"{_COMPUTE_LOSS} (dr_grpo branch); Dr. GRPO (arXiv 2503.20783)",
    fix="Set max_completion_length to the generation limit you sample with.",
    catalog_id="5",
)
def _dr_grpo_needs_length(ctx: AuditContext) -> Hit | None:
    if ctx["loss_type"] == "dr_grpo" and not ctx["max_completion_length"]:
        return Hit("loss_type = 'dr_grpo' but max_completion_length is not set")
    return None


@rule(
    "GA105",
    "sequence-level importance sampling with a token-summing loss",
    "warning",
    ("importance_sampling_level", "loss_type"),
    reason=(
        "With importance_sampling_level='sequence' (GSPO) the ratio is per sequence, but bnpo/dr_grpo/dapo/"
        "cispo sum per-token contributions, so each sequence is weighted by its length instead of optimising "
        "the per-sequence objective of the GSPO paper."
    ),
    source=f"{_TRAINER_INIT} (warning for importance_sampling_level='sequence'); GSPO (arXiv 2507.18071)",
    fix="Use loss_type='grpo' with importance_sampling_level='sequence' (the GSPO setup), or 'luspo'.",
    catalog_id="5",
)
def _sequence_is_with_token_sum(ctx: AuditContext) -> Hit | None:
    if ctx["importance_sampling_level"] == "sequence" and ctx["loss_type"] in TOKEN_SUM_LOSSES:
        return Hit(f"importance_sampling_level = 'sequence' with loss_type = {ctx['loss_type']!r}")
    return None


@rule(
    "GA106",
    "luspo needs sequence-level importance sampling",
    "error",
    ("loss_type", "importance_sampling_level"),
    reason="LUSPO is a length-unbiased modification of GSPO; with token-level ratios it is not the LUSPO objective.",
    source=f"{_TRAINER_INIT} (luspo warning); LUSPO (arXiv 2602.05261)",
    fix="Set importance_sampling_level='sequence'.",
)
def _luspo_sequence(ctx: AuditContext) -> Hit | None:
    if ctx["loss_type"] == "luspo" and ctx["importance_sampling_level"] != "sequence":
        return Hit(
            f"loss_type = 'luspo' with importance_sampling_level = {ctx['importance_sampling_level']!r}"
        )
    return None


@rule(
    "GA107",
    "vespo needs token-level importance sampling",
    "error",
    ("loss_type", "importance_sampling_level"),
    reason="VESPO builds its sequence-level weights internally from token ratios; sequence-level ratios double-aggregate.",
    source=f"{_TRAINER_INIT} (vespo warning); VESPO (arXiv 2602.10693)",
    fix="Set importance_sampling_level='token' (the default).",
)
def _vespo_token(ctx: AuditContext) -> Hit | None:
    if ctx["loss_type"] == "vespo" and ctx["importance_sampling_level"] != "token":
        return Hit(
            f"loss_type = 'vespo' with importance_sampling_level = {ctx['importance_sampling_level']!r}"
        )
    return None


@rule(
    "GA108",
    "num_iterations > 1 adds no extra policy update",
    "warning",
    ("num_iterations", "steps_per_generation", "gradient_accumulation_steps"),
    reason=(
        "TRL reuses a generation batch num_iterations (μ) times, every steps_per_generation × μ micro-steps. "
        "When gradient_accumulation_steps is a multiple of that, all μ passes fall inside ONE optimizer step: "
        "no update happens between them, the ratio is 1 (TRL skips old log-probs) and μ only multiplies the "
        "compute for the same averaged gradient."
    ),
    source="trl/trainer/grpo_trainer.py _generate_and_score_completions ('generate_every', old_per_token_logps = None)",
    fix="Use steps_per_generation = gradient_accumulation_steps (default) so each pass is its own optimizer step, or set num_iterations = 1.",
    catalog_id="17",
)
def _iterations_without_update(ctx: AuditContext) -> Hit | None:
    iterations = _as_int(ctx["num_iterations"]) or 1
    steps = _as_int(ctx["steps_per_generation"]) or 1
    accumulation = _as_int(ctx["gradient_accumulation_steps"]) or 1
    if iterations <= 1 or accumulation % (steps * iterations) != 0:
        return None
    return Hit(
        f"num_iterations = {iterations}, steps_per_generation = {steps}, gradient_accumulation_steps = "
        f"{accumulation}: the {iterations} passes share one optimizer step",
        figure=float(iterations),
    )


@rule(
    "GA109",
    "truncated completions are trained on",
    "info",
    ("mask_truncated_completions", "max_completion_length"),
    reason=(
        "A completion cut at max_completion_length never reached its answer; it is scored and trained on as "
        "if complete, which penalises long reasoning and adds noise. DAPO masks truncated completions."
    ),
    source="DAPO (arXiv 2503.14476) 'overlong filtering'; TRL docs for mask_truncated_completions",
    fix="Set mask_truncated_completions = true (and a max_completion_length that rarely truncates).",
)
def _truncation_not_masked(ctx: AuditContext) -> Hit | None:
    if ctx["mask_truncated_completions"]:
        return None
    return Hit(
        f"mask_truncated_completions = false with max_completion_length = {ctx['max_completion_length']}"
    )


@rule(
    "GA110",
    "dropout is not disabled",
    "warning",
    ("disable_dropout",),
    reason=(
        "With dropout on, two forward passes with the same weights give different log-probs, so the "
        "importance ratio is ≠ 1 even on-policy and the KL to the reference is noisy. Most causal LMs ship "
        "with dropout 0, but many (GPT-2, older checkpoints) do not."
    ),
    source="TRL PR #3234 (disable_dropout); bug-catalog #15",
    fix="Set disable_dropout = true.",
    catalog_id="15",
)
def _dropout_left_on(ctx: AuditContext) -> Hit | None:
    if ctx["disable_dropout"]:
        return None
    if ctx.facts.get("dropout_max") is not None:
        return None  # a live trainer: GA501 decides from the model's real dropout modules
    return Hit("disable_dropout = false: dropout stays as the model config sets it")


@rule(
    "GA111",
    "top_entropy_quantile outside [0, 1]",
    "error",
    ("top_entropy_quantile",),
    reason="top_entropy_quantile is ρ, the fraction of highest-entropy tokens kept in the policy loss; it must lie in [0, 1].",
    source="Beyond the 80/20 Rule (arXiv 2506.01939); TRL docs for top_entropy_quantile",
    fix="Use a value in [0, 1]; the paper recommends 0.2, 1.0 disables the filter.",
)
def _entropy_quantile_range(ctx: AuditContext) -> Hit | None:
    value = _as_float(ctx["top_entropy_quantile"])
    if value is None or 0.0 <= value <= 1.0:
        return None
    return Hit(f"top_entropy_quantile = {value} is outside [0, 1]", figure=value)


@rule(
    "GA112",
    "sync_ref_model with beta = 0",
    "error",
    ("sync_ref_model", "beta"),
    reason=(
        "With beta = 0 TRL loads no reference model, so there is nothing to synchronise: GRPOTrainer refuses "
        "the combination at construction."
    ),
    source=f"{_TRAINER_INIT}: 'You passed sync_ref_model=True while beta=0.0'; TR-DPO (arXiv 2404.09656)",
    fix="Either set beta > 0 (then the TR-DPO sync applies) or drop sync_ref_model.",
)
def _sync_without_ref(ctx: AuditContext) -> Hit | None:
    if ctx["sync_ref_model"] and not _as_float(ctx["beta"]):
        return Hit("sync_ref_model = true but beta = 0 (no reference model is loaded)")
    return None


@rule(
    "GA113",
    "delta does not bound anything above the clip range",
    "error",
    ("delta", "epsilon_high"),
    reason=(
        "delta caps the unclipped ratio of the two-sided GRPO loss (INTELLECT-2). At delta ≤ 1 + epsilon_high "
        "the cap lies inside the clip range and truncates updates the clip would have allowed."
    ),
    source="INTELLECT-2 (arXiv 2505.07291); TRL docs for delta ('recommended to be greater than 1 + ε')",
    fix="Use delta > 1 + epsilon_high (INTELLECT-2 uses 4), or leave it unset.",
)
def _delta_vs_clip(ctx: AuditContext) -> Hit | None:
    delta = _as_float(ctx["delta"])
    high = _as_float(ctx["epsilon_high"])
    if delta is None or high is None or delta > 1.0 + high:
        return None
    return Hit(
        f"delta = {delta} ≤ 1 + epsilon_high = {1 + high:.3g}",
        figure=delta,
        details={"allowed_min": 1 + high},
    )


@rule(
    "GA114",
    "epsilon_high below epsilon",
    "warning",
    ("epsilon_high", "epsilon", "loss_type"),
    reason=(
        "Clip-higher (DAPO) raises the upper clip bound to let low-probability tokens grow; epsilon_high < "
        "epsilon does the opposite and speeds up entropy collapse. For cispo, epsilon_high is ε_max of the "
        "truncated IS weight (recommended 5.0), so a value < 1 truncates nearly everything."
    ),
    source="DAPO (arXiv 2503.14476) clip-higher (0.28); ScaleRL (arXiv 2510.13786) for cispo; TRL docs for epsilon_high",
    fix="Use epsilon_high ≥ epsilon (DAPO: epsilon 0.2, epsilon_high 0.28); for cispo epsilon_high ≈ 5.",
    catalog_id="21",
)
def _clip_higher_inverted(ctx: AuditContext) -> Hit | None:
    if not ctx.is_set("epsilon_high"):
        return None
    high, low = _as_float(ctx["epsilon_high"]), _as_float(ctx["epsilon"])
    if high is None or low is None:
        return None
    if ctx["loss_type"] == "cispo":
        if high < 1.0:
            return Hit(f"loss_type = 'cispo' with epsilon_high (ε_max) = {high} < 1", figure=high)
        return None
    if high < low:
        return Hit(f"epsilon_high = {high} < epsilon = {low}", figure=high, details={"epsilon": low})
    return None


@rule(
    "GA115",
    "bias-corrected KL with sequence-level ratios",
    "warning",
    ("use_bias_correction_kl", "importance_sampling_level", "beta"),
    reason=(
        "use_bias_correction_kl multiplies the KL term by the importance ratio so its gradient is the unbiased "
        "reverse-KL gradient. That property holds for token-level ratios; with 'sequence' a sequence weight is "
        "broadcast onto per-token KL and the KL gradient is no longer the intended one."
    ),
    source="TRL docs for use_bias_correction_kl; DeepSeek-V3.2 (arXiv 2512.02556); bug-catalog #18",
    fix="Use importance_sampling_level='token' with use_bias_correction_kl, or disable the correction.",
    catalog_id="18",
)
def _bias_correction_sequence(ctx: AuditContext) -> Hit | None:
    if (
        ctx["use_bias_correction_kl"]
        and _as_float(ctx["beta"])
        and ctx["importance_sampling_level"] == "sequence"
    ):
        return Hit("use_bias_correction_kl = true, beta > 0, importance_sampling_level = 'sequence'")
    return None


@rule(
    "GA116",
    "KL term active without the bias correction",
    "info",
    ("beta", "use_bias_correction_kl"),
    reason=(
        "With beta > 0 and use_bias_correction_kl = false, the k3 estimator used directly as a loss has the "
        "per-token gradient weight 1 − π_ref/π, whose expectation is the gradient of the FORWARD KL(π_ref‖π), "
        "not of the reverse KL(π‖π_ref) the penalty is meant to be; multiplying by the ratio (ρ·k3) gives "
        "log(π/π_ref), the reverse-KL gradient. TRL changed the default to true in 1.10."
    ),
    source="arXiv 2512.21852 (TRL #4967); TRL PR #4638; DeepSeek-V3.2 (arXiv 2512.02556); bug-catalog #18",
    fix="Set use_bias_correction_kl = true (TRL ≥ 0.26) if you want the unbiased reverse-KL gradient.",
    catalog_id="18",
)
def _kl_without_correction(ctx: AuditContext) -> Hit | None:
    if _as_float(ctx["beta"]) and not ctx["use_bias_correction_kl"]:
        return Hit(f"beta = {ctx['beta']} with use_bias_correction_kl = false")
    return None


@rule(
    "GA117",
    "off_policy_mask_threshold must be positive",
    "error",
    ("off_policy_mask_threshold",),
    reason="The DeepSeek-V3.2 off-policy sequence mask drops negative-advantage sequences whose KL exceeds δ; δ ≤ 0 masks them all.",
    source="DeepSeek-V3.2 (arXiv 2512.02556) Eq. 9; TRL docs for off_policy_mask_threshold",
    fix="Use a positive threshold (e.g. 0.5) or leave it unset.",
)
def _off_policy_threshold(ctx: AuditContext) -> Hit | None:
    value = _as_float(ctx["off_policy_mask_threshold"])
    if value is None or value > 0:
        return None
    return Hit(f"off_policy_mask_threshold = {value} ≤ 0", figure=value)


@rule(
    "GA118",
    "negative entropy coefficient",
    "warning",
    ("entropy_coef",),
    reason="A negative entropy_coef penalises entropy and accelerates the entropy collapse GRPO is already prone to.",
    source="TRL docs for entropy_coef; Skywork-OR1 (arXiv 2505.22312)",
    fix="Use entropy_coef ≥ 0.",
)
def _negative_entropy_coef(ctx: AuditContext) -> Hit | None:
    value = _as_float(ctx["entropy_coef"])
    if value is None or value >= 0:
        return None
    return Hit(f"entropy_coef = {value} < 0", figure=value)

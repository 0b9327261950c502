"""Audit rules ``GA0xx``: batch and grouping consistency (what TRL checks late, or not at all)."""

from __future__ import annotations

from grpo_check.audit import versions as _versions
from grpo_check.audit.registry import _POST_INIT, _TRAINER_INIT, AuditContext, Hit, _as_int, rule


@rule(
    "GA001",
    "generation batch is not a whole number of prompt groups",
    "error",
    ("per_device_train_batch_size", "num_processes", "steps_per_generation", "num_generations"),
    reason=(
        "Every prompt is sampled num_generations times and the advantages are normalised within each group, "
        "so the generation batch (per_device_train_batch_size × num_processes × steps_per_generation, where "
        "steps_per_generation defaults to gradient_accumulation_steps) must hold whole groups. TRL raises this "
        "only when GRPOConfig is built on the cluster, after the job has been queued and the model loaded."
    ),
    source=f"{_POST_INIT}: 'generation_batch_size must be divisible by num_generations'; bug-catalog #6 (grouping)",
    fix="Make per_device_train_batch_size × num_processes × steps_per_generation a multiple of num_generations.",
    catalog_id="6",
)
def _generation_batch_divisible(ctx: AuditContext) -> Hit | None:
    group = _as_int(ctx["num_generations"])
    per_device = _as_int(ctx["per_device_train_batch_size"])
    processes = int(ctx.get("num_processes", 1))
    release = _versions.parse_version(ctx.version)
    if release < (0, 15, 0) or not group or per_device is None:
        return None  # TRL 0.14 counted prompts, not completions, in per_device_train_batch_size
    if release < (0, 17, 0):  # 0.15-0.16: each optimisation step generated its own batch
        batch, how = per_device * processes, f"{per_device} per device × {processes} processes"
    elif release < (0, 18, 0):  # 0.17: one generation per accumulation window
        accumulation = _as_int(ctx["gradient_accumulation_steps"]) or 1
        batch = per_device * processes * accumulation
        how = f"{per_device} per device × {processes} processes × {accumulation} accumulation steps"
    else:
        batch = _as_int(ctx["generation_batch_size"])
        if batch is None:
            return None
        how = (
            f"{per_device} per device × {processes} processes × {ctx['steps_per_generation']} steps per generation"
            if not ctx.is_set("generation_batch_size")
            else "generation_batch_size"
        )
    if batch % group == 0:
        return None
    return Hit(
        f"generation batch {batch} (= {how}) is not a multiple of num_generations = {group}; "
        f"{batch % group} completions would form a partial group",
        figure=float(batch % group),
    )


@rule(
    "GA002",
    "generation_batch_size and steps_per_generation both set",
    "error",
    ("generation_batch_size", "steps_per_generation"),
    reason="The two fields are two ways of saying the same thing; TRL refuses a config that sets both.",
    source=f"{_POST_INIT}: \"'generation_batch_size' and 'steps_per_generation' can not be both configured\"",
    fix="Keep one of them (steps_per_generation is the clearer one) and delete the other.",
)
def _both_generation_sizes(ctx: AuditContext) -> Hit | None:
    written = ctx.facts.get("user_values", ctx.values)  # before the derivation that fills the other one in
    both = all(
        ctx.is_set(f) and written.get(f) is not None
        for f in ("generation_batch_size", "steps_per_generation")
    )
    if both:
        if ctx.facts.get("effective"):
            return None  # an object after __post_init__ always has both
        return Hit(
            f"generation_batch_size = {ctx['generation_batch_size']} and steps_per_generation = "
            f"{ctx['steps_per_generation']} are both set"
        )
    return None


@rule(
    "GA003",
    "generation_batch_size not a multiple of the global batch",
    "error",
    ("generation_batch_size", "per_device_train_batch_size", "num_processes"),
    reason=(
        "TRL splits one generation batch into steps_per_generation = generation_batch_size / "
        "(per_device_train_batch_size × num_processes) optimisation micro-steps; it must divide evenly."
    ),
    source=f"{_POST_INIT}: 'generation_batch_size must be divisible by the global batch size'",
    fix="Set generation_batch_size to a multiple of per_device_train_batch_size × num_processes.",
)
def _generation_batch_vs_global(ctx: AuditContext) -> Hit | None:
    if not ctx.is_set("generation_batch_size") or ctx.is_set("steps_per_generation"):
        return None
    gen_batch = _as_int(ctx["generation_batch_size"])
    per_device = _as_int(ctx["per_device_train_batch_size"])
    if gen_batch is None or not per_device:
        return None
    global_batch = per_device * int(ctx.get("num_processes", 1))
    if gen_batch % global_batch == 0:
        return None
    return Hit(
        f"generation_batch_size = {gen_batch} is not a multiple of the global batch {global_batch} "
        f"(= {per_device} per device × {ctx.get('num_processes', 1)} processes)",
        figure=float(gen_batch % global_batch),
    )


@rule(
    "GA004",
    "fewer than 2 generations per prompt",
    "error",
    ("num_generations",),
    reason=(
        "GRPO's baseline is the group mean: with one completion per prompt every advantage is exactly 0 "
        "(or NaN from a zero std) and nothing is learned."
    ),
    source=f"{_POST_INIT}: 'GRPO requires at least 2 generations per prompt'; bug-catalog #9",
    fix="Use num_generations ≥ 2 (4–16 is typical).",
    catalog_id="9",
)
def _at_least_two_generations(ctx: AuditContext) -> Hit | None:
    group = _as_int(ctx["num_generations"])
    if group is None or group >= 2:
        return None
    return Hit(f"num_generations = {group} < 2; every advantage is 0 or NaN", figure=float(group))


@rule(
    "GA005",
    "evaluation batch is not a whole number of prompt groups",
    "error",
    ("per_device_eval_batch_size", "num_processes", "num_generations_eval", "num_generations"),
    reason=(
        "With evaluation on, TRL samples num_generations_eval (default num_generations) completions per eval "
        "prompt and needs per_device_eval_batch_size × num_processes to hold whole groups. The error surfaces "
        "at config construction; with a late first evaluation an equivalent mistake in custom loops surfaces "
        "hours into the run."
    ),
    source=f"{_POST_INIT}: 'The global eval batch size … must be divisible by the number of generations used for evaluation'",
    fix="Make per_device_eval_batch_size × num_processes a multiple of num_generations_eval (or of num_generations).",
)
def _eval_batch_divisible(ctx: AuditContext) -> Hit | None:
    strategy = str(ctx.get("eval_strategy", "no")).lower().replace("intervalstrategy.", "")
    if not ctx.get("do_eval", False) and strategy == "no":
        return None
    if strategy == "no":
        return None
    group = _as_int(ctx["num_generations_eval"]) or _as_int(ctx["num_generations"])
    per_device = _as_int(ctx["per_device_eval_batch_size"])
    if not group or not per_device:
        return None
    eval_batch = per_device * int(ctx.get("num_processes", 1))
    if eval_batch % group == 0:
        return None
    return Hit(
        f"eval batch {eval_batch} (= {per_device} × {ctx.get('num_processes', 1)} processes) is not a multiple "
        f"of the eval group size {group}",
        figure=float(eval_batch % group),
    )


@rule(
    "GA006",
    "generation boundary not aligned with optimizer steps",
    "warning",
    ("steps_per_generation", "gradient_accumulation_steps"),
    reason=(
        "TRL generates every steps_per_generation × num_iterations micro-steps. When "
        "gradient_accumulation_steps is not a multiple of that, a generation batch straddles optimizer "
        "steps: later micro-batches are trained off-policy (TRL then keeps old log-probs and clipping "
        "becomes active), and the DAPO normaliser is rescaled by steps_per_generation / GAS — the "
        "combination behind TRL PR #6024 (normaliser 0.5× at spg=4, GAS=2)."
    ),
    source="trl/trainer/grpo_trainer.py _generate_and_score_completions ('generate_every'); bug-catalog #4, #17; TRL PR #6024",
    fix=(
        "Leave steps_per_generation unset (= gradient_accumulation_steps), or make it a divisor/multiple of "
        "GAS on purpose and verify the accumulated gradient with `grpo-check compare` at GAS=1 vs GAS=k."
    ),
    catalog_id="4",
)
def _generation_alignment(ctx: AuditContext) -> Hit | None:
    steps = _as_int(ctx["steps_per_generation"])
    accumulation = _as_int(ctx["gradient_accumulation_steps"])
    if not steps or not accumulation or steps == accumulation:
        return None
    if accumulation % steps == 0:
        return None  # several generations per optimizer step, each consumed on-policy
    return Hit(
        f"steps_per_generation = {steps} vs gradient_accumulation_steps = {accumulation}: one generation "
        f"batch feeds {steps / accumulation:.3g} optimizer steps, so later micro-batches are off-policy",
        figure=steps / accumulation,
    )


@rule(
    "GA007",
    "one prompt per generation batch",
    "info",
    ("generation_batch_size", "num_generations"),
    reason=(
        "With a single prompt group per step every gradient step comes from one question: high variance, "
        "and grouping bugs (repeat vs repeat_interleave) are invisible because there is only one group."
    ),
    source="bug-catalog 'settings that hide bugs': grouping bugs vanish with one prompt per device",
    fix="Use a generation batch of several prompt groups (generation_batch_size ≥ 2 × num_generations).",
    catalog_id="6",
)
def _single_prompt_batches(ctx: AuditContext) -> Hit | None:
    gen_batch, group = _as_int(ctx["generation_batch_size"]), _as_int(ctx["num_generations"])
    if not gen_batch or not group or gen_batch // group != 1 or gen_batch % group:
        return None
    return Hit(f"generation batch {gen_batch} holds a single prompt group of {group}", figure=1.0)


@rule(
    "GA008",
    "reward_weights length differs from the number of reward functions",
    "error",
    ("reward_weights", "reward_funcs"),
    reason=(
        "reward_weights gives one weight per reward function. TRL raises at trainer construction; a recipe "
        "where the list of reward functions changed but the weights did not is caught here, before launch."
    ),
    source=f"{_TRAINER_INIT}: 'Number of reward weights … must match number of reward functions'",
    fix="Give exactly one weight per reward function, in the same order as reward_funcs.",
)
def _reward_weights_length(ctx: AuditContext) -> Hit | None:
    weights = ctx["reward_weights"]
    count = ctx.facts.get("num_reward_funcs")
    if weights is None or count is None or not isinstance(weights, (list, tuple)):
        return None
    if len(weights) == int(count):
        return None
    return Hit(
        f"reward_weights has {len(weights)} entries but there are {count} reward functions",
        figure=float(len(weights) - int(count)),
    )


@rule(
    "GA009",
    "auto_find_batch_size breaks prompt groups",
    "error",
    ("auto_find_batch_size",),
    reason=(
        "auto_find_batch_size halves the batch on out-of-memory; the generation batch then no longer holds "
        "whole prompt groups. TRL 1.x rejects it; older releases silently mis-grouped."
    ),
    source=f"{_POST_INIT}: 'auto_find_batch_size is not supported by GRPO'; bug-catalog #6",
    fix="Set auto_find_batch_size = false and lower per_device_train_batch_size yourself.",
    catalog_id="6",
)
def _auto_find_batch_size(ctx: AuditContext) -> Hit | None:
    if ctx["auto_find_batch_size"] is True:
        return Hit("auto_find_batch_size = true")
    return None


@rule(
    "GA010",
    "micro-batches split prompt groups",
    "info",
    ("per_device_train_batch_size", "num_generations"),
    reason=(
        "When a device's micro-batch holds only part of a group, group statistics must be gathered across "
        "processes/steps (TRL does). Custom loops that compute advantages per micro-batch get them wrong."
    ),
    source="bug-catalog #6 (completions grouped wrongly, per-device order)",
    fix="Nothing to do for TRL; when reproducing with your own loop, compute advantages on the whole generation batch.",
    catalog_id="6",
)
def _micro_batch_splits_groups(ctx: AuditContext) -> Hit | None:
    per_device, group = _as_int(ctx["per_device_train_batch_size"]), _as_int(ctx["num_generations"])
    if not per_device or not group or per_device % group == 0:
        return None
    return Hit(f"per_device_train_batch_size = {per_device} splits groups of {group} across micro-batches")

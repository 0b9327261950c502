"""The audit rule registry: one small pure function per rule over the effective configuration values.

Every rule has a stable id (``GA`` + category digit + number), a severity (``error`` / ``warning`` /
``info``), the fields it reads, a plain-language reason, the source it rests on, and the fix. Its
``check`` takes an :class:`AuditContext` (effective values, which fields the user set, the TRL version,
facts only a live trainer knows) and returns ``None`` (silent) or one or more :class:`Hit`.

Categories:

- ``GA0xx`` batch and grouping consistency (what TRL checks late, or not at all)
- ``GA1xx`` objective: settings that silently change what is optimised
- ``GA2xx`` sampling: sampler vs trainer distribution (top-p/top-k, temperature, vLLM importance sampling)
- ``GA3xx`` ranges the GRPO literature recommends
- ``GA4xx`` TRL version awareness (changed defaults, unknown/removed fields)
- ``GA5xx`` facts of an instantiated ``GRPOTrainer`` (dropout really active, reference = policy, overrides)
- ``GA6xx`` advisories: numerical bugs that shipped in the TRL release audited against and were fixed later
  (one rule per entry of :data:`grpo_check.audit.advisories.ADVISORIES`)

Example::

    >>> from grpo_check.audit.rules import RULES, AuditContext
    >>> ctx = AuditContext.from_values({"num_generations": 1, "per_device_train_batch_size": 8})
    >>> RULES["GA004"].run(ctx)[0].message.split(";")[0]
    'num_generations = 1 < 2'
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from grpo_check.audit import advisories as _advisories
from grpo_check.audit import versions as _versions
from grpo_check.audit.loader import LAUNCHER_KEYS

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[str, ...] = ("error", "warning", "info")

CATEGORIES: dict[str, str] = {
    "GA0": "batch and grouping",
    "GA1": "objective",
    "GA2": "sampling",
    "GA3": "recommended ranges",
    "GA4": "TRL version",
    "GA5": "live trainer",
    "GA6": "advisory (bug shipped in a TRL release)",
}

TOKEN_SUM_LOSSES: tuple[str, ...] = ("bnpo", "dr_grpo", "dapo", "cispo")
SAMPLING_OVERRIDE_KEYS: tuple[str, ...] = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


@dataclasses.dataclass(frozen=True)
class AuditContext:
    """What a rule sees.

    Attributes:
        values: effective value of every field (user value, else the TRL version's default, after TRL's
            own ``__post_init__`` derivations such as ``steps_per_generation``).
        explicit: fields the user set (in the file, or different from the default on an object).
        version: the TRL release the values are interpreted against (``"1.16.0"``).
        facts: things a config alone does not hold: ``num_processes``, ``num_reward_funcs``,
            ``unknown_keys`` (with their line), ``dropout_max`` / ``ref_is_policy`` / ``overrides`` (trainer).
    """

    values: Mapping[str, Any]
    explicit: frozenset[str] = frozenset()
    version: str = _versions.LATEST
    facts: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.values.get(name)

    def get(self, name: str, default: Any = None) -> Any:
        value = self.values.get(name)
        return default if value is None else value

    def is_set(self, name: str) -> bool:
        return name in self.explicit

    @classmethod
    def from_values(
        cls,
        values: Mapping[str, Any],
        *,
        version: str = _versions.LATEST,
        facts: Mapping[str, Any] | None = None,
    ) -> AuditContext:
        """Context for user values as a file would give them: defaults of ``version`` filled in, TRL's
        post-init derivations applied. Used by the loader and handy in tests."""
        facts = dict(facts or {})
        if "scale_rewards" in values:
            facts.setdefault("raw_scale_rewards", values["scale_rewards"])
        facts.setdefault("keys", tuple(values))
        facts.setdefault("user_values", dict(values))
        return cls(
            values=effective_values(values, version=version, num_processes=facts.get("num_processes", 1)),
            explicit=frozenset(values),
            version=_versions.resolve_version(version),
            facts=facts,
        )


def effective_values(
    user_values: Mapping[str, Any], *, version: str = _versions.LATEST, num_processes: int = 1
) -> dict[str, Any]:
    """User values over the version's defaults, then the derivations ``GRPOConfig.__post_init__`` makes.

    >>> v = effective_values({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2})
    >>> v["steps_per_generation"], v["generation_batch_size"], v["epsilon_high"]
    (2, 8, 0.2)
    """
    values = _versions.defaults_for(_versions.resolve_version(version))
    values.update(user_values)
    values.update(_parsed_dict_fields(values))
    values["num_processes"] = num_processes
    scale = values.get("scale_rewards")
    if scale is True or scale is False:
        values["scale_rewards"] = "group" if scale else "none"
    elif isinstance(scale, str) and scale.lower() in ("true", "false"):
        values["scale_rewards"] = "group" if scale.lower() == "true" else "none"
    per_device = _as_int(values.get("per_device_train_batch_size"))
    accumulation = _as_int(values.get("gradient_accumulation_steps"))
    global_batch = per_device * num_processes if per_device is not None else None
    gen_batch = _as_int(values.get("generation_batch_size"))
    steps = _as_int(values.get("steps_per_generation"))
    if gen_batch is None and steps is None:
        steps = accumulation
        gen_batch = global_batch * steps if global_batch is not None and steps is not None else None
    elif gen_batch is not None and steps is None:
        if global_batch and gen_batch % global_batch == 0:
            steps = gen_batch // global_batch
    elif gen_batch is None and steps is not None and global_batch is not None:
        gen_batch = global_batch * steps
    values["steps_per_generation"] = steps
    values["generation_batch_size"] = gen_batch
    if values.get("epsilon_high") is None:
        values["epsilon_high"] = values.get("epsilon")
    if values.get("vllm_importance_sampling_cap") is not None and "vllm_importance_sampling_clip_max" not in (
        user_values
    ):
        values["vllm_importance_sampling_clip_max"] = values["vllm_importance_sampling_cap"]
    return values


def _as_int(value: Any) -> int | None:
    """``value`` as an int, or None when it is not one (a bool, a fraction such as 2.5, NaN/inf, a word):
    a rule then stays silent instead of judging a truncated value; GA409/GA410 report the value itself."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: inf in an integer field
        return None


# Fields that take a mapping; TrainingArguments/GRPOConfig.__post_init__ also accept a JSON object written as a
# string (``_VALID_DICT_FIELDS``: a string starting with "{" goes through json.loads).
MAPPING_FIELDS: tuple[str, ...] = (
    "generation_kwargs",
    "model_init_kwargs",
    "chat_template_kwargs",
    "lr_scheduler_kwargs",
    "gradient_checkpointing_kwargs",
    "activation_checkpointing_kwargs",
)


def _json_object(text: str) -> dict[str, Any] | None:
    """The mapping a JSON-object string holds (``'{"temperature": 0.7}'``), else None."""
    import json

    if not text.lstrip().startswith("{"):
        return None
    try:
        loaded = json.loads(text)
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None


def _parsed_dict_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The mapping fields written as JSON-object strings, parsed (the others are left for GA410 to judge)."""
    parsed = {}
    for name in MAPPING_FIELDS:
        value = values.get(name)
        if isinstance(value, str) and (loaded := _json_object(value)) is not None:
            parsed[name] = loaded
    return parsed


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class Hit:
    """One firing of a rule: the message (what, by how much, why it matters), the measured figure, and the
    fields it points at (defaults to the rule's fields; the first one present in the file gives the line)."""

    message: str
    figure: float | None = None
    fields: tuple[str, ...] | None = None
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)


CheckFn = Callable[[AuditContext], "Hit | Iterable[Hit] | None"]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One audit rule. ``check`` is pure: context in, hits out."""

    id: str
    title: str
    severity: Severity
    fields: tuple[str, ...]
    reason: str
    source: str
    fix: str
    check: CheckFn
    catalog_id: str | None = None

    @property
    def category(self) -> str:
        return CATEGORIES.get(self.id[:3], "other")

    def run(self, ctx: AuditContext) -> list[Hit]:
        """The rule's hits on ``ctx`` (empty list = silent)."""
        out = self.check(ctx)
        if out is None:
            return []
        if isinstance(out, Hit):
            return [out]
        return list(out)

    def to_dict(self) -> dict[str, Any]:
        """The rule's record, as ``grpo-check audit --list-rules -f json`` / ``--explain ID -f json`` print it."""
        return {
            "id": self.id,
            "severity": self.severity,
            "category": self.category,
            "title": self.title,
            "fields": list(self.fields),
            "reason": self.reason,
            "source": self.source,
            "fix": self.fix,
            "catalog_id": self.catalog_id,
        }

    def explain(self) -> str:
        """The full rationale, as ``grpo-check audit --explain`` prints it."""
        catalog = (
            f"\nbug-catalog: #{self.catalog_id}"
            if self.catalog_id and "bug-catalog" not in self.source
            else ""
        )
        return (
            f"{self.id} [{self.severity}] {self.title}\n"
            f"category: {self.category}\n"
            f"fields: {', '.join(self.fields)}\n\n"
            f"Why:\n  {self.reason}\n\n"
            f"Fix:\n  {self.fix}\n\n"
            f"Source:\n  {self.source}{catalog}\n"
        )


RULES: dict[str, Rule] = {}


def rule(
    id: str,
    title: str,
    severity: Severity,
    fields: Iterable[str],
    *,
    reason: str,
    source: str,
    fix: str,
    catalog_id: str | None = None,
) -> Callable[[CheckFn], CheckFn]:
    """Register the decorated check function as rule ``id``."""

    def register(check: CheckFn) -> CheckFn:
        if id in RULES:
            raise ValueError(f"duplicate audit rule id {id}")
        RULES[id] = Rule(id, title, severity, tuple(fields), reason, source, fix, check, catalog_id)
        return check

    return register


_POST_INIT = "trl/trainer/grpo_config.py GRPOConfig.__post_init__ (TRL 1.16)"
_TRAINER_INIT = "trl/trainer/grpo_trainer.py GRPOTrainer.__init__ (TRL 1.16)"
_COMPUTE_LOSS = "trl/trainer/grpo_trainer.py GRPOTrainer._compute_loss (TRL 1.16)"
_GRPO_SKILL = "the GRPO skill of the SkillsBench debug-trl-grpo task ('Key Hyperparameters' table)"


# --------------------------------------------------------------------------- GA0xx batch and grouping


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


# --------------------------------------------------------------------------- GA1xx objective


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


# --------------------------------------------------------------------------- GA2xx sampling


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


# --------------------------------------------------------------------------- GA3xx recommended ranges


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


# --------------------------------------------------------------------------- GA4xx TRL version


def _describe_history(field: str) -> str:
    """``"0.14.0: 0.04 → 0.19.0: 0.0"``; inherited TrainingArguments defaults filled in, leading absence dropped."""
    parts: list[str] = []
    inherited = _versions.TRAINING_ARGUMENTS_DEFAULTS.get(field, _versions.ABSENT)
    for since, value in _versions.history(field):
        if value is _versions.ABSENT:
            value = inherited
        if value is _versions.ABSENT:
            if parts:
                parts.append(f"{since}: removed")
            continue
        parts.append(f"{since}: {value!r}")
    return " → ".join(parts)


def _relies_on_changed_default(ctx: AuditContext, *, objective: bool) -> list[Hit]:
    if ctx.facts.get("effective"):
        return []  # an object: built with the installed TRL, and "unset" cannot be told from "set to the default"
    hits = []
    for field in sorted(_versions.OBJECTIVE_FIELDS if objective else _all_history_fields()):
        if not objective and (field in _versions.OBJECTIVE_FIELDS or not _plumbing_relevant(ctx, field)):
            continue
        if ctx.is_set(field) or not _versions.changed_default(field):
            continue
        if (
            field not in _versions.grpo_fields(ctx.version)
            and field not in _versions.TRAINING_ARGUMENTS_FIELDS
        ):
            continue
        value = ctx.values.get(field)
        lead = f"{field} is unset, so it takes TRL {ctx.version}'s default {value!r}"
        hits.append(
            Hit(
                f"{lead}; defaults by release: {_describe_history(field)}",
                fields=(field,),
                details={"field": field, "history": [[v, repr(d)] for v, d in _versions.history(field)]},
            )
        )
    return hits


def _plumbing_relevant(ctx: AuditContext, field: str) -> bool:
    """Only plumbing the run uses: vLLM knobs with use_vllm, TR-DPO knobs with sync_ref_model."""
    if field.startswith("vllm_"):
        return bool(ctx["use_vllm"])
    if field.startswith("ref_model_"):
        return bool(ctx["sync_ref_model"])
    return field not in ("pad_to_multiple_of", "router_aux_loss_coef")


def _all_history_fields() -> list[str]:
    return [
        f
        for f in _versions._HISTORY
        if _versions.changed_default(f)
        and f not in _versions.TRAINING_ARGUMENTS_FIELDS
        and f not in _versions.RENAMED
    ]


@rule(
    "GA401",
    "objective depends on a default that changed between TRL releases",
    "warning",
    tuple(sorted(_versions.OBJECTIVE_FIELDS)),
    reason=(
        "The file leaves a field unset whose default changed between TRL releases in a way that changes the "
        "objective (beta 0.04 → 0.0 in 0.19, loss_type bnpo → dapo in 0.22, scale_rewards True → 'group', "
        "temperature 0.9 → 1.0 in 0.18, use_bias_correction_kl False → True in 1.10, …). The same file "
        "trains a different objective on another TRL release. Files only: a GRPOConfig/GRPOTrainer object was "
        "built with the installed TRL, and an unset field cannot be told from one set to its default."
    ),
    source="grpo_check/audit/versions.py: defaults read from trl/trainer/grpo_config.py of TRL 0.14.0 … 1.16.0",
    fix="Write the value you mean into the config explicitly, so the run no longer depends on the TRL version.",
)
def _objective_defaults(ctx: AuditContext) -> list[Hit]:
    return _relies_on_changed_default(ctx, objective=True)


@rule(
    "GA402",
    "plumbing depends on a default that changed between TRL releases",
    "info",
    (
        "vllm_mode",
        "vllm_gpu_memory_utilization",
        "vllm_server_timeout",
        "ref_model_mixup_alpha",
        "ref_model_sync_steps",
    ),
    reason=(
        "A field left unset whose default changed between TRL releases without changing the objective "
        "(vllm_mode server → colocate in 1.0, vllm_server_timeout, ref_model_sync_steps, …). Reported only "
        "where the run uses them (vLLM knobs with use_vllm, TR-DPO knobs with sync_ref_model)."
    ),
    source="grpo_check/audit/versions.py: defaults read from trl/trainer/grpo_config.py of TRL 0.14.0 … 1.16.0",
    fix="Set the field explicitly if the run depends on it.",
)
def _plumbing_defaults(ctx: AuditContext) -> list[Hit]:
    return _relies_on_changed_default(ctx, objective=False)


@rule(
    "GA403",
    "field does not exist in this TRL release",
    "error",
    ("<field>",),
    reason=(
        "The key is a GRPOConfig field in other TRL releases but not in the one this config will run with: "
        "GRPOConfig(**…) refuses it (unexpected keyword argument), and so does TRL's CLI (HfArgumentParser "
        "refuses keys no dataclass takes); a script that filters keys drops it silently, so the setting you "
        "wrote has no effect."
    ),
    source="grpo_check/audit/versions.py (field history across TRL 0.14.0 … 1.16.0)",
    fix="Use the field's replacement in this release, or pin the TRL version the config was written for.",
)
def _field_not_in_version(ctx: AuditContext) -> list[Hit]:
    hits = []
    for key in ctx.facts.get("keys", ()):
        if key in _versions.known_fields(ctx.version) or key in _versions.SCRIPT_KEYS:
            continue
        since, removed = _versions.introduced_in(key), _versions.removed_in(key)
        if since is None:
            continue
        replacement, why = _versions.RENAMED.get(key, (None, ""))
        if _versions.parse_version(ctx.version) < _versions.parse_version(since):
            status = f"introduced in TRL {since}"
        else:
            status = f"removed in TRL {removed}" if removed else "not present"
        hint = f"; use {replacement!r} ({why})" if replacement else (f" ({why})" if why else "")
        hits.append(Hit(f"{key!r} is not a field of TRL {ctx.version}: {status}{hint}", fields=(key,)))
    return hits


@rule(
    "GA404",
    "unknown key that looks like a typo of a known field",
    "error",
    ("<field>",),
    reason=(
        "The key is neither a GRPOConfig/TrainingArguments field in any TRL release tabulated nor a key TRL's "
        "scripts read, and it is a close spelling of one that is (betta → beta). GRPOConfig(**…) and TRL's CLI "
        "refuse it; a script that filters keys drops it, and the value you meant to set keeps its default."
    ),
    source="grpo_check/audit/versions.py field lists; difflib close matches (ratio ≥ 0.75)",
    fix="Fix the spelling (see the suggestion) or remove the key.",
)
def _likely_typo(ctx: AuditContext) -> list[Hit]:
    hits = []
    for key, matches in _unknown_keys(ctx):
        if not matches:
            continue  # GA411
        hint = " or ".join(f"`{m}`{_availability(m, ctx.version)}" for m in matches)
        hits.append(
            Hit(
                f"{key!r} is not a GRPOConfig field in TRL {ctx.version}; typo of {hint}?",
                fields=(key,),
                details={"suggestions": matches},
            )
        )
    return hits


def _unknown_keys(ctx: AuditContext) -> list[tuple[str, list[str]]]:
    """Keys of the file that no TRL release tabulated knows, each with its close matches among the fields."""
    every_field = set(_versions._HISTORY) | _versions.TRAINING_ARGUMENTS_FIELDS
    return [
        (key, difflib.get_close_matches(key, sorted(every_field), n=2, cutoff=0.75))
        for key in ctx.facts.get("keys", ())
        if key not in every_field
        and key not in _versions.SCRIPT_KEYS
        and key not in _versions.EXTENSION_KEYS
        and key not in _versions.OTHER_TRAINER_KEYS
        and key not in LAUNCHER_KEYS
    ]


def _availability(field: str, version: str) -> str:
    """``""`` when ``field`` exists in ``version``, else why not (`` (removed in TRL 0.28.0)``)."""
    if field in _versions.known_fields(version):
        return ""
    removed, since = _versions.removed_in(field), _versions.introduced_in(field)
    if removed and _versions.parse_version(version) >= _versions.parse_version(removed):
        return f" (removed in TRL {removed})"
    return f" (added in TRL {since})" if since else ""


@rule(
    "GA405",
    "deprecated field",
    "info",
    ("vllm_importance_sampling_cap", "use_transformers_paged", "use_liger_kernel"),
    reason="The field still works in this release but is deprecated and will be removed (TRL v2.0).",
    source=f"{_POST_INIT} (FutureWarning for vllm_importance_sampling_cap, use_transformers_paged); {_TRAINER_INIT} (use_liger_kernel)",
    fix="Use the replacement named in the message.",
)
def _deprecated(ctx: AuditContext) -> list[Hit]:
    replacements = {
        "vllm_importance_sampling_cap": ("vllm_importance_sampling_clip_max", (1, 6, 0)),
        "use_transformers_paged": ("use_transformers_continuous_batching", (1, 2, 0)),
        "use_liger_kernel": ('model_init_kwargs={"use_kernels": true}', (1, 0, 0)),
    }
    hits = []
    for field, (replacement, since) in replacements.items():
        if not ctx.is_set(field) or _versions.parse_version(ctx.version) < since:
            continue
        if field == "use_liger_kernel" and not ctx[field]:
            continue
        hits.append(Hit(f"{field} is deprecated; use {replacement}", fields=(field,)))
    return hits


@rule(
    "GA406",
    "TRL version older than GRPOTrainer",
    "error",
    ("trl_version",),
    reason="GRPOTrainer first shipped in TRL 0.14; an older TRL cannot run this config.",
    source="TRL release history (GRPOTrainer added in 0.14.0)",
    fix="Install trl ≥ 0.14 (this project is tested with 1.16).",
)
def _version_too_old(ctx: AuditContext) -> Hit | None:
    requested = ctx.facts.get("requested_version")
    if requested and _versions.is_before_history(requested):
        return Hit(f"TRL {requested} has no GRPOTrainer")
    return None


@rule(
    "GA407",
    "value not accepted by this TRL release",
    "error",
    tuple(_versions.CHOICES_SINCE),
    reason=(
        "The field takes one of a fixed set of values, and the set grew over releases. An unknown loss_type "
        "is rejected only at the first loss computation (after model load and generation); scale_rewards="
        "'none' or 'batch' on TRL < 0.22 (a bool field then) is a truthy string, so std scaling silently "
        "stays ON."
    ),
    source=(
        "GRPOConfig docstrings of TRL 0.17 … 1.16 (loss_type / scale_rewards choices); "
        f"{_COMPUTE_LOSS}: 'Unknown loss type'; TRL 0.16-0.21 _generate_and_score_completions ('if self.scale_rewards:', e.g. TRL 0.19 grpo_trainer.py)"
    ),
    fix="Use a value the release supports (see the message), or upgrade TRL.",
)
def _value_not_in_release(ctx: AuditContext) -> list[Hit]:
    hits = []
    release = _versions.parse_version(ctx.version)
    for field, choices in _versions.CHOICES_SINCE.items():
        if not ctx.is_set(field) or field not in _versions.grpo_fields(ctx.version):
            continue
        value = ctx.values.get(field) if field != "scale_rewards" else ctx.facts.get("raw_scale_rewards")
        if field == "scale_rewards" and value is None:
            continue
        valid = sorted((repr(v) for v, since in choices.items() if _versions.parse_version(since) <= release))
        since = next((s for v, s in choices.items() if v == value and type(v) is type(value)), None)
        if since is None:
            hits.append(
                Hit(
                    f"{field} = {value!r} is not a valid value (TRL {ctx.version} accepts {', '.join(valid)})",
                    fields=(field,),
                )
            )
        elif _versions.parse_version(since) > release:
            hits.append(
                Hit(
                    f"{field} = {value!r} needs TRL ≥ {since}; TRL {ctx.version} accepts {', '.join(valid)}",
                    fields=(field,),
                )
            )
    return hits


@rule(
    "GA408",
    "number written as a string",
    "warning",
    ("<numeric field>",),
    reason=(
        "YAML 1.1 (PyYAML) reads `1e-6` without a dot as the STRING '1e-6'. TRL's own CLI casts it back "
        "(HfArgumentParser), but a script doing GRPOConfig(**yaml.safe_load(f)) passes a string that fails "
        "only when the optimizer or the loss first uses it — after the model has loaded."
    ),
    source="PyYAML float resolver (YAML 1.1 requires a dot: 1.0e-6); transformers HfArgumentParser.parse_yaml_file",
    fix="Write floats with a dot and a signed exponent (1.0e-6), or quote nothing and let TRL's CLI parse the file.",
)
def _number_as_string(ctx: AuditContext) -> list[Hit]:
    if ctx.facts.get("effective"):
        return []
    hits = []
    for name in sorted(ctx.explicit & _numeric_fields(ctx.version)):
        value = ctx.values.get(name)
        if isinstance(value, str) and _as_float(value) is not None:
            hits.append(Hit(f"{name} = {value!r} is a string, not a number", fields=(name,)))
    return hits


# Fields where an infinite value is a legitimate way to write "no bound".
_INFINITY_ALLOWED: frozenset[str] = frozenset(
    {"max_grad_norm", "delta", "vllm_importance_sampling_cap", "vllm_importance_sampling_clip_max"}
)


# Integer fields whose default is None (so the defaults table cannot tell their type).
_INTEGER_FIELDS_WITHOUT_DEFAULT: frozenset[str] = frozenset(
    {"generation_batch_size", "steps_per_generation", "num_generations_eval", "max_prompt_length"}
)
# Integer-valued fields that transformers also accepts as a float (a ratio of the total steps when < 1).
_STEP_RATIO_FIELDS: frozenset[str] = frozenset({"logging_steps", "eval_steps", "save_steps"})


def _numeric_fields(version: str) -> set[str]:
    return (
        {
            name
            for name, value in _versions.defaults_for(version).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        | {"learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm", "epsilon_high", "delta", "min_p"}
        | _INTEGER_FIELDS_WITHOUT_DEFAULT
    )


def _integer_fields(version: str) -> set[str]:
    defaults = _versions.defaults_for(version)
    typed = {
        name for name, value in defaults.items() if isinstance(value, int) and not isinstance(value, bool)
    }
    return (typed | _INTEGER_FIELDS_WITHOUT_DEFAULT) - _STEP_RATIO_FIELDS


@rule(
    "GA409",
    "numeric field holds NaN, infinity or a non-number",
    "error",
    ("<numeric field>",),
    reason=(
        "A NaN learning rate, beta or epsilon turns every loss and update into NaN from the first step; an "
        "infinite batch size or a word such as 'eight' in a numeric field makes GRPOConfig or the optimizer "
        "fail only after the model has loaded — or, for NaN, never fail at all and silently train on NaN. "
        "The other rules cannot judge such a value and stay silent about it, so this one says so."
    ),
    source="IEEE 754 (NaN compares false with every bound); TRL GRPOConfig field types (TRL 1.16)",
    fix="Write a finite number (for 'no bound' use null where TRL accepts None, e.g. delta: null).",
)
def _non_finite_or_non_numeric(ctx: AuditContext) -> list[Hit]:
    hits = []
    for name in sorted(ctx.explicit & _numeric_fields(ctx.version)):
        value = ctx.values.get(name)
        if value is None or isinstance(value, bool):
            continue
        number = _as_float(value)
        if number is None:
            hits.append(Hit(f"{name} = {value!r} is not a number ({type(value).__name__})", fields=(name,)))
        elif number != number:
            hits.append(Hit(f"{name} = NaN: every bound compares false with it", fields=(name,)))
        elif number in (float("inf"), float("-inf")) and not (number > 0 and name in _INFINITY_ALLOWED):
            hits.append(Hit(f"{name} = {number} is not finite", fields=(name,)))
    return hits


@rule(
    "GA410",
    "value of the wrong type for the field",
    "error",
    ("<field>",),
    reason=(
        "GRPOConfig does not check value types: a fraction in an integer field (num_generations: 2.5), a "
        "boolean in a numeric field (num_generations: true), reward_weights that is not a list of numbers, or a "
        "*_kwargs field that is not a mapping passes GRPOConfig(**…) and fails only later — range(), "
        "torch.tensor(reward_weights), generation_kwargs.update() — after the model has loaded, or (a boolean "
        "read as 0/1) silently trains with a value nobody wrote. The other rules cannot judge such a value and "
        "stay silent about it (they never round 2.5 to 2), so this one says so."
    ),
    source=(
        "TRL GRPOConfig field types (TRL 1.16: num_generations: int | None, reward_weights: list[float] | None, "
        "generation_kwargs: dict | str | None); transformers TrainingArguments.__post_init__ "
        "(_VALID_DICT_FIELDS: a string starting with '{' is parsed as JSON)"
    ),
    fix=(
        "Write a whole number in integer fields, a list with one number per reward function in reward_weights, "
        "and a mapping (or a JSON object string) in *_kwargs fields."
    ),
)
def _wrong_type(ctx: AuditContext) -> list[Hit]:
    hits = [_number_type_hit(name, ctx.values.get(name), ctx.version) for name in sorted(ctx.explicit)]
    if ctx.is_set("reward_weights"):
        hits.append(_reward_weights_hit(ctx["reward_weights"]))
    hits.extend(_mapping_hit(name, ctx[name]) for name in MAPPING_FIELDS if ctx.is_set(name))
    return [hit for hit in hits if hit is not None]


def _number_type_hit(name: str, value: Any, version: str) -> Hit | None:
    """A boolean in a numeric field, or a float in an integer field (NaN/inf are GA409's)."""
    if isinstance(value, bool) and name in _numeric_fields(version):
        return Hit(f"{name} = {value!r} is a boolean, not a number", fields=(name,))
    if not isinstance(value, float) or not math.isfinite(value) or name not in _integer_fields(version):
        return None  # NaN and infinity are GA409's
    if value.is_integer():
        return Hit(
            f"{name} = {value!r} is a float; TRL needs an integer (write {int(value)})", fields=(name,)
        )
    return Hit(f"{name} = {value!r} is not a whole number; TRL needs an integer", fields=(name,))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _reward_weights_hit(weights: Any) -> Hit | None:
    if weights is None:
        return None
    if not isinstance(weights, (list, tuple)):
        return Hit(
            f"reward_weights = {weights!r} is not a list of numbers ({type(weights).__name__})",
            fields=("reward_weights",),
        )
    bad = [f"{i} ({w!r})" for i, w in enumerate(weights) if not _is_number(w)]
    if not bad:
        return None
    return Hit(
        f"reward_weights = {list(weights)!r}: entries {', '.join(bad)} are not numbers",
        fields=("reward_weights",),
    )


def _mapping_hit(name: str, value: Any) -> Hit | None:
    if value is None or isinstance(value, Mapping):
        return None
    kind = "a string that is not a JSON object" if isinstance(value, str) else type(value).__name__
    return Hit(f"{name} = {value!r} is not a mapping ({kind})", fields=(name,))


@rule(
    "GA411",
    "unknown key",
    "error",
    ("<field>",),
    reason=(
        "The key is neither a GRPOConfig/TrainingArguments field in any TRL release tabulated nor a key TRL's "
        "scripts read, and no known field is spelled like it (a close spelling is GA404). GRPOConfig(**…) and "
        "TRL's CLI refuse it. Often a key of your own script (then read the file with that script's parser); "
        "if it was meant as a TRL setting, that setting keeps its default."
    ),
    source="grpo_check/audit/versions.py field lists; difflib close matches (none at ratio ≥ 0.75)",
    fix="Remove the key, or check the GRPOConfig documentation of your TRL release for the field you meant.",
)
def _unknown_key(ctx: AuditContext) -> list[Hit]:
    return [
        Hit(
            f"{key!r} is not a GRPOConfig field in TRL {ctx.version}",
            fields=(key,),
            details={"suggestions": []},
        )
        for key, matches in _unknown_keys(ctx)
        if not matches
    ]


# Counts TRL divides by, takes range() of or slices with: 0 or less fails (ZeroDivisionError, an empty batch)
# only after the model has loaded, or (max_completion_length) generates nothing to learn from.
_AT_LEAST_ONE: tuple[str, ...] = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "steps_per_generation",
    "generation_batch_size",
    "num_iterations",
    "max_completion_length",
    "max_prompt_length",
)


@rule(
    "GA412",
    "value outside the range the field can take",
    "error",
    ("<field>",),
    reason=(
        "GRPOConfig does not check ranges. A batch size, gradient_accumulation_steps, steps_per_generation, "
        "generation_batch_size or num_iterations of 0 (or less) divides by zero or builds an empty batch once "
        "training starts; max_completion_length 0 generates nothing to learn from; top_p outside (0, 1] is "
        "refused by the sampler or means nothing; a temperature of 0 or less divides the logits by zero "
        "(TRL scales log-probs by 1/temperature)."
    ),
    source="TRL 1.16 GRPOTrainer (batch arithmetic, logits / temperature); transformers TopPLogitsWarper",
    fix="Use counts ≥ 1, 0 < top_p ≤ 1 and temperature > 0.",
)
def _out_of_range(ctx: AuditContext) -> list[Hit]:
    hits = []
    for name in _AT_LEAST_ONE:
        value = _as_int(ctx.values.get(name)) if name in ctx.explicit else None
        if value is not None and value < 1:
            hits.append(Hit(f"{name} = {value}: must be at least 1", fields=(name,), figure=float(value)))
    top_p = _as_float(ctx.values.get("top_p")) if "top_p" in ctx.explicit else None
    if top_p is not None and top_p == top_p and not 0.0 < top_p <= 1.0:
        hits.append(Hit(f"top_p = {top_p}: must be in (0, 1]", fields=("top_p",), figure=top_p))
    temperature = _as_float(ctx.values.get("temperature")) if "temperature" in ctx.explicit else None
    if temperature is not None and temperature == temperature and temperature <= 0.0:
        hits.append(
            Hit(f"temperature = {temperature}: must be > 0", fields=("temperature",), figure=temperature)
        )
    return hits


@rule(
    "GA413",
    "key written twice",
    "warning",
    ("<key>",),
    reason=(
        "YAML and JSON parsers (yaml.safe_load, json.load, and so TRL's CLI) silently keep the last value of a "
        "key written twice in one mapping. When the two values differ, the one that runs may not be the one "
        "you meant; when they agree, the next edit to one of them will silently not take effect. The audit "
        "uses the last value, as TRL does."
    ),
    source="PyYAML SafeLoader / json.loads (last value wins); TRL HfArgumentParser.parse_yaml_file",
    fix="Keep one occurrence of the key.",
)
def _duplicate_key(ctx: AuditContext) -> list[Hit]:
    return [
        Hit(problem["message"], fields=(problem["key"],), details={"line": problem["line"]})
        for problem in ctx.facts.get("load_problems", ())
        if problem.get("kind") == "duplicate_key"
    ]


@rule(
    "GA414",
    "line that is not valid YAML",
    "error",
    ("<key>",),
    reason=(
        "A syntax error confined to one line (an alias to an anchor that does not exist, a stray character) "
        "makes yaml.safe_load, and so TRL's CLI, refuse the whole file. The audit reports the line and audits "
        "the rest of the file without it, so every other problem is found in the same pass."
    ),
    source="PyYAML SafeLoader; TRL HfArgumentParser.parse_yaml_file",
    fix="Correct the line (quote a value that contains special characters such as `*`, `&`, `:` or `#`).",
)
def _invalid_line(ctx: AuditContext) -> list[Hit]:
    return [
        Hit(problem["message"], fields=(problem["key"],), details={"line": problem["line"]})
        for problem in ctx.facts.get("load_problems", ())
        if problem.get("kind") == "invalid_line"
    ]


@rule(
    "GA415",
    "key of a known project's GRPOConfig subclass",
    "info",
    ("<field>",),
    reason=(
        "Public projects extend TRL's GRPOConfig and script arguments with their own keys (open-r1: "
        "system_prompt, chat_template, hub_model_revision, reward shaping settings …). Their scripts read "
        "them; TRL's own GRPOConfig(**…) and `trl grpo --config` refuse them. Nothing to fix when the recipe "
        "is run by that project's script."
    ),
    source="grpo_check/audit/versions.py EXTENSION_KEYS (open-r1 src/open_r1/configs.py)",
    fix="Run the recipe with the project's script that reads these keys, or drop them for TRL's CLI.",
)
def _extension_keys(ctx: AuditContext) -> list[Hit]:
    return [
        Hit(f"{key!r} is read by {_versions.EXTENSION_KEYS[key]}, not by TRL's GRPOConfig", fields=(key,))
        for key in ctx.facts.get("keys", ())
        if key in _versions.EXTENSION_KEYS
        and key not in _versions.known_fields(ctx.version)
        and key not in _versions.SCRIPT_KEYS
    ]


@rule(
    "GA416",
    "log_completions_hub_repo without log_completions",
    "error",
    ("log_completions_hub_repo", "log_completions"),
    reason=(
        "Completions are uploaded to the Hub only when they are logged; GRPOConfig refuses a Hub repository "
        "for completions while log_completions is false."
    ),
    source=f"{_POST_INIT} ('log_completions_hub_repo is set, but log_completions is False')",
    fix="Set log_completions = true, or drop log_completions_hub_repo.",
)
def _hub_repo_without_logging(ctx: AuditContext) -> Hit | None:
    if ctx["log_completions_hub_repo"] is not None and not ctx["log_completions"]:
        return Hit(
            f"log_completions_hub_repo = {ctx['log_completions_hub_repo']!r} but log_completions = false"
        )
    return None


@rule(
    "GA417",
    "field of another TRL trainer",
    "error",
    ("<field>",),
    reason=(
        "The key belongs to another TRL trainer's config (SFTConfig, DPOConfig, PPOConfig …), not to GRPOConfig: "
        "GRPOConfig(**…) and `trl grpo --config` refuse it, and a script that filters keys drops it, so the "
        "behaviour it asks for (max_seq_length, packing, kl_coef …) does not happen in GRPO."
    ),
    source="grpo_check/audit/versions.py OTHER_TRAINER_KEYS (TRL 1.16 configs, and fields earlier releases had)",
    fix="Use the GRPOConfig field for the same purpose (e.g. max_completion_length, beta), or remove the key.",
)
def _other_trainer_key(ctx: AuditContext) -> list[Hit]:
    return [
        Hit(f"{key!r} is a field of {_versions.OTHER_TRAINER_KEYS[key]}, not of GRPOConfig", fields=(key,))
        for key in ctx.facts.get("keys", ())
        if key in _versions.OTHER_TRAINER_KEYS
        and key not in _versions.known_fields(ctx.version)
        and key not in _versions.SCRIPT_KEYS
    ]


@rule(
    "GA418",
    "TrainingArguments field that transformers 5 removed",
    "error",
    ("<field>",),
    reason=(
        "GRPOConfig inherits transformers' TrainingArguments. transformers 5 dropped several 4.x fields "
        "(overwrite_output_dir, warmup_ratio, logging_dir, evaluation_strategy, no_cuda …); with it installed, "
        "GRPOConfig(**…) and TRL's CLI refuse them as unexpected keyword arguments. TRL 1.x runs on "
        "transformers 4.56 and 5.x, so the installed transformers decides; when none is installed the audit "
        "assumes the 5 series and says so."
    ),
    source="transformers 5.25.0 TrainingArguments fields vs transformers 4.x; TRL 1.16 requires transformers>=4.56.2",
    fix=(
        "Remove the key or write its transformers 5 form (warmup_ratio: r → warmup_steps: r, a float in [0, 1) "
        "being a ratio; evaluation_strategy → eval_strategy; no_cuda → use_cpu), or pin transformers < 5."
    ),
)
def _transformers_5_removed(ctx: AuditContext) -> list[Hit]:
    if not ctx.facts.get("transformers_known", True):
        return []  # another TRL release than the installed one: its transformers is not known here
    installed = ctx.facts.get("transformers_version")
    try:
        major = _versions.parse_version(installed)[0] if installed else None
    except ValueError:
        major = None
    if major is not None and major < 5:
        return []
    where = f"transformers {installed}" if installed else "transformers 5 (assumed: none is installed here)"
    return [
        Hit(f"{key!r} is not a TrainingArguments field in {where}", fields=(key,))
        for key in ctx.facts.get("keys", ())
        if key in _versions.TRANSFORMERS_5_REMOVED
    ]


# --------------------------------------------------------------------------- GA5xx live trainer


@rule(
    "GA501",
    "dropout is active in the policy",
    "error",
    ("disable_dropout",),
    reason=(
        "The instantiated model has dropout modules with p > 0 and they are not disabled: two forwards with the "
        "same weights disagree, so ratio ≠ 1 on-policy and log-prob comparisons are noise."
    ),
    source="TRL PR #3234; bug-catalog #15",
    fix="Set disable_dropout = true, or set the model config's dropout probabilities to 0.",
    catalog_id="15",
)
def _dropout_active(ctx: AuditContext) -> Hit | None:
    dropout = _as_float(ctx.facts.get("dropout_max"))
    if dropout is None or dropout <= 0.0:
        return None
    return Hit(f"largest dropout probability in the policy: {dropout}", figure=dropout)


@rule(
    "GA504",
    "dropout that disable_dropout does not reach",
    "error",
    ("disable_dropout",),
    reason=(
        "TRL's disable_dropout_in_model only sets p = 0 on torch.nn.Dropout modules. Several architectures "
        "(Llama and its relatives) keep attention dropout as a plain float (attention_dropout) that is handed "
        "to the attention kernel while the model is in training mode, so it stays active even with "
        "disable_dropout = true: ratio ≠ 1 on-policy, noisy KL."
    ),
    source=(
        "trl/trainer/utils.py disable_dropout_in_model (TRL 1.16: isinstance(module, torch.nn.Dropout)); "
        "transformers models/llama/modeling_llama.py (dropout=self.attention_dropout when training); bug-catalog #15"
    ),
    fix=(
        "Build the model with config.attention_dropout = 0.0 (and any other *_dropout float), or zero the "
        "attributes after loading: `for m in model.modules(): m.attention_dropout = 0.0` where present."
    ),
    catalog_id="15",
)
def _functional_dropout_active(ctx: AuditContext) -> Hit | None:
    found = ctx.facts.get("functional_dropout") or {}
    if not found:
        return None
    where = ", ".join(f"{name} = {value}" for name, value in list(found.items())[:3])
    return Hit(
        f"dropout kept as a float attribute: {where}",
        figure=max(found.values()),
        details={"modules": dict(found)},
    )


@rule(
    "GA502",
    "reference model is the policy itself",
    "error",
    ("beta",),
    reason=(
        "With beta > 0 the KL is taken to the reference model; if the reference is the same object as the "
        "policy the KL is identically 0 and the penalty does nothing."
    ),
    source="TRL #3194 / PR #3196, #1340; bug-catalog #20",
    fix="Pass a separate frozen copy (or use PEFT so TRL disables the adapter for the reference).",
    catalog_id="20",
)
def _ref_is_policy(ctx: AuditContext) -> Hit | None:
    if ctx.facts.get("ref_is_policy") and _as_float(ctx["beta"]):
        return Hit("trainer.ref_model is trainer.model")
    return None


@rule(
    "GA503",
    "trainer attribute differs from its args",
    "info",
    ("<field>",),
    reason=(
        "The trainer reads these values from attributes set in __init__ (self.beta, self.loss_type, …); "
        "something changed them after construction, so trainer.args no longer tells what runs."
    ),
    source=f"{_TRAINER_INIT} (attributes copied from args)",
    fix="Change GRPOConfig before building the trainer instead of patching attributes.",
)
def _attribute_overrides(ctx: AuditContext) -> list[Hit]:
    return [
        Hit(f"trainer.{attr} = {now!r} but args.{field} = {was!r} (the audit uses {now!r})", fields=(field,))
        for field, attr, was, now in ctx.facts.get("overrides", ())
    ]


# --------------------------------------------------------------------------- GA6xx advisories


def _advisory_check(advisory: _advisories.Advisory) -> CheckFn:
    def check(ctx: AuditContext) -> Hit | None:
        release = str(ctx.facts.get("requested_version") or ctx.version)
        try:
            why = advisory.check(release, ctx.values)
        except ValueError:  # an unparsable version: GA406 / the loader report it
            return None
        if why is None:
            return None
        data = f"; it bites when {advisory.data_dependent}" if advisory.data_dependent else ""
        return Hit(
            f"TRL {release}: {advisory.title} — {why}{data} ({advisory.pr}, fixed in TRL {advisory.fixed_in})",
            details={
                "advisory": advisory.id,
                "pr": advisory.pr,
                "url": advisory.url,
                "introduced": advisory.introduced,
                "fixed_in": advisory.fixed_in,
                "stage": advisory.stage,
            },
        )

    return check


def _register_advisories() -> None:
    for advisory in _advisories.ADVISORIES.values():
        fields = tuple(
            sorted(
                {
                    "GA601": ("per_device_train_batch_size",),
                    "GA602": ("temperature",),
                    "GA603": ("use_vllm", "max_prompt_length"),
                    "GA604": ("use_vllm", "max_prompt_length"),
                    "GA605": ("top_entropy_quantile", "num_processes"),
                    "GA606": ("scale_rewards",),
                    "GA607": ("loss_type", "mask_truncated_completions"),
                    "GA608": ("loss_type", "steps_per_generation", "gradient_accumulation_steps"),
                    "GA609": ("num_iterations", "steps_per_generation", "gradient_accumulation_steps"),
                    "GA611": ("num_iterations",),
                }.get(advisory.id, ("trl_version",))
            )
        )
        rule(
            advisory.id,
            advisory.title,
            advisory.severity,  # type: ignore[arg-type]
            fields,
            reason=(
                f"{advisory.effect} Affected: TRL {advisory.introduced} – {advisory.last_affected}; "
                f"triggered by: {advisory.condition}."
            ),
            source=f"{advisory.pr} ({advisory.url}); fixed in TRL {advisory.fixed_in}",
            fix=advisory.fix,
            catalog_id=advisory.catalog_id,
        )(_advisory_check(advisory))


_register_advisories()


def get_rule(rule_id: str) -> Rule:
    """The rule with that id (case-insensitive), else ``KeyError`` listing close ids."""
    key = rule_id.strip().upper()
    if key in RULES:
        return RULES[key]
    close = [r for r in RULES if r.startswith(key)][:3] or difflib.get_close_matches(key, list(RULES), n=3)
    raise KeyError(f"no audit rule {rule_id!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))

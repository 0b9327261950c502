"""Audit rules ``GA408``-``GA418``: what the file's fields hold (numbers written as strings, non-finite or
mistyped values, out-of-range counts, duplicate keys, invalid lines, keys of other tools and trainers)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from grpo_check.audit import versions as _versions
from grpo_check.audit.registry import _POST_INIT, MAPPING_FIELDS, AuditContext, Hit, _as_float, _as_int, rule
from grpo_check.audit.rules_version import _unknown_keys


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

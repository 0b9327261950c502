"""Audit rules ``GA401``-``GA407``: TRL version awareness (changed defaults, fields a release does not have,
likely typos, deprecations, values a release does not accept)."""

from __future__ import annotations

import difflib

from grpo_check.audit import versions as _versions
from grpo_check.audit.loader import LAUNCHER_KEYS
from grpo_check.audit.registry import _COMPUTE_LOSS, _POST_INIT, _TRAINER_INIT, AuditContext, Hit, rule


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

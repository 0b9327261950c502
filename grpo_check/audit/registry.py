"""The audit rule registry: what a rule sees (:class:`AuditContext`, :func:`effective_values`), what it
returns (:class:`Hit`), the rule itself (:class:`Rule`), :data:`RULES` (filled in the order
:mod:`grpo_check.audit.rules` imports the rule modules) and the :func:`rule` decorator that registers one."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from grpo_check.audit import versions as _versions

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

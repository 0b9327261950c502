"""TRL ``GRPOConfig`` defaults per release: which value an unset field takes depends on the TRL version.

The table was established by reading ``trl/trainer/grpo_config.py`` (and ``base_config.py`` where it exists)
inside the released wheels of TRL 0.14.0 … 1.16.0 (``pip download trl==X --no-deps``), parsing the dataclass
field defaults with :mod:`ast`; versions between two listed releases share the earlier release's defaults.
``ABSENT`` marks a release in which the field does not exist.

Standard library only; nothing here imports TRL. The tables live in :mod:`grpo_check.audit.versions_defaults`
(defaults per release) and :mod:`grpo_check.audit.versions_keys` (fields and keys of a config file); this
module holds the functions that read them and re-exports the tables.

Example::

    >>> from grpo_check.audit.versions import defaults_for, history
    >>> defaults_for("0.18")["beta"], defaults_for("1.16")["beta"]
    (0.04, 0.0)
    >>> [v for v, _ in history("loss_type")]
    ['0.14.0', '0.17.0', '0.22.0']
"""

from __future__ import annotations

import functools
from typing import Any

from grpo_check.audit.versions_defaults import (
    _HISTORY,
    ABSENT,
    IMPLICIT_BEHAVIOUR,
    TRAINING_ARGUMENTS_DEFAULTS,
    VERSIONS,
)
from grpo_check.audit.versions_keys import (
    CHOICES_SINCE,
    EXTENSION_KEYS,
    OBJECTIVE_FIELDS,
    OTHER_TRAINER_KEYS,
    RENAMED,
    SCRIPT_KEYS,
    TRAINING_ARGUMENTS_FIELDS,
    TRANSFORMERS_5_REMOVED,
)


def parse_version(version: str) -> tuple[int, ...]:
    """``"0.19.1"`` -> ``(0, 19, 1)``; pre-release and local suffixes are dropped (``"1.2.0.dev0"`` -> (1, 2, 0))."""
    parts: list[int] = []
    for piece in str(version).strip().lstrip("v").split(".")[:3]:
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
    if not parts:
        raise ValueError(f"not a version: {version!r}")
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)


def resolve_version(version: str) -> str:
    """The tabulated release whose defaults ``version`` has: the newest listed release not after it.

    >>> resolve_version("0.19.1"), resolve_version("1.16"), resolve_version("1.11.2")
    ('0.19.0', '1.16.0', '1.10.0')
    """
    wanted = parse_version(version)
    known = [v for v in VERSIONS if parse_version(v) <= wanted]
    return known[-1] if known else VERSIONS[0]


def is_before_history(version: str) -> bool:
    """True for releases older than the first one tabulated (no GRPOTrainer in them)."""
    return parse_version(version) < parse_version(VERSIONS[0])


def history(field: str) -> tuple[tuple[str, Any], ...]:
    """The (release, default) pairs at which ``field``'s default changed (``ABSENT`` = not a field)."""
    return _HISTORY.get(field, ())


def _value_at(field: str, version: str) -> Any:
    value: Any = ABSENT
    wanted = parse_version(version)
    for since, default in _HISTORY.get(field, ()):
        if parse_version(since) <= wanted:
            value = default
    return value


@functools.lru_cache(maxsize=64)
def grpo_fields(version: str) -> frozenset[str]:
    """GRPOConfig's own field names (not inherited TrainingArguments ones) in that release."""
    return frozenset(f for f in _HISTORY if _value_at(f, version) is not ABSENT)


def known_fields(version: str) -> frozenset[str]:
    """Every keyword GRPOConfig accepts in that release (own + TrainingArguments)."""
    return grpo_fields(version) | TRAINING_ARGUMENTS_FIELDS


def defaults_for(version: str) -> dict[str, Any]:
    """The value each field takes when left unset, in that TRL release.

    Fields that did not exist yet are filled from :data:`IMPLICIT_BEHAVIOUR` (what the code did before
    the knob existed), inherited TrainingArguments fields from :data:`TRAINING_ARGUMENTS_DEFAULTS`.
    """
    out: dict[str, Any] = dict(TRAINING_ARGUMENTS_DEFAULTS)
    out.update(IMPLICIT_BEHAVIOUR)
    for field in _HISTORY:
        value = _value_at(field, version)
        if value is not ABSENT:
            out[field] = value
    if out.get("scale_rewards") is True:
        out["scale_rewards"] = "group"
    elif out.get("scale_rewards") is False:
        out["scale_rewards"] = "none"
    if parse_version(version) >= (0, 19, 0) and out.get("bf16") is None:
        out["bf16"] = not out.get("fp16", False)  # GRPOConfig.__post_init__: bf16 unless fp16
    return out


def canonical(field: str, value: Any) -> Any:
    """Spellings TRL treats alike, made equal: scale_rewards True/'group', False/'none'; top_k None/0."""
    if field == "scale_rewards" and isinstance(value, bool):
        return "group" if value else "none"
    if field == "top_k" and value is None:
        return 0
    return value


def changed_default(field: str) -> bool:
    """Whether the field's default differs between two releases in which it exists."""
    inherited = TRAINING_ARGUMENTS_DEFAULTS.get(field, ABSENT)
    values = [inherited if value is ABSENT else value for _, value in _HISTORY.get(field, ())]
    values = [canonical(field, value) for value in values if value is not ABSENT]
    return any(value != values[0] for value in values[1:])


def introduced_in(field: str) -> str | None:
    """First tabulated release in which ``field`` exists (``None`` if it never does)."""
    for since, value in _HISTORY.get(field, ()):
        if value is not ABSENT:
            return since
    return None


def removed_in(field: str) -> str | None:
    """Release in which ``field`` disappeared again (``None`` if it is still present in the newest one)."""
    entries = _HISTORY.get(field, ())
    if entries and entries[-1][1] is ABSENT and introduced_in(field) is not None:
        return entries[-1][0]
    return None


LATEST: str = VERSIONS[-1]


__all__ = [
    "ABSENT",
    "CHOICES_SINCE",
    "EXTENSION_KEYS",
    "IMPLICIT_BEHAVIOUR",
    "LATEST",
    "OBJECTIVE_FIELDS",
    "OTHER_TRAINER_KEYS",
    "RENAMED",
    "SCRIPT_KEYS",
    "TRAINING_ARGUMENTS_DEFAULTS",
    "TRAINING_ARGUMENTS_FIELDS",
    "TRANSFORMERS_5_REMOVED",
    "VERSIONS",
    "canonical",
    "changed_default",
    "defaults_for",
    "grpo_fields",
    "history",
    "introduced_in",
    "is_before_history",
    "known_fields",
    "parse_version",
    "removed_in",
    "resolve_version",
]

"""Shape checks for saved findings and metadata, so a hand-edited or corrupted result is refused on load.

``Finding.from_dict`` converts verdicts and numbers but takes coordinates and text as they come; a
``"where": {"step": "x"}`` would only fail later, inside a renderer's sort. These checks raise
:class:`ValueError` naming the field (``where.step must be an integer or null, got 'x'``); the loaders turn
that into an :class:`~grpo_check.findings.InputError` naming the file and the finding.

Example::

    >>> check_finding_record({"check_id": "loss.finite", "stage": "loss", "where": {"step": 0}})
    >>> check_finding_record({"check_id": "loss.finite", "stage": "loss", "where": {"step": "x"}})
    Traceback (most recent call last):
    ...
    ValueError: where.step must be an integer or null, got 'x'
"""

from __future__ import annotations

import dataclasses
from typing import Any

from grpo_check._kinds import is_whole_number
from grpo_check.findings import Where

WHERE_INT_FIELDS: tuple[str, ...] = (
    "step",
    "micro_batch",
    "rank",
    "prompt",
    "generation",
    "row",
    "token",
    "token_id",
)
WHERE_TEXT_FIELDS: tuple[str, ...] = ("reward_function",)
REQUIRED_TEXT_FIELDS: tuple[str, ...] = ("check_id", "stage", "kind")
OPTIONAL_TEXT_FIELDS: tuple[str, ...] = ("explanation", "likely_cause", "fix", "catalog_id")


def _type_error(name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"{name} must be {expected}, got {value!r}")


def check_where(where: Any) -> None:
    """``where`` is null or an object of known coordinates: integers (or null), reward_function text."""
    if where is None:
        return
    if not isinstance(where, dict):
        raise _type_error("where", "an object", where)
    known = {field.name for field in dataclasses.fields(Where)}
    for key, value in where.items():
        if key not in known:
            raise ValueError(f"where has an unknown coordinate {key!r} (known: {', '.join(sorted(known))})")
        if value is None:
            continue
        if key in WHERE_INT_FIELDS and not is_whole_number(value):
            raise _type_error(f"where.{key}", "an integer or null", value)
        if key in WHERE_TEXT_FIELDS and not isinstance(value, str):
            raise _type_error(f"where.{key}", "a string or null", value)


def check_finding_record(record: dict[str, Any]) -> None:
    """Raise :class:`ValueError` for the first field of a saved finding that has the wrong type.

    Missing required keys are left to ``Finding.from_dict`` (which names them); verdicts and numbers are
    checked by its conversions.
    """
    for key in REQUIRED_TEXT_FIELDS:
        if key in record and not isinstance(record[key], str):
            raise _type_error(key, "a string", record[key])
    for key in OPTIONAL_TEXT_FIELDS:
        if record.get(key) is not None and not isinstance(record[key], str):
            raise _type_error(key, "a string or null", record[key])
    check_where(record.get("where"))
    details = record.get("details")
    if details is not None and not isinstance(details, dict):
        raise _type_error("details", "an object or null", details)


def check_metadata(metadata: Any) -> dict[str, Any]:
    """``metadata`` is null (no metadata) or a JSON object; returns it as a (copied) dict."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata must be an object, got {type(metadata).__name__}")
    return dict(metadata)

"""Findings and results: the one data model every check, comparison and diagnosis returns.

A :class:`Finding` is one verdict of one check on one step: what was measured, what it was held to,
where in GRPO coordinates the worst offender sits, and what to do about it. A :class:`Result` is an
ordered collection of findings plus run metadata. Renderers (terminal, Markdown, HTML, JSON, JUnit)
consume a ``Result``; nothing inside a check prints.

This module imports only the standard library so that it is cheap to import from the CLI.

Example::

    >>> from grpo_check.findings import Finding, Result, Verdict, Where
    >>> f = Finding(
    ...     check_id="advantages.group_sum_zero", stage="advantages", verdict=Verdict.FAIL,
    ...     figure=1.66, tolerance=1e-6, where=Where(step=0, prompt=3),
    ...     explanation="group 3 advantages sum to 1.66 instead of 0",
    ...     likely_cause="generations grouped with repeat instead of repeat_interleave (bug-catalog #6)",
    ...     fix="group rows with repeat_interleave(G)")
    >>> r = Result(findings=[f])
    >>> r.exit_code()
    1
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

STAGES: tuple[str, ...] = ("batch", "rewards", "advantages", "logps", "ratio", "kl", "loss", "grad")
"""Pipeline stages in flow order (DESIGN.md). Every finding names one of these (or ``"config"``/``"run"``)."""

EXTRA_STAGES: tuple[str, ...] = ("config", "run")


class Verdict(str, enum.Enum):
    """Outcome of one check. Ordered by severity via :func:`severity`."""

    PASS = "pass"
    CONVENTION = "convention"  # a legitimate, declared difference (e.g. sample vs population std)
    NOT_CAPTURED = "not_captured"  # the tensors this check needs were not recorded
    INCONCLUSIVE = "inconclusive"  # could not decide (e.g. nothing to compare: all rows masked)
    WARN = "warn"
    FAIL = "fail"

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.value


_SEVERITY = {
    Verdict.PASS: 0,
    Verdict.CONVENTION: 1,
    Verdict.NOT_CAPTURED: 1,
    Verdict.INCONCLUSIVE: 2,
    Verdict.WARN: 3,
    Verdict.FAIL: 4,
}


def severity(verdict: Verdict | str) -> int:
    """Numeric severity of a verdict (0 = pass ... 4 = fail)."""
    return _SEVERITY[Verdict(verdict)]


@dataclasses.dataclass(frozen=True, init=False)
class Where:
    """GRPO coordinates of the worst offender. Every field is optional.

    ``prompt`` is the group index (which prompt), ``generation`` the index inside that group,
    ``row`` the row in the (micro-)batch tensor, ``token`` the completion position (0-based, after the
    one-token shift), ``token_id`` the vocabulary id at that position.
    """

    step: int | None = None
    micro_batch: int | None = None
    rank: int | None = None
    prompt: int | None = None
    generation: int | None = None
    row: int | None = None
    token: int | None = None
    token_id: int | None = None
    reward_function: str | None = None

    # written out rather than generated: the generated __init__ of a frozen dataclass sets each field through
    # object.__setattr__, and coordinates are built for most findings; one update of the instance dict
    # stores the same attributes in the same order
    def __init__(
        self,
        step: int | None = None,
        micro_batch: int | None = None,
        rank: int | None = None,
        prompt: int | None = None,
        generation: int | None = None,
        row: int | None = None,
        token: int | None = None,
        token_id: int | None = None,
        reward_function: str | None = None,
    ) -> None:
        self.__dict__.update(
            step=step,
            micro_batch=micro_batch,
            rank=rank,
            prompt=prompt,
            generation=generation,
            row=row,
            token=token,
            token_id=token_id,
            reward_function=reward_function,
        )

    def describe(self) -> str:
        """Short human text, e.g. ``step 2, prompt 3, generation 1, token 7 (id 42)``."""
        values = self.__dict__
        parts = [f"{label} {value}" for name, label in _DESCRIBED if (value := values[name]) is not None]
        if self.token_id is not None:
            parts.append(f"(id {self.token_id})")
        if self.reward_function is not None:
            parts.append(f"reward fn {self.reward_function!r}")
        return ", ".join(parts) if parts else "-"

    def to_dict(self) -> dict[str, Any]:
        """The coordinates that are set, in field order (``dataclasses.asdict`` without its deep copy of
        the values: they are numbers and strings; this runs for every finding a live check sends)."""
        values = self.__dict__
        return {name: value for name in _WHERE_FIELDS if (value := values[name]) is not None}


_WHERE_FIELDS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(Where))
# the coordinates Where.describe names, in order, with their labels ("micro_batch" as "micro-batch")
_DESCRIBED: tuple[tuple[str, str], ...] = tuple(
    (name, name.replace("_", "-"))
    for name in ("step", "micro_batch", "rank", "prompt", "generation", "row", "token")
)


def _json_number(value: float | None) -> float | str | None:
    if value is None:
        return None
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return repr(value)  # "nan", "inf", "-inf": JSON has no literal for these
    return value


def json_safe(value: Any) -> Any:
    """Replace non-finite floats (anywhere inside dicts/lists) by their repr: JSON has no NaN/Infinity."""
    kind = type(value)  # the exact built-in types first (every value of every finding's details comes here)
    if kind is float:
        return value if value - value == 0 else repr(value)  # x − x is NaN for an infinite or NaN x
    # a value that needs no change is kept without a call: a plain int/str/bool/None or a finite float
    if kind is dict:
        return {
            k: v if type(v) in _AS_IS or (type(v) is float and v - v == 0) else json_safe(v)
            for k, v in value.items()
        }
    if kind is list:
        return [v if type(v) in _AS_IS or (type(v) is float and v - v == 0) else json_safe(v) for v in value]
    if kind in _AS_IS:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


_AS_IS = frozenset({int, str, bool, type(None)})  # JSON-able as they are (json_safe returns them unchanged)

_json_safe = json_safe  # the former name


_NOWHERE = Where()  # the default coordinates (frozen: one instance serves every finding)
_NEW_DICT: Any = object()  # the default details: a new empty dict per finding


def _from_json_number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return float(value)
    return float(value)


@dataclasses.dataclass(init=False)
class Finding:
    """One verdict of one check.

    Attributes:
        check_id: stable id, ``"<stage>.<name>"`` (e.g. ``"logps.nonpositive"``).
        stage: pipeline stage (see :data:`STAGES`), ``"config"`` or ``"run"``.
        verdict: see :class:`Verdict`.
        figure: the measured number the verdict rests on (e.g. max |error|).
        tolerance: what ``figure`` was held to (``None`` where not numeric).
        where: coordinates of the worst offender.
        explanation: plain-language statement of what was found.
        likely_cause: the diagnosis (which known bug this looks like), if any.
        fix: how to fix it, if known.
        catalog_id: bug-catalog entry (e.g. ``"S1"``, ``"6"``) the diagnosis names, if any.
        kind: ``"invariant"`` (one implementation alone), ``"compare"`` (against the reference or another
            trace), ``"diagnosis"`` (signature match) or ``"audit"``.
        details: free-form JSON-able extras (per-group figures, histograms, token maps, ...).
    """

    check_id: str
    stage: str
    verdict: Verdict
    figure: float | None = None
    tolerance: float | None = None
    where: Where = dataclasses.field(default_factory=Where)
    explanation: str = ""
    likely_cause: str | None = None
    fix: str | None = None
    catalog_id: str | None = None
    kind: str = "invariant"
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    # written out rather than generated: a finding is built several dozen times per checked step, and this
    # saves the generated __init__'s default factories and the __post_init__ call (the same fields result)
    def __init__(
        self,
        check_id: str,
        stage: str,
        verdict: Verdict,
        figure: float | None = None,
        tolerance: float | None = None,
        where: Where = _NOWHERE,
        explanation: str = "",
        likely_cause: str | None = None,
        fix: str | None = None,
        catalog_id: str | None = None,
        kind: str = "invariant",
        details: dict[str, Any] = _NEW_DICT,  # type: ignore[assignment]
    ) -> None:
        self.check_id = check_id
        self.stage = stage
        self.verdict = verdict if type(verdict) is Verdict else Verdict(verdict)
        self.figure = figure
        self.tolerance = tolerance
        self.where = Where(**where) if type(where) is dict else where
        self.explanation = explanation
        self.likely_cause = likely_cause
        self.fix = fix
        self.catalog_id = catalog_id
        self.kind = kind
        self.details = {} if details is _NEW_DICT else details

    @property
    def failed(self) -> bool:
        return self.verdict is Verdict.FAIL

    def to_dict(self) -> dict[str, Any]:
        return {
            "check_id": self.check_id,
            "stage": self.stage,
            "verdict": self.verdict.value,
            "figure": _json_number(self.figure),
            "tolerance": _json_number(self.tolerance),
            "where": self.where.to_dict(),
            "explanation": self.explanation,
            "likely_cause": self.likely_cause,
            "fix": self.fix,
            "catalog_id": self.catalog_id,
            "kind": self.kind,
            "details": json_safe(self.details),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            check_id=data["check_id"],
            stage=data["stage"],
            verdict=Verdict(data["verdict"]),
            figure=_from_json_number(data.get("figure")),
            tolerance=_from_json_number(data.get("tolerance")),
            where=Where(**(data.get("where") or {})),
            explanation=data.get("explanation", ""),
            likely_cause=data.get("likely_cause"),
            fix=data.get("fix"),
            catalog_id=data.get("catalog_id"),
            kind=data.get("kind", "invariant"),
            details=data.get("details") or {},
        )

    def message(self) -> str:
        """One assert_close-style paragraph: what differed, where, by how much, allowed how much, why."""
        lines = [f"[{self.verdict.value.upper()}] {self.check_id} ({self.stage}): {self.explanation}"]
        if self.figure is not None:
            tol = f" (allowed {self.tolerance:.3g})" if self.tolerance is not None else ""
            lines.append(f"  measured: {self.figure:.6g}{tol}")
        where = self.where.describe()
        if where != "-":
            lines.append(f"  where: {where}")
        if self.likely_cause:
            cat = f" [bug-catalog {self.catalog_id}]" if self.catalog_id else ""
            lines.append(f"  likely cause: {self.likely_cause}{cat}")
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)


class GRPOCheckError(AssertionError):
    """Raised by the ``assert_*`` forms of checks. Carries the :class:`Finding`."""

    def __init__(self, finding: Finding):
        super().__init__(finding.message())
        self.finding = finding


class InputError(ValueError):
    """A user-facing input problem (bad trace, bad config, bad path). The CLI maps it to exit code 2.

    ``source`` names the file and ``field`` the field at fault, so the message can point at them.
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        prefix = ""
        if source:
            prefix += f"{source}: "
        if field:
            prefix += f"field {field!r}: "
        super().__init__(prefix + message)
        self.source = source
        self.field = field


@dataclasses.dataclass
class Result:
    """An ordered collection of findings with run metadata (tool version, trace, config, tolerances).

    ``metadata`` is JSON-able; by convention it holds ``"tolerances"`` (the declared tolerance policy),
    ``"config"`` (the algorithm configuration), ``"versions"`` and ``"source"`` (what was checked).
    """

    findings: list[Finding] = dataclasses.field(default_factory=list)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def add(self, finding: Finding) -> Finding:
        self.findings.append(finding)
        return finding

    def extend(self, findings: Iterable[Finding]) -> None:
        self.findings.extend(findings)

    def __iter__(self) -> Iterator[Finding]:
        return iter(self.findings)

    def __len__(self) -> int:
        return len(self.findings)

    def by_verdict(self, verdict: Verdict | str) -> list[Finding]:
        return [f for f in self.findings if f.verdict is Verdict(verdict)]

    @property
    def failures(self) -> list[Finding]:
        return self.by_verdict(Verdict.FAIL)

    @property
    def warnings(self) -> list[Finding]:
        return self.by_verdict(Verdict.WARN)

    def worst(self) -> Verdict:
        if not self.findings:
            return Verdict.PASS
        return max((f.verdict for f in self.findings), key=severity)

    def counts(self) -> dict[str, int]:
        out = {v.value: 0 for v in Verdict}
        for f in self.findings:
            out[f.verdict.value] += 1
        return out

    def first_divergence(self) -> Finding | None:
        """The failing finding in the earliest stage (then earliest step): where to look first."""
        order = {s: i for i, s in enumerate(("config", *STAGES, "run"))}
        failing = [f for f in self.findings if f.verdict is Verdict.FAIL]
        if not failing:
            return None
        return min(failing, key=lambda f: (order.get(f.stage, 99), f.where.step or 0))

    def exit_code(self, *, strict: bool = False, allow_partial: bool = False) -> int:
        """0 clean, 1 findings (fail; with ``strict`` also warn), 3 the trainer crashed, 130/143 it was
        interrupted (``metadata["outcome"]``), 4 incomplete coverage: a core check could not run although
        what it needs was at hand (``metadata["coverage"]``; accepted with ``allow_partial`` or
        ``metadata["allow_partial"]``)."""
        outcome = self.metadata.get("outcome") or {}
        if outcome.get("exit_code"):
            return int(outcome["exit_code"])
        worst = severity(self.worst())
        threshold = severity(Verdict.WARN) if strict else severity(Verdict.FAIL)
        if worst >= threshold:
            return 1
        if self.coverage_state()[0] == "incomplete" and not allow_partial:
            return 4
        return 0

    def coverage_state(self) -> tuple[str, str]:
        """(``"complete"`` | ``"partial"`` | ``"incomplete"``, what was not verified), from
        ``metadata["coverage"]`` (see :mod:`grpo_check.coverage`); an accepted partial run is ``"partial"``."""
        state, text = coverage_status(self.metadata.get("coverage"))
        if state == "incomplete" and self.metadata.get("allow_partial"):
            state = "partial"
        return state, text

    def status(self) -> str:
        """The headline's verdict: ``FAIL``, ``WARN``, ``OK``, ``OK (partial: …)``, ``INCOMPLETE (…)``, or the
        run's outcome first (``CRASHED (…)``, ``INTERRUPTED (…)``)."""
        worst = self.worst()
        status = {Verdict.FAIL: "FAIL", Verdict.WARN: "WARN"}.get(worst, "OK")
        if status == "OK":
            state, text = self.coverage_state()
            if state == "incomplete":
                status = f"INCOMPLETE ({text})"
            elif state == "partial":
                status = f"OK (partial: {text})"
        outcome = self.metadata.get("outcome") or {}
        if outcome.get("status") in ("crashed", "interrupted"):
            status = f"{outcome['status'].upper()} ({outcome.get('line', '')}); what was captured: {status}"
        return status

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "grpo-check-result",
            "format_version": 1,
            "metadata": json_safe(self.metadata),
            "counts": self.counts(),
            "findings": [f.to_dict() for f in self.findings],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        if data.get("format") != "grpo-check-result":
            raise InputError(
                "not a grpo-check result (missing 'format': 'grpo-check-result')", field="format"
            )
        return cls(
            findings=[Finding.from_dict(f) for f in data.get("findings", [])],
            metadata=dict(data.get("metadata") or {}),
        )

    def to_dataframe(self):  # -> pandas.DataFrame
        """One row per finding (check x step), for analysis in a notebook. Imports pandas lazily."""
        import pandas as pd

        rows = []
        for f in self.findings:
            row = {
                "check_id": f.check_id,
                "stage": f.stage,
                "verdict": f.verdict.value,
                "figure": f.figure,
                "tolerance": f.tolerance,
                "kind": f.kind,
                "catalog_id": f.catalog_id,
                "explanation": f.explanation,
                "likely_cause": f.likely_cause,
            }
            for name in ("step", "micro_batch", "rank", "prompt", "generation", "row", "token", "token_id"):
                row[name] = getattr(f.where, name)
            rows.append(row)
        return pd.DataFrame(rows)


#: the reasons a check family gives when it did not run for want of a model (a partial, not an incomplete, run)
NO_MODEL_REASONS = ("no model", "no reference model")


def coverage_status(coverage: Mapping[str, Any] | None) -> tuple[str, str]:
    """(``"complete"`` | ``"partial"`` | ``"incomplete"``, what was not verified) for the headline.

    ``"incomplete"``: a core family did not run although what it needs was at hand (exit 4);
    ``"partial"``: core families did not run for want of a model (the exit code is unchanged).
    """
    if not coverage:
        return "complete", ""
    families = coverage.get("families", [])
    gaps = [f for f in families if f.get("gap")]
    if gaps:
        return "incomplete", _not_checked(gaps)
    missing = [f for f in families if f.get("core") and f.get("status") == "not_run"]
    if missing:
        return "partial", _not_checked(missing)
    return "complete", ""


def _not_checked(families: list[Mapping[str, Any]]) -> str:
    """``forward log-probs, reference-model forward not checked — no model; pass --model and --ref-model``."""
    titles = ", ".join(str(f["title"]) for f in families)
    if all(f.get("reason") in NO_MODEL_REASONS for f in families):
        flags = dict.fromkeys("--ref-model" if f["id"] == "ref_forward" else "--model" for f in families)
        return f"{titles} not checked — no model; pass {' and '.join(flags)}"
    reasons = {f.get("reason") for f in families}
    if len(reasons) == 1 and families[0].get("reason"):
        return f"{titles} not checked — {families[0]['reason']}"
    return f"{titles} not checked"

"""The tolerance policy: what error each compared quantity is allowed, declared before anything runs.

The trainer is held against a float64 reference. Starting points are torch's per-dtype defaults
(``torch.testing.assert_close``), widened per quantity where the maths legitimately amplifies rounding (a
ratio ``exp(logp - old_logp)`` doubles the log-prob error, a gradient inherits the loss's normaliser).
For low-precision traces (bf16/fp16) the trainer is held against ``k ×`` the error a *same-precision*
reference makes (the approach of PyTorch's accuracy gate): the reference is computed once in float64 and
once in the trace's dtype, and the allowed error per element is ``max(k × same_precision_error, floor)``
with ``floor = atol + rtol · |reference|``.

An **outlier budget** (fraction of masked elements allowed beyond tolerance) sits beside the max error:
a comparison fails when more than that fraction of elements are out of tolerance; a non-zero but
within-budget count is a WARN. NaN/Inf locations are checked before any tolerance.

Every check can be overridden by check id (``"loss.per_token"``) or by quantity (``"logps"``)::

    >>> from grpo_check.compare.tolerances import TolerancePolicy
    >>> policy = TolerancePolicy(overrides={"loss.per_token": (1e-4, 1e-6)})
    >>> policy.for_check("loss.per_token", "per_token_loss", "float32").rtol
    0.0001
    >>> policy.for_check("advantages.values", "advantages", "float32").rtol
    1e-05
    >>> TolerancePolicy.parse_override("grad.logps_grad=1e-3,1e-8")
    ('grad.logps_grad', (0.001, 1e-08))
"""

from __future__ import annotations

import dataclasses
from typing import Any

from grpo_check.findings import InputError
from grpo_check.tolerance_defaults import (  # torch.testing's (rtol, atol) per dtype; bf16/fp16
    DTYPE_DEFAULTS,
    LOW_PRECISION,
)

# Per-quantity tolerances for a float32 (or float64) trainer against the float64 reference.
# These are the *floor*: they absorb float32 rounding of the trainer's own arithmetic.
QUANTITY_DEFAULTS: dict[str, tuple[float, float]] = {
    "rewards": (1e-5, 1e-6),
    "advantages": (1e-5, 1e-5),
    "logps": (1e-5, 1e-5),
    "ref_logps": (1e-5, 1e-5),
    "ratio": (2e-5, 2e-5),
    "kl": (2e-5, 2e-6),
    "per_token_loss": (2e-5, 2e-6),
    "loss": (2e-5, 1e-6),
    "logps_grad": (1e-4, 1e-7),
}

# How much looser each quantity is in low precision, beyond the dtype defaults (bf16 log-probs are
# quantised at ~1/128 of their magnitude).


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """The tolerance one comparison is held to.

    ``allowed = max(k × same_precision_error, atol + rtol · |reference|)`` per element;
    ``outlier_fraction`` of the compared elements may exceed it before the check fails.
    """

    rtol: float
    atol: float
    k: float = 1.0
    outlier_fraction: float = 0.0
    source: str = "default"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a new dict (copied from one built on first use: a finding's details hold one, and
        the default policy's tolerances are shared between steps)."""
        built = self.__dict__.get("_as_dict")
        if built is None:
            built = {
                "rtol": self.rtol,
                "atol": self.atol,
                "k": self.k,
                "outlier_fraction": self.outlier_fraction,
                "source": self.source,
            }
            object.__setattr__(self, "_as_dict", built)  # not a field: equality, hash and repr ignore it
        return dict(built)


@dataclasses.dataclass(frozen=True)
class TolerancePolicy:
    """Declared tolerance policy (written into every report under ``metadata["tolerances"]``).

    Args:
        overrides: ``{check_id_or_quantity: (rtol, atol)}``; a check id wins over a quantity name.
        k: multiple of the same-precision reference error allowed in low precision (default 4).
        outlier_fraction: fraction of elements allowed beyond tolerance at float32/float64 (default 0).
        low_precision_outlier_fraction: same, for bf16/fp16 traces (default 0.001).
        convention_rtol: how constant a per-group ratio must be to count as a convention difference.
    """

    overrides: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    k: float = 4.0
    outlier_fraction: float = 0.0
    low_precision_outlier_fraction: float = 1e-3
    convention_rtol: float = 1e-3

    def __post_init__(self) -> None:
        for key, value in self.overrides.items():
            if not (isinstance(value, tuple | list) and len(value) == 2):
                raise InputError(f"tolerance override {key!r} must be (rtol, atol), got {value!r}")
            try:
                rtol, atol = (float(v) for v in value)
            except (TypeError, ValueError):
                raise InputError(
                    f"tolerance override {key!r} must be two numbers (rtol, atol), got {value!r}"
                ) from None
            if not (rtol >= 0 and atol >= 0):  # also NaN
                raise InputError(f"tolerance override {key!r} must be non-negative, got {value!r}")

    def for_check(self, check_id: str, quantity: str, dtype: str | None) -> Tolerance:
        """Tolerance for ``check_id`` comparing ``quantity`` from a trace tensor of ``dtype``."""
        if (
            not self.overrides
            and self.k is _DEFAULT_K
            and self.outlier_fraction is _DEFAULT_OUTLIERS
            and self.low_precision_outlier_fraction is _DEFAULT_LOW_OUTLIERS
            and (dtype is None or type(dtype) is str)
        ):  # the default policy (its very default values): one answer per (check, quantity, dtype)
            key = (check_id, quantity, dtype)
            hit = _DEFAULT_ANSWERS.get(key)
            if hit is None:
                if len(_DEFAULT_ANSWERS) >= _DEFAULT_ANSWERS_MAX:
                    _DEFAULT_ANSWERS.clear()
                hit = _DEFAULT_ANSWERS[key] = self._for_check(check_id, quantity, dtype)
            return hit
        return self._for_check(check_id, quantity, dtype)

    def _for_check(self, check_id: str, quantity: str, dtype: str | None) -> Tolerance:
        dtype_name = _dtype_name(dtype)
        low = dtype_name in LOW_PRECISION
        budget = self.low_precision_outlier_fraction if low else self.outlier_fraction
        if check_id in self.overrides:
            rtol, atol = self.overrides[check_id]
            return Tolerance(float(rtol), float(atol), self.k if low else 1.0, budget, f"override {check_id}")
        if quantity in self.overrides:
            rtol, atol = self.overrides[quantity]
            return Tolerance(float(rtol), float(atol), self.k if low else 1.0, budget, f"override {quantity}")
        q_rtol, q_atol = QUANTITY_DEFAULTS.get(quantity, DTYPE_DEFAULTS["float32"])
        rtol, atol = q_rtol, q_atol
        if low:
            d_rtol, d_atol = DTYPE_DEFAULTS[dtype_name]
            rtol, atol = max(q_rtol, d_rtol), max(q_atol, d_atol)
            # a log-prob of magnitude ~10 in bf16 is quantised to ~0.06: absolute floors grow accordingly
            atol = max(atol, 1e-2 if dtype_name == "bfloat16" else 1e-3)
        return Tolerance(rtol, atol, self.k if low else 1.0, budget, f"{quantity} @ {dtype_name}")

    def to_dict(self) -> dict[str, Any]:
        """The declared policy, JSON-able, for ``Result.metadata["tolerances"]``."""
        per_dtype = {}
        for dtype_name in DTYPE_DEFAULTS:
            per_dtype[dtype_name] = {
                q: dataclasses.asdict(self.for_check(f"<{q}>", q, dtype_name)) for q in QUANTITY_DEFAULTS
            }
        return {
            "reference_dtype": "float64",
            "rule": "allowed = max(k * |ref_same_precision - ref_float64|, atol + rtol * |ref|) per element",
            "k": self.k,
            "outlier_fraction": self.outlier_fraction,
            "low_precision_outlier_fraction": self.low_precision_outlier_fraction,
            "convention_rtol": self.convention_rtol,
            "overrides": {k: list(v) for k, v in self.overrides.items()},
            "per_dtype": per_dtype,
        }

    def with_overrides(self, overrides: dict[str, tuple[float, float]]) -> TolerancePolicy:
        merged = dict(self.overrides)
        merged.update(overrides)
        return dataclasses.replace(self, overrides=merged)

    @staticmethod
    def parse_override(text: str) -> tuple[str, tuple[float, float]]:
        """Parse the CLI form ``CHECK=RTOL,ATOL`` (e.g. ``loss.per_token=1e-4,1e-6``)."""
        if "=" not in text:
            raise InputError(f"--tolerance expects CHECK=RTOL,ATOL, got {text!r}")
        key, _, values = text.partition("=")
        parts = [p.strip() for p in values.split(",")]
        if not key.strip() or len(parts) != 2:
            raise InputError(f"--tolerance expects CHECK=RTOL,ATOL, got {text!r}")
        try:
            rtol, atol = float(parts[0]), float(parts[1])
        except ValueError:
            raise InputError(f"--tolerance values must be numbers, got {text!r}") from None
        if rtol < 0 or atol < 0:
            raise InputError(f"--tolerance values must be non-negative, got {text!r}")
        return key.strip(), (rtol, atol)


_FIELDS = TolerancePolicy.__dataclass_fields__
# the default field values as objects: a policy holding these very objects and no override answers as the
# default policy does (compared by identity: 0.0 == -0.0, but their reprs differ)
_DEFAULT_K = _FIELDS["k"].default
_DEFAULT_OUTLIERS = _FIELDS["outlier_fraction"].default
_DEFAULT_LOW_OUTLIERS = _FIELDS["low_precision_outlier_fraction"].default
# the default policy's tolerances by (check id, quantity, dtype): Tolerance is frozen, so shared
_DEFAULT_ANSWERS: dict[tuple[str, str, str | None], Tolerance] = {}
_DEFAULT_ANSWERS_MAX = 4096


def as_policy(value: Any, *, name: str = "tolerances") -> TolerancePolicy:
    """``value`` as a :class:`TolerancePolicy`: a policy, a dict of overrides ``{check_id_or_quantity: (rtol,
    atol)}``, or None (the defaults).

    >>> as_policy({"loss.per_token": (1e-4, 1e-6)}).for_check("loss.per_token", "loss", "float32").rtol
    0.0001
    """
    if value is None:
        return TolerancePolicy()
    if isinstance(value, TolerancePolicy):
        return value
    if isinstance(value, dict):
        return TolerancePolicy(overrides=dict(value))  # which checks each override (pairs of numbers >= 0)
    raise InputError(
        f"{name} must be a grpo_check.compare.TolerancePolicy or a dict {{check_id: (rtol, atol)}}, "
        f"got {type(value).__name__}"
    )


def _dtype_name(dtype: Any) -> str:
    if dtype is None:
        return "float32"
    name = str(dtype)
    return name.removeprefix("torch.")

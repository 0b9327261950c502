"""The one message every tensor mismatch is reported with, in the style of ``torch.testing.assert_close``.

A header line, then one statistic per line::

    advantages (from the trainer's rewards) differs from the reference
    Mismatched elements: 12 / 96 (12.5%)
    Greatest absolute difference: 0.031 at step 0, prompt 1, generation 2, row 6 (trainer 0.69 vs reference 0.72; up to 1.7e-05 allowed)
    Greatest relative difference: 0.043 at step 0, prompt 1, generation 2, row 6 (up to 2.4e-05 allowed)
    Tolerance: rtol 1e-05, atol 1e-05 (advantages @ float32)

Example::

    >>> from grpo_check.findings import Where
    >>> from grpo_check.compare.mismatch import Extreme, mismatch_message
    >>> at = Where(prompt=1, generation=0, row=2)
    >>> print(mismatch_message("advantages", mismatched=1, compared=4,
    ...       greatest_absolute=Extreme(0.5, 1e-5, at, 1.0, 0.5), greatest_relative=Extreme(1.0, 2e-5, at, 1.0, 0.5),
    ...       tolerance="rtol 1e-05, atol 1e-05"))
    advantages differs from the reference
    Mismatched elements: 1 / 4 (25.0%)
    Greatest absolute difference: 0.5 at prompt 1, generation 0, row 2 (trainer 1 vs reference 0.5; up to 1e-05 allowed)
    Greatest relative difference: 1 at prompt 1, generation 0, row 2 (up to 2e-05 allowed)
    Tolerance: rtol 1e-05, atol 1e-05
"""

from __future__ import annotations

import dataclasses

from grpo_check.findings import Where

__all__ = ["Extreme", "NonFinite", "mismatch_message"]


@dataclasses.dataclass(frozen=True)
class Extreme:
    """The element where one difference (absolute or relative) is greatest: its size, what was allowed there,
    where it is, and the two values."""

    difference: float
    allowed: float
    where: Where
    actual: float
    expected: float


@dataclasses.dataclass(frozen=True)
class NonFinite:
    """Compared elements that are NaN/Inf on one side only: how many, the first, which side, whether the
    reference is non-finite there too (the NaN then comes from an upstream input)."""

    count: int
    where: Where
    actual: float
    expected: float
    side: str
    inherited: bool = False


def _at(where: Where) -> str:
    text = where.describe()
    return f" at {text}" if text != "-" else ""


def mismatch_message(
    label: str,
    *,
    mismatched: int,
    compared: int,
    greatest_absolute: Extreme | None = None,
    greatest_relative: Extreme | None = None,
    tolerance: str = "",
    outlier_budget: float = 0.0,
    nonfinite: NonFinite | None = None,
    first: Extreme | None = None,
    sides: tuple[str, str] = ("trainer", "reference"),
) -> str:
    """The message of a tensor that differs from its reference (``label``: what the tensor is).

    ``mismatched`` of ``compared`` elements are beyond tolerance (or non-finite: ``nonfinite``);
    ``greatest_absolute``/``greatest_relative`` are the elements with the greatest |difference| and
    |difference| / |expected|; ``first`` is the first differing element of an exactly compared tensor (a
    boolean mask); ``sides`` names the two tensors (``("actual", "expected")`` in assertions)."""
    actual, expected = sides
    share = mismatched / compared if compared else 0.0
    budget = f"; outlier budget {outlier_budget:.2%}" if outlier_budget > 0 else ""
    lines = [
        f"{label} differs from the reference",
        f"Mismatched elements: {mismatched} / {compared} ({share:.1%}){budget}",
    ]
    if nonfinite is not None:
        lines.append(
            f"Non-finite values{_at(nonfinite.where)}: {actual} {nonfinite.actual:.6g} vs {expected} "
            f"{nonfinite.expected:.6g} (the first of {nonfinite.count}; NaN/Inf on the {nonfinite.side} side)"
        )
        if nonfinite.inherited:
            lines.append(
                f"The {expected} fed the same inputs is non-finite there too: the NaN/Inf comes from an upstream tensor"
            )
    if first is not None:
        lines.append(
            f"First mismatch{_at(first.where)}: {actual} {first.actual:g} vs {expected} {first.expected:g}"
        )
    if greatest_absolute is not None:
        g = greatest_absolute
        lines.append(
            f"Greatest absolute difference: {g.difference:.3g}{_at(g.where)} ({actual} {g.actual:.6g} vs {expected} "
            f"{g.expected:.6g}; up to {g.allowed:.3g} allowed)"
        )
    if greatest_relative is not None:
        g = greatest_relative
        lines.append(
            f"Greatest relative difference: {g.difference:.3g}{_at(g.where)} (up to {g.allowed:.3g} allowed)"
        )
    if tolerance:
        lines.append(f"Tolerance: {tolerance}")
    return "\n".join(lines)

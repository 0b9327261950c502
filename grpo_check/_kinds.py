"""Predicates for argument checks. To Python a bool is an int; here it is never a count or a tolerance.

>>> is_whole_number(3), is_whole_number(True), is_whole_number(3.0)
(True, False, False)
>>> is_nonnegative_number(0.5), is_nonnegative_number(float("nan")), is_nonnegative_number("1")
(True, False, False)
"""

from __future__ import annotations

from typing import Any


def is_whole_number(value: Any) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real_number(value: Any) -> bool:
    """An int or a float, not a bool (NaN and infinities included)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_nonnegative_number(value: Any) -> bool:
    """A real number ≥ 0 (NaN is not)."""
    return is_real_number(value) and value >= 0

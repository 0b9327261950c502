"""Predicates for argument checks. To Python a bool is an int; here it is never a count or a tolerance.

>>> import numpy
>>> is_whole_number(3), is_whole_number(numpy.int64(3)), is_whole_number(True), is_whole_number(3.0)
(True, True, False, False)
>>> is_nonnegative_number(0.5), is_nonnegative_number(float("nan")), is_nonnegative_number("1")
(True, False, False)
"""

from __future__ import annotations

import numbers
from typing import Any


def is_whole_number(value: Any) -> bool:
    """An integer (Python's, or numpy's: any ``numbers.Integral``), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real_number(value: Any) -> bool:
    """An integer or a float (any ``numbers.Real``, NaN and infinities included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_nonnegative_number(value: Any) -> bool:
    """A real number ≥ 0 (NaN is not)."""
    return is_real_number(value) and value >= 0

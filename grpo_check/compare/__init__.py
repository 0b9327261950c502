"""Stage-by-stage comparison of a captured trace against the float64 reference (or another trace).

Example::

    >>> from grpo_check.compare import compare, check, compare_step, TolerancePolicy
    >>> from grpo_check.compare.synthetic import make_trace
    >>> result = compare(make_trace(steps=1), tolerances=TolerancePolicy(overrides={"loss.per_token": (1e-4, 1e-6)}))
    >>> result.exit_code()
    0
"""

from grpo_check.compare.engine import check, compare, compare_step
from grpo_check.compare.tolerances import Tolerance, TolerancePolicy

__all__ = ["Tolerance", "TolerancePolicy", "check", "compare", "compare_step"]

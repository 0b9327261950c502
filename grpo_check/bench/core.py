"""Shared benchmark plumbing: the figure record, machine description, robust timing, ratio intervals."""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


@dataclasses.dataclass
class BenchFigure:
    """One measured figure with its target. ``ok`` is None where no target applies."""

    name: str
    value: float
    unit: str
    target: str
    ok: bool | None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def machine_description() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def median_time(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def least_time(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> float:
    """Least wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs: for work of a few
    milliseconds on a shared machine, where any longer run was disturbed."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


# Student's t, two-sided 95 %: t(0.975, df) for df = 1..30 (above 30 the df = 30 value: slightly wide)
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def ratio_interval(round_ratios: Sequence[float]) -> tuple[float, float] | None:
    """95 % interval of a step-time ratio from its round-by-round values (each round against its own ``off``
    arm): Student's t over the rounds' log-ratios, back on the ratio scale. ``None`` below two rounds.

    Rounds are few (3 to 6), so the t quantile, not 1.96: with 3 rounds the interval is about 2.2 times as
    wide as a normal one would claim.

    >>> low, high = ratio_interval([1.2, 1.3, 1.25])
    >>> round(low, 3), round(high, 3)
    (1.131, 1.38)
    """
    interval = difference_interval(_log_ratios(round_ratios))
    return None if interval is None else (math.exp(interval[0]), math.exp(interval[1]))


def difference_interval(round_values: Sequence[float]) -> tuple[float, float] | None:
    """95 % interval of the mean of round-by-round values on their own scale (a difference of two ratios,
    say): Student's t. ``None`` below two finite values.

    >>> low, high = difference_interval([0.10, 0.20, 0.30])
    >>> round(low, 4), round(high, 4)
    (-0.0484, 0.4484)
    """
    values = [v for v in round_values if math.isfinite(v)]
    if len(values) < 2:
        return None
    centre = statistics.fmean(values)
    half_width = _t_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return centre - half_width, centre + half_width


def rounds_to_decide(round_ratios: Sequence[float], target: float, most: int = 200) -> int | None:
    """About how many rounds, at the spread these rounds show, would put the target outside the 95 %
    interval (the fewest n with t(n−1)·sd/√n < |mean log-ratio − log target|); ``None`` below two rounds
    or when even ``most`` rounds would not (the figure sits on the target).

    >>> rounds_to_decide([1.00, 1.06, 1.03, 1.09, 1.05, 1.01], 1.03)
    51
    """
    return _rounds_needed(_log_ratios(round_ratios), math.log(target), most)


def rounds_to_decide_difference(round_values: Sequence[float], target: float, most: int = 200) -> int | None:
    """:func:`rounds_to_decide` for values on their own scale (:func:`difference_interval`).

    >>> rounds_to_decide_difference([0.02, 0.08, 0.05, 0.11, 0.07, 0.03], 0.05)
    47
    """
    return _rounds_needed([v for v in round_values if math.isfinite(v)], target, most)


def _rounds_needed(values: Sequence[float], target: float, most: int) -> int | None:
    """The fewest n with t(n−1)·sd/√n < |mean − target| at the values' spread (``None``: not even ``most``)."""
    if len(values) < 2:
        return None
    distance = abs(statistics.fmean(values) - target)
    spread = statistics.stdev(values)
    for rounds in range(2, most + 1):
        if _t_975(rounds - 1) * spread / math.sqrt(rounds) < distance:
            return rounds
    return None


def _log_ratios(round_ratios: Sequence[float]) -> list[float]:
    return [math.log(r) for r in round_ratios if r > 0 and math.isfinite(r)]


def _t_975(degrees_of_freedom: int) -> float:
    return _T_975[min(degrees_of_freedom, len(_T_975)) - 1]


def target_verdict(interval: tuple[float, float] | None, target: float) -> str | None:
    """Whether an upper-bound target is met beyond the noise the interval shows: ``"met"`` (the whole
    interval is at or below it), ``"missed"`` (the whole interval is above it) or ``"undecided"`` (the
    interval straddles it: more rounds, or a quieter machine, are needed to tell). ``None`` without one."""
    if interval is None:
        return None
    low, high = interval
    if high <= target:
        return "met"
    if low > target:
        return "missed"
    return "undecided"

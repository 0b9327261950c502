"""What a check costs inside training against what the same check costs in a warm loop.

Trains the demo configuration (the trainer ``grpo-check bench --only overhead`` uses) with ``attach(every=1)``
and times every ``check_captured_step`` call as training makes it ("live"); then checks each captured step
again ``--repeats`` times in a row and keeps the least time of each ("warm"). Prints, per kind of step
(generation, micro-batch), the median of both. The gap is what cold caches cost a check that runs between
the trainer's own operations.

Usage::

    .venv/bin/python benchmarks/live_vs_warm.py
    .venv/bin/python benchmarks/live_vs_warm.py --threads 1 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=14, help="optimizer steps of the timed run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--repeats", type=int, default=30, help="warm checks of each captured step")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import grpo_check.trl.background as background
    from grpo_check.bench.overhead import _timed_run, demo_trainer_factory

    check = background.check_captured_step
    calls: list[tuple[float, Any, Any, dict[str, Any]]] = []

    def timed(step: Any, spec: Any, **settings: Any) -> Any:
        start = time.perf_counter()
        out = check(step, spec, **settings)
        calls.append((time.perf_counter() - start, step, spec, settings))
        return out

    background.check_captured_step = timed
    try:
        _timed_run(demo_trainer_factory(), 1, 4)  # warm-up run: imports, first calls
        calls.clear()
        _timed_run(demo_trainer_factory(), 1, args.steps)
    finally:
        background.check_captured_step = check

    by_scope: dict[str, list[tuple[float, Any, Any, dict[str, Any]]]] = {}
    for call in calls:
        by_scope.setdefault(str(call[1].meta.get("scope")), []).append(call)
    print(f"demo, every step, {args.threads} torch thread(s), {args.steps} steps")
    for scope, items in sorted(by_scope.items()):
        live = statistics.median(seconds for seconds, *_ in items)
        warm = []
        for _, step, spec, settings in items:
            least = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                check(step, spec, **settings)
                least = min(least, time.perf_counter() - start)
            warm.append(least)
        print(
            f"  {scope:<12} {len(items):>3} checked: live {live * 1e3:.2f} ms (median), "
            f"warm {statistics.median(warm) * 1e3:.2f} ms (median of each step's least of {args.repeats})"
        )


if __name__ == "__main__":
    main()

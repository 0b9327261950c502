"""Profile the per-step check suite (invariants + compare_step) and print the top hotspots.

The step is the one ``grpo-check bench --only throughput`` measures: a correct float32 step from
:func:`grpo_check.compare.synthetic.make_step` (dapo, β = 0.04, G = 8, 500-token completions).

Prints, per size: the median wall time of ``run_invariants`` and of ``compare_step`` (tokens/s), the time
of each invariant inside one shared per-step cache (the first check to need a shared tensor pays for it),
and cProfile's top functions by own time with their call counts. Wall times on a loaded machine are noisy:
compare figures taken in the same run, with ``--threads 1``.

Usage::

    .venv/bin/python benchmarks/profile_checks.py                 # 100k and 1M tokens, 1 thread
    .venv/bin/python benchmarks/profile_checks.py --sizes 100000 --top 15 --part invariants
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from collections.abc import Callable

_COMPLETION_LENGTH = 500


def _median_seconds(function: Callable[[], object], repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _per_check(step, spec, repeats: int) -> list[tuple[float, str]]:
    from grpo_check._step_cache import step_cache
    from grpo_check.invariants import REGISTRY

    totals: dict[str, list[float]] = {check_id: [] for check_id in REGISTRY}
    for _ in range(repeats):
        with step_cache():
            for check in REGISTRY.values():
                start = time.perf_counter()
                check.run(step, spec)
                totals[check.id].append(time.perf_counter() - start)
    return sorted(((statistics.median(t), check_id) for check_id, t in totals.items()), reverse=True)


def _hotspots(function: Callable[[], object], top: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    function()
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="tokens per step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable A/B)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=20, help="hotspots to print per part")
    parser.add_argument("--part", choices=("all", "invariants", "compare"), default="all")
    args = parser.parse_args(argv)

    import torch

    from grpo_check.compare import compare_step
    from grpo_check.compare.synthetic import make_step
    from grpo_check.config import GRPOSpec
    from grpo_check.invariants import run_invariants

    torch.set_num_threads(args.threads)
    spec = GRPOSpec(num_generations=8, loss_type="dapo", beta=0.04, max_completion_length=_COMPLETION_LENGTH)
    parts: dict[str, Callable] = {}
    if args.part in ("all", "invariants"):
        parts["run_invariants"] = run_invariants
    if args.part in ("all", "compare"):
        parts["compare_step"] = compare_step
    for size in args.sizes:
        n_prompts = max(1, size // _COMPLETION_LENGTH // spec.num_generations)
        step = make_step(spec, n_prompts=n_prompts, completion_length=_COMPLETION_LENGTH, vocab_size=50)
        tokens = int(step["completion_mask"].numel())
        print(
            f"=== {tokens:,} tokens ({tokens // _COMPLETION_LENGTH} rows), {torch.get_num_threads()} thread(s)"
        )
        for name, part in parts.items():
            seconds = _median_seconds(lambda part=part, step=step: part(step, spec), args.repeats)
            print(f"{name:>15}: {seconds * 1e3:9.1f} ms  {tokens / seconds:>12,.0f} tokens/s")
        if "run_invariants" in parts:
            print("--- invariants inside one step cache (ms, median)")
            for seconds, check_id in _per_check(step, spec, args.repeats)[:15]:
                print(f"{seconds * 1e3:9.2f}  {check_id}")
        for name, part in parts.items():
            print(f"--- {name}: top {args.top} by own time")
            _hotspots(lambda part=part, step=step: part(step, spec), args.top)


if __name__ == "__main__":
    main()

"""Where live checking's time goes on the training process: the demo trainer with ``attach(every=1)``.

Trains the demo configuration (the first cell of the fast matrix; the same one ``grpo-check bench --only
overhead`` uses) twice in one process: a short warm-up run, then a timed run. It prints the mean step time
and, per optimizer step, the time spent in each part of checking: the reference's forward passes, the
invariants, the comparison, the diagnoses, and capture; then the mean cost of one check by kind of step.
Parts nest: "micro-batch checks, total" includes everything done for the micro-batches of one window (the
forwards, comparison, diagnoses, invariants); "capture + checks" includes the checks of the step captured.

Usage::

    .venv/bin/python benchmarks/profile_live.py                  # inline checking, 12 steps
    .venv/bin/python benchmarks/profile_live.py --background --threads 1
    .venv/bin/python benchmarks/profile_live.py --every 10 --steps 40   # per checked step
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator


def _instrument(totals: dict[str, float], active: list[bool], per_check: dict[str, list[float]]) -> None:
    """Wrap the parts of checking with timers (summed while ``active[0]``); ``per_check`` gets, per kind of
    step (generation, micro_batch), the total seconds and count of ``check_captured_step`` calls."""
    import grpo_check.compare.engine as engine
    import grpo_check.diagnose as diagnose_module
    import grpo_check.invariants.registry as registry
    import grpo_check.trl.background as background
    from grpo_check.reference import logps as reference_logps
    from grpo_check.trl import capture

    def timed(owner, name, label):
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if active[0]:
                    totals[label] += time.perf_counter() - start

        setattr(owner, name, wrapper)

    timed(reference_logps, "logps_from_model", "forward passes (policy + reference model)")
    timed(
        registry, "_run_step_into", "invariants"
    )  # what run_invariants and the live check's run_step_into run
    timed(diagnose_module, "diagnose", "diagnoses")
    timed(engine, "compare_stages", "comparison, stage by stage")
    timed(capture.Attachment, "_record_micro_batch", "capture + checks of micro-batches")
    timed(capture.Attachment, "_record_generation", "capture + checks of generation steps")
    timed(capture.Attachment, "_flush_window", "micro-batch checks, total (per accumulation window)")
    timed(capture.Attachment, "_collect_background", "collecting background results")
    timed(background.BackgroundChecker, "submit", "submitting to the background helper")

    original_check = background.check_captured_step

    @functools.wraps(original_check)
    def check_by_scope(step, *args, **kwargs):  # the cost of ONE check, by the kind of step checked
        start = time.perf_counter()
        try:
            return original_check(step, *args, **kwargs)
        finally:
            if active[0]:
                scope = step.meta.get("scope", "step")
                per_check[scope][0] += time.perf_counter() - start
                per_check[scope][1] += 1

    background.check_captured_step = check_by_scope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps")
    parser.add_argument("--background", action="store_true", help="attach(..., background=True)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--every", type=int, default=1, help="attach(every=N): with N > 1 the parts are per checked step"
    )
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from grpo_check.bench.overhead import _timed_run, demo_trainer_factory

    totals: dict[str, float] = defaultdict(float)
    active = [False]
    per_check: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    _instrument(totals, active, per_check)
    make_trainer = demo_trainer_factory()
    if args.background:
        from grpo_check.trl.background import shared_checker

        shared_checker().warm()

    @contextlib.contextmanager
    def measuring() -> Iterator[None]:
        active[0] = True
        try:
            yield
        finally:
            active[0] = False

    _timed_run(make_trainer, args.every, 3, args.background)  # warm-up: imports, first-call costs
    run = _timed_run(make_trainer, args.every, args.steps, args.background, during_training=measuring)
    times = run.step_seconds
    every = "every step" if args.every == 1 else f"every {args.every} steps"
    print(
        f"demo, {every}, {'background' if args.background else 'inline'}, "
        f"{torch.get_num_threads()} torch thread(s): mean step {statistics.fmean(times) * 1000:.1f} ms "
        f"over {len(times)} steps (checking included)"
    )
    if args.every > 1:  # steps 0, N, 2N, ... are checked
        checked = [t for index, t in enumerate(times) if index % args.every == 0]
        unchecked = [t for index, t in enumerate(times) if index % args.every]
        print(
            f"checked steps: {', '.join(f'{t * 1000:.1f}' for t in checked)} ms; the others: "
            f"{min(unchecked) * 1000:.1f} to {max(unchecked) * 1000:.1f} ms (a step that generates takes longer)"
        )
    per, count = ("optimizer step", args.steps) if args.every == 1 else ("checked step", len(checked))
    print(f"per {per} (ms):")
    for label, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {seconds / count * 1000:7.2f}  {label}")
    if per_check:  # inline checking (in the background the helper runs them)
        print("one check (comparison, diagnoses, invariants; no forward), mean (ms):")
        for scope, (seconds, calls) in sorted(per_check.items()):
            print(f"  {seconds / calls * 1000:7.2f}  a {scope.replace('_', '-')} step ({calls:.0f} checked)")


if __name__ == "__main__":
    main()

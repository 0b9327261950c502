"""What Python's garbage collector does during the overhead bench's runs, and how much of it checking causes.

Trains the demo configuration (the trainer ``grpo-check bench --only overhead`` uses) for ``--steps`` steps per
run, alternating a run without grpo-check and a run with ``attach(every=1)``, ``--runs`` times each, the way
the bench times them. Per run it prints the mean step (first 2 steps dropped) and each collector
generation's count and total time, split into collections during ``train()`` before its first step
(transformers' Trainer starts training with ``accelerator.free_memory()``, a full collection) and during
the steps; then how many objects the collector tracks after the run. Last, how long one full collection of
this process takes.

Usage::

    .venv/bin/python benchmarks/gc_cost.py                  # 3 runs of each, 42 steps
    .venv/bin/python benchmarks/gc_cost.py --runs 4 --steps 12
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each arm (off, every step)")
    parser.add_argument("--steps", type=int, default=42, help="optimizer steps per run")
    args = parser.parse_args(argv)

    from transformers import TrainerCallback

    from grpo_check.bench.overhead import WARMUP_STEPS, _timed_run, demo_trainer_factory

    # (before the first step?, generation) -> durations of the collections in the current run's train()
    collections: dict[tuple[bool, int], list[float]] = defaultdict(list)
    started = [0.0]
    training = [False]
    stepping = [False]

    def on_collection(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif training[0]:
            collections[(not stepping[0], info["generation"])].append(time.perf_counter() - started[0])

    @contextlib.contextmanager
    def while_training() -> Iterator[None]:
        training[0], stepping[0] = True, False
        try:
            yield
        finally:
            training[0] = False

    class FirstStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            stepping[0] = True

    demo_trainer = demo_trainer_factory()

    def make_trainer(work):
        trainer = demo_trainer(work)
        trainer.add_callback(FirstStep())
        return trainer

    def described(before: bool) -> str:
        return (
            ", ".join(
                f"gen {generation}: {len(times)} ({sum(times) * 1e3:.1f} ms)"
                for (when, generation), times in sorted(collections.items())
                if when == before
            )
            or "none"
        )

    _timed_run(make_trainer, 1, 3)  # warm-up: imports and first-call costs
    gc.callbacks.append(on_collection)
    try:
        print(f"demo trainer, {args.steps} steps per run; collections in train(): count (total ms)")
        for _ in range(args.runs):
            for every, label in ((None, "off"), (1, "every step")):
                collections.clear()
                run = _timed_run(make_trainer, every, args.steps, during_training=while_training)
                timed = run.step_seconds[WARMUP_STEPS:]
                print(
                    f"  {label:>10}: mean step {statistics.fmean(timed) * 1e3:5.1f} ms; before the first step: "
                    f"{described(True)}; during the steps: {described(False)}; "
                    f"{len(gc.get_objects()):,} objects tracked after"
                )
    finally:
        gc.callbacks.remove(on_collection)
    start = time.perf_counter()
    gc.collect()
    print(
        f"one full collection now: {(time.perf_counter() - start) * 1e3:.1f} ms for "
        f"{len(gc.get_objects()):,} tracked objects"
    )


if __name__ == "__main__":
    main()

"""What checking the micro-batches of one accumulation window as ONE step could save, measured as a bound.

The demo's accumulation window holds two micro-batches, and live checking runs one full check per
micro-batch (about 6–7 ms each on the development machine, most of it a fixed cost whatever the rows).
Checking the window as one step would pay that fixed cost once. This experiment measures the most such a
merge could save: a third arm checks every step but runs the checks of only the FIRST micro-batch of each
window (the other micro-batches are captured and get their forward pass, and are not checked). A merged
check would cost at least that much, because it checks twice the rows, so the gap between this arm and
``every_1`` bounds the saving from above.

Three arms (off, every step, every step with the first micro-batch only) are interleaved round by round with
a fresh trainer per arm and round, as in ``grpo-check bench --only overhead``; the ratios carry the same
95 % intervals (Student's t on the round log-ratios). This is an experiment for deciding whether to build
the merge, not a product figure: it leaves half the micro-batches unchecked.

Usage::

    .venv/bin/python benchmarks/merge_window_estimate.py                 # 10 rounds x 12 steps
    .venv/bin/python benchmarks/merge_window_estimate.py --rounds 20 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import sys


def _first_micro_batch_only() -> contextlib.AbstractContextManager[None]:
    """While open, only the first micro-batch of each accumulation window is checked (the rest: no checks)."""
    from grpo_check.bench.overhead import check_captured_step_replaced

    def first_only(real_check):
        def check_first_only(step, *args, **kwargs):
            if step.meta.get("scope") == "micro_batch" and step.meta.get("micro_batch"):
                return [], []
            return real_check(step, *args, **kwargs)

        return check_first_only

    return check_captured_step_replaced(first_only)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run (the first 2 dropped)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)

    import torch

    from grpo_check.bench.core import ratio_interval
    from grpo_check.bench.overhead import WARMUP_STEPS, _timed_run, demo_trainer_factory

    if args.threads:
        torch.set_num_threads(args.threads)
    make_trainer = demo_trainer_factory()
    arms = {
        "off": None,
        "every_1": contextlib.nullcontext,
        "every_1_first_micro_batch": _first_micro_batch_only,
    }
    per_step: dict[str, list[float]] = {arm: [] for arm in arms}
    for round_number in range(1, args.rounds + 1):
        for arm, context in arms.items():
            with context() if context is not None else contextlib.nullcontext():
                run = _timed_run(make_trainer, None if context is None else 1, args.steps)
            timed = run.step_seconds[WARMUP_STEPS:]
            per_step[arm].append(sum(timed) / len(timed))
        off = per_step["off"][-1]
        shown = ", ".join(
            f"{arm} {values[-1] / off:.3f}x" for arm, values in per_step.items() if arm != "off"
        )
        print(f"round {round_number}/{args.rounds}: {shown}", file=sys.stderr)
    off_mean = sum(per_step["off"]) / len(per_step["off"])
    print(
        f"demo, {torch.get_num_threads()} torch thread(s), {args.rounds} rounds x {args.steps} steps; "
        f"step time without checking {off_mean * 1e3:.1f} ms"
    )
    means = {}
    for arm, values in per_step.items():
        if arm == "off":
            continue
        means[arm] = sum(values) / len(values) / off_mean
        ratios = [on / off for on, off in zip(values, per_step["off"], strict=True)]
        interval = ratio_interval(ratios)
        bracket = "" if interval is None else f" [{interval[0]:.3f}–{interval[1]:.3f}]"
        print(f"  {arm:>26}: {means[arm]:.3f}x{bracket}")
    saving = means["every_1"] - means["every_1_first_micro_batch"]
    print(f"  the most a merged window check could save: {saving:.3f} of a step without checking")


if __name__ == "__main__":
    main()

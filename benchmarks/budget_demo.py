"""What ``attach(budget=...)`` checks and what every attachment reports it cost, on the demo trainer.

Trains the demo configuration (the first cell of the fast matrix, the one ``grpo-check bench --only overhead``
uses) for ``--steps`` optimizer steps, once per attachment: ``every=1``, ``every=10`` and ``budget=B`` for
each ``--budget``. Prints, per run, the steps that were checked and ``result().metadata["checking"]``:
the checking time the attachment measured on the training process over the rest of the training time
(``overhead``), with and without the first check (which also pays one-time costs: imports, first calls).

Usage::

    .venv/bin/python benchmarks/budget_demo.py                       # 60 steps, budget 0.03
    .venv/bin/python benchmarks/budget_demo.py --steps 120 --budget 0.03 --budget 0.1
"""

from __future__ import annotations

import argparse


def _run(steps: int, **attach_kwargs) -> tuple[list[int], dict]:
    from grpo_check.demo.matrix import cells
    from grpo_check.demo.run import run_cell

    run = run_cell(cells("fast")[0], steps=steps, **attach_kwargs)
    checked = sorted({s.meta["step"] for s in run.trace.steps if s.meta.get("scope") == "micro_batch"})
    return checked, run.result.metadata["checking"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--budget", type=float, action="append", help="repeatable (default: 0.03)")
    args = parser.parse_args(argv)

    _run(3)  # warm-up: imports and first calls, so that no run below pays them alone
    runs = [{"every": 1}, {"every": 10}] + [{"budget": b} for b in (args.budget or [0.03])]
    print(f"demo trainer, {args.steps} optimizer steps per run")
    for kwargs in runs:
        checked, cost = _run(args.steps, **kwargs)
        label = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        shown = ", ".join(map(str, checked)) if len(checked) <= 8 else f"{len(checked)} of {args.steps}"
        print(
            f"  attach({label}): checked {shown}; overhead {cost['overhead']:.3f} "
            f"({cost['checking_seconds']:.2f} s of checking in {cost['training_seconds']:.2f} s)"
        )


if __name__ == "__main__":
    main()

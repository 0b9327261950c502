"""One rank of a multi-process demo cell (started by ``torch.distributed.run``; not meant to be run by hand).

Each rank builds the same trainer, attaches the capture with live checking, trains, and writes
``<out>/rank<r>/trace`` (its micro-batches; rank 0 also the gathered generation batches),
``<out>/rank<r>/result.json`` and, on rank 0, ``<out>/rank0/log_history.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpo_check.demo.worker")
    parser.add_argument("--cell", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--budget", type=float, default=None, help="attach(budget=...) instead of every step")
    parser.add_argument(
        "--forward-rows", choices=("subset", "all"), default="subset", help="attach(forward_rows=...)"
    )
    args = parser.parse_args(argv)

    from grpo_check.demo.matrix import MATRIX
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl.runner import train_checked

    cell = next(c for c in MATRIX if c.name == args.cell)
    out = Path(args.out)
    launch_rank = os.environ.get("RANK", "0")  # each rank saves its own copy of the (identical) policy
    trainer = build_trainer(cell, out / f"work-{launch_rank}", seed=args.seed, steps=args.steps)
    rank = int(trainer.accelerator.process_index)
    rank_dir = out / f"rank{rank}"
    rank_dir.mkdir(parents=True, exist_ok=True)
    run = train_checked(
        trainer, out_dir=rank_dir / "trace", live=True, budget=args.budget, forward_rows=args.forward_rows
    )
    (rank_dir / "result.json").write_text(run.result.to_json() + "\n")
    if rank == 0:
        (rank_dir / "log_history.json").write_text(json.dumps(run.log_history, default=str) + "\n")
    return run.outcome.exit_code


if __name__ == "__main__":
    from grpo_check.trl.runner import end_rank

    end_rank(main())

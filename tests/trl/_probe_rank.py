"""One rank of the two-process probing test (started by torch.distributed.run from test_probe_trl.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    from grpo_check.demo.matrix import Cell
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl import attach
    from grpo_check.trl.probe import probe_trainer_outcome

    out = Path(sys.argv[1])
    overrides = {
        "loss_type": "dapo",
        "beta": 0.04,
        "delta": 1.5,
        "top_entropy_quantile": 0.5,
        "gradient_accumulation_steps": 2,
        "steps_per_generation": 4,
    }
    launch_rank = os.environ.get("RANK", "0")
    trainer = build_trainer(
        Cell("probe-2proc", overrides, steps=1), out / f"work-{launch_rank}", dataset_size=16
    )
    before = probe_trainer_outcome(trainer)
    attachment = attach(trainer, live=False)
    trainer.train()
    trace = attachment.close()
    step = next(s for s in trace.steps if s.meta.get("scope") == "micro_batch")
    captured = probe_trainer_outcome(trainer, step)
    rank = int(trainer.accelerator.process_index)
    report = {
        "processes": int(trainer.accelerator.num_processes),
        "ok": [before.ok, captured.ok],
        "branches": captured.branches,
        "problems": [
            f.message() for o in (before, captured) for f in o.findings if f.verdict.value != "pass"
        ],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    from grpo_check.trl.runner import end_rank

    main()
    end_rank(0)

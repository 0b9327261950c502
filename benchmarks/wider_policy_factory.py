"""A trainer factory for ``grpo-check bench --trainer``: the demo configuration on a wider, deeper policy.

The demo's policy (2 layers, hidden size 32) is so small that a whole TRL step is mostly Python and Hugging
Face overhead, and checking's fixed cost per step weighs as much as it ever can. This factory builds the
same trainer (the first cell of the fast matrix: same task, rewards, GRPOConfig and seed) on a Llama of
``HIDDEN_SIZE`` and ``NUM_LAYERS`` (2.37M parameters, 119 times the demo policy's 20k), so that the model's own
compute takes a larger share of the step, as it does in real runs. Nothing is downloaded: the model is
built from a config, as the demo's is.

Usage::

    grpo-check bench --only overhead --rounds 20 --trainer benchmarks/wider_policy_factory.py:build_trainer
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

HIDDEN_SIZE = 256
NUM_LAYERS = 4


def build_trainer(steps: int = 2) -> Any:
    from grpo_check.bench.overhead import demo_trainer_factory

    work = tempfile.mkdtemp(prefix="grpo-check-bench-wide-")
    trainer = demo_trainer_factory(hidden_size=HIDDEN_SIZE, num_layers=NUM_LAYERS)(Path(work))
    trainer.args.max_steps = steps
    weakref.finalize(trainer, shutil.rmtree, work, True)  # the saved policy goes with the trainer
    return trainer

"""Trainer factories for ``grpo-check compare --trainer`` in tests/trl/test_fullcheck.py (not a test module).

Tiny demo policy, toy task, one or two optimizer steps; nothing downloaded.
"""

from __future__ import annotations

import os
import signal
import tempfile
from typing import Any

from grpo_check.demo.matrix import Cell
from grpo_check.demo.run import build_trainer as build_demo_trainer
from grpo_check.demo.task import correctness_reward
from grpo_check.zoo.mutants_trl_logps import LOGPS_HELPER_OVERRIDES, classic_logps_trainer


def _helper_trainer(steps: int, **bug: bool) -> Any:
    cell = Cell(name="logps-helper", overrides=LOGPS_HELPER_OVERRIDES, steps=steps)
    return build_demo_trainer(
        cell, tempfile.mkdtemp(), trainer_cls=classic_logps_trainer(**bug), dataset_size=16, steps=steps
    )


def helper_no_temperature(steps: int = 1) -> Any:
    return _helper_trainer(steps, temperature=False)


def helper_off_by_one(steps: int = 1) -> Any:
    return _helper_trainer(steps, shift=False)


def helper_faithful(steps: int = 1) -> Any:
    return _helper_trainer(steps)


_CALLS: list[int] = []


def _reward_that_stops(completions: list[str], **kwargs: Any) -> list[float | None]:
    """Scores like the demo's correctness reward; in the second optimizer step it fails as GRPO_CHECK_TEST_STOP
    says (the reward-row probe calls it again in the first step: those calls do not count)."""
    state = kwargs.get("trainer_state")
    step = len(_CALLS) if state is None else int(state.global_step)
    _CALLS.append(1)
    if step == 1:
        how = os.environ.get("GRPO_CHECK_TEST_STOP", "raise")
        if how == "raise":
            raise RuntimeError("reward server down")
        os.kill(os.getpid(), getattr(signal, how))
    return correctness_reward(completions=completions, **kwargs)


def stops_in_second_step(steps: int = 2) -> Any:
    trainer = build_demo_trainer(
        Cell(name="stops", overrides={}, steps=steps), tempfile.mkdtemp(), dataset_size=16
    )
    trainer.reward_funcs[0] = _reward_that_stops
    return trainer

"""History cases: numerical GRPO bugs that really shipped in a TRL release, found by running that release.

Each case is one trainer configuration (the portable demo trainer, :mod:`grpo_check.demo.portable`, with the
settings that trigger the bug), run **unmodified** on the last release that has the bug and on the release
that fixed it, each in its own environment (:mod:`grpo_check.zoo.history.envs`), checked live. A case
scores when the buggy release fails, its first divergence is in the stage the bug corrupts, the failure is
named as that bug (its fixing release and pull request: :mod:`grpo_check.trl.history`), and the fixing
release is clean. No TRL code is patched.

From the command line: ``grpo-check zoo --history`` (see ``docs/trl-versions.md``).

Example::

    >>> [case.bug.id for case in HISTORY_CASES][:2]
    ['trl-logps-no-attention-mask', 'trl-temperature-logps']
"""

from __future__ import annotations

import dataclasses
from typing import Any

from grpo_check.trl.history import SHIPPED_BUGS, ShippedBug

_BUGS = {bug.id: bug for bug in SHIPPED_BUGS}


@dataclasses.dataclass(frozen=True)
class HistoryCase:
    """A shipped bug, the buggy and fixing releases it is run on, and the settings that trigger it (GRPOConfig
    overrides of the portable demo trainer)."""

    bug: ShippedBug
    buggy: str
    fixed: str
    settings: dict[str, Any]

    @property
    def id(self) -> str:
        return self.bug.id


HISTORY_CASES: tuple[HistoryCase, ...] = (
    HistoryCase(  # T = 1: the temperature bug of the same releases stays out of the way
        _BUGS["trl-logps-no-attention-mask"], buggy="0.14.0", fixed="0.15.2", settings={"temperature": 1.0}
    ),
    HistoryCase(
        _BUGS["trl-temperature-logps"], buggy="0.15.2", fixed="0.16.1", settings={"temperature": 0.7}
    ),
    HistoryCase(
        _BUGS["trl-dapo-normaliser-spg"],
        buggy="1.9.0",
        fixed="1.9.1",
        settings={"loss_type": "dapo", "gradient_accumulation_steps": 2, "steps_per_generation": 4},
    ),
    HistoryCase(  # spg == GAS: the spg/GAS normaliser bug (fixed in 1.9.1) stays out of the way
        _BUGS["trl-num-items-truncated"],
        buggy="1.8.0",
        fixed="1.9.2",
        settings={
            "loss_type": "dapo",
            "mask_truncated_completions": True,
            "gradient_accumulation_steps": 2,
            "steps_per_generation": 2,
        },
    ),
    HistoryCase(
        _BUGS["trl-luspo-unmasked"],
        buggy="1.9.2",
        fixed="1.10.0",
        # long enough that some completions end early: with every row at full length the two forms agree
        settings={"loss_type": "luspo", "beta": 0.04, "max_completion_length": 16},
    ),
    HistoryCase(  # spg == GAS and no truncation masking: the other dapo normaliser bugs stay out of the way
        _BUGS["trl-entropy-bonus-normaliser"],
        buggy="1.9.2",
        fixed="1.10.0",
        settings={
            "loss_type": "dapo",
            "entropy_coef": 0.1,
            "gradient_accumulation_steps": 2,
            "steps_per_generation": 2,
        },
    ),
    HistoryCase(  # the default scale_rewards; grpo's per-sequence normaliser keeps the releases' dapo bug out
        _BUGS["trl-scale-rewards-swapped"],
        buggy="0.22.1",
        fixed="0.22.2",
        settings={"scale_rewards": "group", "loss_type": "grpo"},
    ),
    HistoryCase(  # every 4th completion unscorable (one per group of 4); grpo's per-sequence normaliser keeps
        # 1.6.0's dapo normaliser bug (which probing finds in a short accumulation window) out of it
        _BUGS["trl-unscorable-rows-counted"],
        buggy="1.5.1",
        fixed="1.6.0",
        settings={"unscorable_every": 4, "steps_per_generation": 2, "loss_type": "grpo"},
    ),
)


def select_history(only: list[str] | None = None) -> list[HistoryCase]:
    """The cases whose id contains one of ``only`` (all when empty)."""
    if not only:
        return list(HISTORY_CASES)
    return [case for case in HISTORY_CASES if any(pattern in case.id for pattern in only)]

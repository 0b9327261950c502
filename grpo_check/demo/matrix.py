"""The demo's configuration matrix: TRL settings chosen to *leave* the defaults that hide bugs.

Temperature bugs vanish at T=1, truncation bias at top_p=1, grouping bugs with one prompt per device,
normaliser bugs at steps_per_generation = gradient_accumulation_steps = 1 on one process (bug catalog,
"Settings that hide bugs"). Every cell below leaves at least one of those, and together they cover every
TRL loss type, token and sequence importance sampling, beta 0 and > 0, scale_rewards group/batch/none,
num_iterations 1 and 2, gradient accumulation 1 and 4 with steps_per_generation != GAS, temperature != 1,
top_p < 1, several prompts per micro-batch, a tokenizer whose pad token is its EOS token, left padding
(prompts have different lengths), two reward functions with unequal weights.

Example::

    >>> from grpo_check.demo.matrix import cells
    >>> [c.name for c in cells("fast")][:2]
    ['grpo-beta-T0.7-topp0.9-gas2-spg4', 'bnpo-batch-gas4-spg2-T1.3']
"""

from __future__ import annotations

import dataclasses
from typing import Any

from grpo_check.findings import InputError

# settings shared by every cell (a cell's overrides win)
BASE: dict[str, Any] = {
    "per_device_train_batch_size": 8,  # 2 prompts x G=4 per micro-batch: several prompts per device
    "num_generations": 4,
    "max_completion_length": 6,
    "learning_rate": 5e-3,
    "beta": 0.0,
    "temperature": 0.9,
    "gradient_accumulation_steps": 1,
    "steps_per_generation": None,
    # TRL 1.x defaults to bf16=True, which on CPU runs the policy under bf16 autocast: the demo trains in
    # float32 so the trainer is held to float32 tolerances (a bf16 run is compared at bf16 tolerances)
    "bf16": False,
}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One configuration of the matrix: GRPOConfig overrides plus demo-level switches."""

    name: str
    overrides: dict[str, Any]
    pad_is_eos: bool = False
    reward_weights: tuple[float, ...] | None = (1.0, 0.5)
    steps: int = 2
    fast: bool = False
    why: str = ""

    def config_kwargs(self) -> dict[str, Any]:
        kwargs = {**BASE, **self.overrides}
        if kwargs.get("steps_per_generation") is None:
            kwargs.pop("steps_per_generation")
        if self.reward_weights is not None:
            kwargs.setdefault("reward_weights", list(self.reward_weights))
        return kwargs


MATRIX: tuple[Cell, ...] = (
    Cell(
        "grpo-beta-T0.7-topp0.9-gas2-spg4",
        {
            "loss_type": "grpo",
            "beta": 0.04,
            "temperature": 0.7,
            "top_p": 0.9,
            "gradient_accumulation_steps": 2,
            "steps_per_generation": 4,
        },
        fast=True,
        why="grpo aggregation, k3 KL against a reloaded reference, truncated sampling, spg != GAS (old log-probs)",
    ),
    Cell(
        "bnpo-batch-gas4-spg2-T1.3",
        {
            "loss_type": "bnpo",
            "scale_rewards": "batch",
            "temperature": 1.3,
            "gradient_accumulation_steps": 4,
            "steps_per_generation": 2,
        },
        steps=1,
        fast=True,
        why="local token-mean normaliser under GAS=4, batch-level reward scaling",
    ),
    Cell(
        "dapo-seqIS-beta-padeos-iters2",
        {
            "loss_type": "dapo",
            "importance_sampling_level": "sequence",
            "beta": 0.04,
            "num_iterations": 2,
            "steps_per_generation": 2,
        },
        pad_is_eos=True,
        fast=True,
        why="global num_items_in_batch normaliser, GSPO sequence ratio, pad == eos tokenizer, reused batches",
    ),
    Cell(
        "drgrpo-none-iters2-gas2",
        {
            "loss_type": "dr_grpo",
            "scale_rewards": "none",
            "num_iterations": 2,
            "gradient_accumulation_steps": 2,
            "steps_per_generation": 2,
        },
        fast=True,
        why="B*L_max normaliser, unscaled advantages, second pass over the same generations (ratio != 1)",
    ),
    Cell(
        "cispo-T0.8-topp0.8",
        {"loss_type": "cispo", "temperature": 0.8, "top_p": 0.8, "epsilon_high": 1.5},
        why="CISPO clipped-weight REINFORCE with the global token normaliser",
    ),
    Cell(
        "sapo-beta-gas4-spg1",
        {
            "loss_type": "sapo",
            "beta": 0.02,
            "gradient_accumulation_steps": 4,
            "steps_per_generation": 1,
        },
        steps=1,
        why="soft gate, spg < GAS (a new generation every micro-batch)",
    ),
    Cell(
        "luspo-seqIS",
        {"loss_type": "luspo", "importance_sampling_level": "sequence", "num_iterations": 2},
        why="sequence-sum aggregation with GSPO ratios on a reused batch",
    ),
    Cell(
        "vespo-iters2",
        {"loss_type": "vespo", "num_iterations": 2, "steps_per_generation": 2},
        why="gamma-weighted REINFORCE (detached weights)",
    ),
    Cell(
        "grpo-normalize-then-sum",
        {"loss_type": "grpo", "multi_objective_aggregation": "normalize_then_sum", "top_p": 0.95},
        reward_weights=(0.7, 1.3),
        why="per-reward normalisation before the weighted sum",
    ),
    Cell(
        "dapo-mask-truncated-clip-higher",
        {
            "loss_type": "dapo",
            "mask_truncated_completions": True,
            "epsilon_high": 0.28,
            "num_iterations": 2,
            "max_completion_length": 16,  # long enough that some completions end in EOS
        },
        why="truncated completions dropped from the loss, asymmetric clipping",
    ),
)


def cells(matrix: str = "fast", only: list[str] | None = None) -> list[Cell]:
    """The cells of ``matrix`` (``"fast"`` or ``"full"``), optionally filtered by name substrings."""
    if matrix not in ("fast", "full"):
        raise InputError(f"matrix must be 'fast' or 'full', got {matrix!r}", field="matrix")
    chosen = [c for c in MATRIX if c.fast or matrix == "full"]
    if only:
        chosen = [c for c in MATRIX if any(pattern in c.name for pattern in only)]
        if not chosen:
            names = ", ".join(c.name for c in MATRIX)
            raise InputError(f"no matrix cell matches {only}; cells: {names}", field="only")
    return chosen

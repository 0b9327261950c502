"""Re-derive, don't trust: recompute from the batch what the loss receives, and hold the trainer to it.

A trainer hands its loss quantities it derived itself: the token count that normalises dapo/cispo/vespo
(``num_items_in_batch``), the completion mask (where each completion ends, which rows are truncated), the old
log-probs (or none, when it believes no optimizer step happened since generation), the tool mask, the
advantages of rows no reward function could score. Comparing the loss against a reference fed these same
quantities cannot catch a bug in them. This package recomputes each one independently, from the batch and the
recorded settings, written against the stage vocabulary of :mod:`grpo_check.trace.model` and independent of
any trainer:

==============================  ===========  ================================================================
check                           stage        re-derived from
==============================  ===========  ================================================================
rederive.completion_ends        batch        completion_ids and EVERY EOS id (tokenizer + generation config)
rederive.num_items_in_batch     loss         Σ completion_mask·tool_mask over the generation batch (N3)
rederive.old_logps_required     ratio        optimizer step at generation vs at use (P1)
rederive.tool_tokens_untrained  loss         tool_mask vs ∂loss/∂logps (M1)
rederive.unscorable_rows        advantages   rewards_per_func (R1), (A8)
==============================  ===========  ================================================================

They run wherever ``grpo_check.compare`` runs (registered as the ``re-derivations`` family through
:mod:`grpo_check.compare.hooks`).

Example::

    >>> import torch
    >>> from grpo_check.config import GRPOSpec
    >>> from grpo_check.trace.model import TraceStep
    >>> step = TraceStep(
    ...     tensors={"completion_ids": torch.tensor([[4, 7, 9], [4, 2, 0]]),
    ...              "completion_mask": torch.tensor([[1, 1, 1], [1, 1, 1]])},
    ...     meta={"eos_token_id_sources": {"tokenizer": [2], "generation_config": [7]}, "pad_token_id": 0})
    >>> finding = next(f for f in rederive_step(step, GRPOSpec()) if f.check_id == "rederive.completion_ends")
    >>> finding.verdict.value, finding.where.row
    ('fail', 0)
"""

from __future__ import annotations

from grpo_check.rederive.checks import FAMILY, REDERIVATIONS, Rederivation, rederive_step
from grpo_check.rederive.derive import (
    CompletionEnds,
    completion_ends,
    expected_completion_mask,
    loss_mask,
    loss_tokens_per_row,
    normalise_eos_ids,
    old_logps_required_by_schedule,
    optimizer_steps_between,
    unscorable,
    uses_global_token_count,
    window_token_normalizer,
)
from grpo_check.rederive.inputs import (
    EOS_SOURCES_KEY,
    GENERATION_LOSS_TOKENS_KEY,
    GENERATION_STEP_KEY,
    eos_ids_of,
    generation_loss_tokens,
    generation_step_of,
)


def _register_with_compare() -> None:
    from grpo_check.compare.hooks import register_step_checks

    register_step_checks(FAMILY, rederive_step, tuple(REDERIVATIONS))


_register_with_compare()

__all__ = [
    "EOS_SOURCES_KEY",
    "FAMILY",
    "GENERATION_LOSS_TOKENS_KEY",
    "GENERATION_STEP_KEY",
    "REDERIVATIONS",
    "CompletionEnds",
    "Rederivation",
    "completion_ends",
    "eos_ids_of",
    "expected_completion_mask",
    "generation_loss_tokens",
    "generation_step_of",
    "loss_mask",
    "loss_tokens_per_row",
    "normalise_eos_ids",
    "old_logps_required_by_schedule",
    "optimizer_steps_between",
    "rederive_step",
    "unscorable",
    "uses_global_token_count",
    "window_token_normalizer",
]

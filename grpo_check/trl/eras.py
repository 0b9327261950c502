"""Era-specific capture: the TRL releases whose ``GRPOTrainer`` internals the common hooks cannot reach.

The common hooks (:mod:`grpo_check.trl.hooks`) wrap named methods. TRL 0.14 has none to wrap between its
steps: one ``compute_loss`` call generates, scores, computes the advantages and the loss, and its per-token
log-probs come from a function defined inside it. There the tensors the loss used are read from that call's
own local variables as it returns (:func:`call_keeping_locals`), and the micro-batch is rebuilt under the
names the later releases return from ``_generate_and_score_completions`` (:func:`fused_step_output`).
Capture only: the values are TRL's, untouched; the hooks' gradient hooks are registered on TRL's own tensors.

Example::

    >>> def f(x):
    ...     y = x + 1
    ...     return y * 2
    >>> call_keeping_locals(f, 3)
    (8, {'x': 3, 'y': 4})
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

# the locals of TRL 0.14's compute_loss that make up one micro-batch
FUSED_LOCALS = (
    "prompt_inputs",
    "prompt_completion_ids",
    "completion_ids",
    "completion_mask",
    "advantages",
    "per_token_logps",
    "ref_per_token_logps",
)


def call_keeping_locals(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """``function(*args, **kwargs)`` and the local variables of that call as it returned.

    A profile function (``sys.setprofile``) watches for the return of the call's own frame; any profiler
    already set is called as well and restored afterwards. An exception propagates unchanged.
    """
    code = inspect.unwrap(getattr(function, "__func__", function)).__code__
    previous = sys.getprofile()
    kept: dict[str, Any] = {}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "return" and frame.f_code is code and not kept:
            kept.update(frame.f_locals)
        if previous is not None:
            previous(frame, event, arg)

    sys.setprofile(profile)
    try:
        result = function(*args, **kwargs)
    finally:
        sys.setprofile(previous)
    return result, kept


def fused_step_output(local: dict[str, Any], num_generations: int) -> dict[str, Any] | None:
    """The micro-batch TRL 0.14's ``compute_loss`` built, under the names later releases use (``None`` when a
    local is missing: a subclass that restructured ``compute_loss``).

    Each prompt row generated ``num_generations`` completions (``num_return_sequences``), so the prompt ids
    are the leading columns of ``prompt_completion_ids`` and the prompt mask repeats each prompt's mask.
    """
    if any(local.get(name) is None for name in FUSED_LOCALS):
        return None
    prompt_inputs = local["prompt_inputs"]
    completion_ids = local["completion_ids"]
    prompt_length = local["prompt_completion_ids"].shape[1] - completion_ids.shape[1]
    prompt_mask = prompt_inputs["attention_mask"]
    if prompt_mask.shape[0] != completion_ids.shape[0]:
        prompt_mask = prompt_mask.repeat_interleave(num_generations, dim=0)
    return {
        "prompt_ids": local["prompt_completion_ids"][:, :prompt_length],
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": local["completion_mask"],
        "advantages": local["advantages"],
        "ref_per_token_logps": local["ref_per_token_logps"],
    }

"""Batch-stage invariant on decoded text: the text the reward functions scored is the decode of the tokens.

The capture (TRL adapter, or a ``Recorder`` user) records two things per row: ``completion_text``, the string
the reward functions received, and ``meta["decoded_completion_text"]``, the tokenizer's own decode of
``completion_ids[completion_mask]`` with ``skip_special_tokens=True``. A post-processing step that blanks,
truncates or mangles the text (bug-catalog S3) makes the two differ, so rewards score the wrong string.
"""

from __future__ import annotations

from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.invariants._common import Outcome, inconclusive, passed
from grpo_check.invariants.registry import register
from grpo_check.trace.model import TraceStep

_SHOWN = 60  # characters of each string quoted in the explanation


def _normalise(text: str) -> str:
    """Whitespace at either end is not content: tokenizers and reward code legitimately differ there."""
    return text.strip()


def _quote(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "…")


@register(
    "batch.text_faithful",
    requires=("completion_text", "meta.decoded_completion_text"),
    catalog_ids=("S3",),
    description="the completion text the rewards scored equals the tokenizer's decode of the completion tokens",
    tolerance="exact (up to surrounding whitespace)",
    likely_cause="decode/post-processing mangles the completion text (strips, truncates or replaces part of it), "
    "so the reward functions score a different string than the policy generated",
    fix="pass tokenizer.batch_decode(completion_ids, skip_special_tokens=True) to the reward functions unchanged",
)
def text_faithful(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    scored = step.completion_text or []
    decoded = list(step.meta.get("decoded_completion_text") or [])
    if len(scored) != len(decoded):
        return inconclusive(
            f"{len(scored)} scored texts but {len(decoded)} decoded texts: rows cannot be paired"
        )
    differing = [
        row for row, (a, b) in enumerate(zip(scored, decoded, strict=True)) if _normalise(a) != _normalise(b)
    ]
    if not differing:
        return passed(f"{len(scored)} scored completions equal their token decode", 0.0, 0.0)
    row = differing[0]
    return Outcome(
        Verdict.FAIL,
        f"{len(differing)} of {len(scored)} scored completions are not the decode of their tokens "
        f"(row {row}: rewards scored {_quote(scored[row])}, tokens decode to {_quote(decoded[row])})",
        figure=float(len(differing)),
        tolerance=0.0,
        row=row,
        details={"differing_rows": differing[:20]},
    )

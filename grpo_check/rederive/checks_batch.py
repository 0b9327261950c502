"""Re-derivation of the batch stage: where each completion ends (EOS, the eos ids of every source, truncation)
and the completion mask that follows from it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from grpo_check._step_cache import host_view
from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, Verdict
from grpo_check.rederive.checks_common import _finding, _not_captured, _register
from grpo_check.rederive.derive import (
    CompletionEnds,
    completion_ends,
    expected_completion_mask,
)
from grpo_check.rederive.inputs import (
    EOS_SOURCES_KEY,
    eos_ids_of,
    tensor_or_none,
    whole,
)
from grpo_check.trace.model import Trace, TraceStep


# ------------------------------------------------------------------------------------------ batch: ends
def _ends_passed(
    step: TraceStep,
    spec: GRPOSpec,
    trace: Trace | None,
    eos: Any,
    rows: int,
    truncated_rows: int,
    sources: dict[str, list[int]],
) -> Finding:
    """The finding of a step whose every mask row and truncation flag agrees with the ids."""
    verdict, note = Verdict.PASS, ""
    if (
        not eos.independent
        and trace is not None
        and str(trace.manifest.get("trainer", "")).startswith("trl.")
    ):
        verdict = Verdict.INCONCLUSIVE
        note = (
            "; only the trainer's EOS ids were recorded, so a secondary EOS of the generation config that the "
            f"trainer ignores cannot be ruled out (record meta {EOS_SOURCES_KEY})"
        )
    return _finding(
        "rederive.completion_ends",
        step,
        verdict,
        f"all {rows} completion_mask rows end at the first EOS of {eos.ends} or are truncated "
        f"({truncated_rows} truncated"
        + (", masked" if spec.mask_truncated_completions and truncated_rows else "")
        + f"){note}",
        figure=0.0,
        tolerance=0.0,
        eos_token_id_sources=sources,
        truncated_rows=truncated_rows,
    )


def _rows_agree_host(
    ids: torch.Tensor,
    mask: torch.Tensor,
    ends: CompletionEnds,
    recorded_truncated: torch.Tensor | None,
    mask_truncated: bool,
) -> int | None:
    """The number of truncated rows when, on a small CPU batch, every mask row and recorded truncation flag
    agrees with ``ends`` (decided in numpy, the same boolean operations as :func:`completion_ends_check`);
    ``None`` otherwise: torch's path decides, and words any finding."""
    host_mask, lengths, truncated = (
        host_view(mask),
        host_view(ends.lengths),
        host_view(ends.truncated),
    )
    if host_mask is None or lengths is None or truncated is None or host_mask.shape != tuple(ids.shape):
        return None
    rows, width = host_mask.shape
    actual = host_mask.astype(bool)
    positions = np.arange(width)
    expected = positions < lengths[:, None]
    if mask_truncated:
        expected &= ~truncated[:, None]
    mismatch = actual != expected
    ambiguous = truncated & (lengths < width)
    if ambiguous.any():
        actual_len = actual.sum(1)
        prefix = (actual == (positions < actual_len[:, None])).all(1)
        fits = prefix & (actual_len >= lengths)
        if mask_truncated:
            fits |= actual_len == 0
        mismatch &= ~(ambiguous & fits)[:, None]
    if mismatch.any():
        return None
    if recorded_truncated is not None and recorded_truncated.numel() == rows:
        flags = host_view(recorded_truncated)
        if flags is None:
            return None
        if ((flags.astype(bool).reshape(-1) != truncated) & ~ambiguous).any():
            return None
    return int(truncated.sum())


@_register(
    "completion_ends",
    "batch",
    "completion_mask is the prefix up to the first id of ANY EOS source (tokenizer, generation config), or the "
    "whole row when truncated; truncated rows fully masked with mask_truncated_completions",
    "completion_ids + completion_mask + EOS ids (meta eos_token_id_sources / eos_token_ids)",
)
def completion_ends_check(step: TraceStep, spec: GRPOSpec, trace: Trace | None) -> Finding | None:
    check_id = "rederive.completion_ends"
    ids, mask = tensor_or_none(step, "completion_ids"), tensor_or_none(step, "completion_mask")
    if ids is None or mask is None:
        return _not_captured(check_id, step, "completion_ids" if ids is None else "completion_mask")
    eos = eos_ids_of(step, trace)
    if eos is None:
        return _not_captured(check_id, step, f"meta {EOS_SOURCES_KEY} / eos_token_ids")
    if ids.dim() != 2 or ids.shape != mask.shape:
        return _finding(
            check_id,
            step,
            Verdict.INCONCLUSIVE,
            f"completion_ids {tuple(ids.shape)} and completion_mask {tuple(mask.shape)} are not the same (B, T)",
        )
    pad = step.meta.get("pad_token_id")
    pad = whole(pad)
    all_ids = eos.ends
    ends = completion_ends(ids, all_ids, pad, tensor_or_none(step, "tool_mask"))
    sources = {name: list(values) for name, values in eos.by_source.items()}
    recorded_truncated = tensor_or_none(step, "truncated")
    truncated_rows = _rows_agree_host(ids, mask, ends, recorded_truncated, spec.mask_truncated_completions)
    if truncated_rows is not None:
        return _ends_passed(step, spec, trace, eos, ids.shape[0], truncated_rows, sources)
    expected = expected_completion_mask(ends, ids.shape[1], mask_truncated=spec.mask_truncated_completions)
    actual = mask.detach().bool().cpu()
    mismatch = actual != expected
    # A row without EOS followed by pad ids is ambiguous from the ids alone: the pads may be padding (a
    # sampler that stopped on a stop string) or pad ids the policy sampled before the length limit. Any
    # prefix mask from its last non-pad token to the full width fits (or none, with mask_truncated_completions).
    width = ids.shape[1]
    ambiguous = ends.truncated & (ends.lengths < width)
    if bool(ambiguous.any()):
        positions = torch.arange(width).expand(ids.shape[0], width)
        actual_len = actual.sum(1)
        prefix = (actual == (positions < actual_len.unsqueeze(1))).all(1)
        fits = prefix & (actual_len >= ends.lengths)
        if spec.mask_truncated_completions:
            fits = fits | (actual_len == 0)
        mismatch = mismatch & ~(ambiguous & fits).unsqueeze(1)
    truncated_rows = int(ends.truncated.sum())
    if recorded_truncated is not None and recorded_truncated.numel() == ids.shape[0]:
        flag_mismatch = recorded_truncated.detach().bool().reshape(-1).cpu() != ends.truncated
        flag_mismatch &= ~(ends.truncated & (ends.lengths < ids.shape[1]))  # pad tail: either reading fits
        if bool(flag_mismatch.any()):
            row = int(flag_mismatch.int().argmax())
            return _finding(
                check_id,
                step,
                Verdict.FAIL,
                f"{int(flag_mismatch.sum())} row(s) flagged truncated differently from their ids: row {row} is "
                f"recorded truncated={bool(recorded_truncated.reshape(-1)[row])}, its ids say "
                f"{bool(ends.truncated[row])} (EOS ids {all_ids})",
                figure=float(flag_mismatch.sum()),
                tolerance=0.0,
                row=row,
                catalog_id="11",
                likely_cause="truncation decided with fewer EOS ids than generation stops at (a secondary EOS "
                "from generation_config ignored) or from the padded row",
                fix="a row is truncated when none of its ids is any EOS id of the tokenizer or the generation "
                "config",
                eos_token_id_sources=sources,
            )
    if not bool(mismatch.any()):
        return _ends_passed(step, spec, trace, eos, ids.shape[0], truncated_rows, sources)
    bad_rows = mismatch.any(1)
    row = int(bad_rows.int().argmax())
    token = int(mismatch[row].int().argmax())
    mask_len, expected_len = int(actual[row].sum()), int(expected[row].sum())
    cause, fix = _ends_cause(row, ends, eos, spec, mask_len, expected_len)
    return _finding(
        check_id,
        step,
        Verdict.FAIL,
        f"completion_mask differs from the mask re-derived from the ids and every EOS id {all_ids} on "
        f"{int(mismatch.sum())} token(s) of {int(bad_rows.sum())} row(s); row {row}: mask covers {mask_len} "
        f"token(s), expected {expected_len}"
        + (
            " (truncated row)"
            if bool(ends.truncated[row])
            else f" (first EOS at token {int(ends.first_eos[row])})"
        ),
        figure=float(bad_rows.sum()),
        tolerance=0.0,
        row=row,
        token=token,
        catalog_id="11",
        likely_cause=cause,
        fix=fix,
        eos_token_id_sources=sources,
        rows=bad_rows.nonzero().reshape(-1)[:20].tolist(),
    )


def _ends_cause(
    row: int, ends: Any, eos: Any, spec: GRPOSpec, mask_len: int, expected_len: int
) -> tuple[str, str]:
    truncated = bool(ends.truncated[row])
    if truncated and spec.mask_truncated_completions and mask_len > 0:
        return (
            "a truncated completion (no EOS) stays in the loss although mask_truncated_completions is on",
            "zero completion_mask (and tool_mask) of rows with no EOS id when mask_truncated_completions is set",
        )
    if truncated and not spec.mask_truncated_completions and mask_len == 0:
        return (
            "a truncated completion is masked out although mask_truncated_completions is off",
            "mask truncated rows only when mask_truncated_completions is set",
        )
    if not truncated and mask_len > expected_len:
        eos_id = int(ends.eos_id[row])
        trainer_ids = eos.by_source.get("trainer", [])
        tokenizer_ids = eos.by_source.get("tokenizer", [])
        if eos_id not in trainer_ids or (tokenizer_ids and eos_id not in tokenizer_ids):
            origin = [name for name, ids in eos.by_source.items() if eos_id in ids]
            return (
                f"a secondary EOS id {eos_id} (from {', '.join(origin) or 'the recorded EOS ids'}) is not treated "
                "as a completion end when masking: the tokens generated after it are trained on",
                "end completions at the first id of ANY EOS: the tokenizer's eos_token_id and every id of "
                "model.generation_config.eos_token_id",
            )
        return (
            "tokens after the first EOS are counted in the mask",
            "mask = positions <= index of the first EOS (any EOS id)",
        )
    if truncated and mask_len > expected_len:
        return (
            f"the mask runs over {mask_len - expected_len} padding token(s) after the completion's last generated "
            "token: the completion ended at an id the masking does not treat as EOS (a secondary EOS of the "
            "generation config ignored?)",
            "end completions at the first id of ANY EOS: the tokenizer's eos_token_id and every id of "
            "model.generation_config.eos_token_id; never extend the mask over padding",
        )
    if not truncated and mask_len == expected_len - 1:
        return (
            "the EOS token itself is masked out (mask built as ids != pad with pad == eos)",
            "mask = positions <= index of the first EOS; never ids != pad_token_id when pad == eos",
        )
    return (
        "the completion mask ends before the first EOS",
        "mask = positions <= index of the first EOS (any EOS id)",
    )

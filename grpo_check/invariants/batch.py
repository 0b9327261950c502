"""Batch-stage invariants: masks, EOS handling, grouping, decoded text."""

from __future__ import annotations

import numpy as np
import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.invariants._common import (
    Outcome,
    _count_nonzero,
    argmax_2d,
    completion_bool,
    count_true,
    eos_ids,
    groups_of,
    host_view,
    inconclusive,
    malformed,
    num_generations,
    passed,
    plain,
)
from grpo_check.invariants.registry import register
from grpo_check.signatures import signature
from grpo_check.trace.model import TraceStep

_MASK_NAMES = ("completion_mask", "prompt_mask", "tool_mask")
_SIGNED = frozenset((torch.int64, torch.int32, torch.int16, torch.int8))


@register(
    "batch.masks_binary",
    requires=[(name,) for name in _MASK_NAMES],
    description="completion_mask, prompt_mask and tool_mask hold only 0 and 1",
    tolerance="exact",
    likely_cause="a mask built from soft values (e.g. attention weights, averaged masks) or from token ids",
    fix="build masks as integer/bool tensors of 0 and 1 (e.g. (positions <= eos_idx).int())",
)
def masks_binary(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    checked = []
    for name in _MASK_NAMES:
        mask = step.get(name)
        if mask is None:
            continue
        checked.append(name)
        if mask.dtype == torch.bool:
            continue
        values = plain(mask)
        view = host_view(values) if values.dtype in _SIGNED else None
        if view is not None:  # a signed integer is 0 or 1 exactly when no bit but the lowest is set
            if not _count_nonzero(view & -2):
                continue
        elif not values.is_floating_point() and not values.is_complex() and values.numel():
            low, high = torch.aminmax(values)  # integers between 0 and 1 are 0 and 1: nothing to locate
            if low.item() >= 0 and high.item() <= 1:
                continue
        bad = (values != 0) & (values != 1)
        if bool(bad.any()):
            row, token = argmax_2d(bad.to(torch.int8))
            value = values[row] if token is None else values[row, token]
            return Outcome(
                Verdict.FAIL,
                f"{name} holds {int(bad.sum())} value(s) other than 0/1 (e.g. {float(value):g})",
                figure=float(bad.sum()),
                tolerance=0.0,
                row=row,
                token=token,
                details={"tensor": name},
            )
    return passed(f"binary: {', '.join(checked)}", 0.0, 0.0)


@register(
    "batch.mask_prefix",
    requires=("completion_mask",),
    catalog_ids=("11",),
    description="each completion_mask row is a prefix: ones, then zeros (no hole, no restart)",
    tolerance="exact",
    likely_cause="mask built from token ids (ids != pad) so an inner pad-id token, or a second EOS, opens a hole",
    fix="mask with positions <= index of the first EOS, not with ids != pad_token_id",
)
def mask_prefix(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    mask = completion_bool(step)
    if mask.dim() != 2:
        return malformed(f"completion_mask must be (B, T), got shape {tuple(mask.shape)}")
    view = host_view(mask)
    if view is not None and not _count_nonzero(view[:, 1:] > view[:, :-1]):  # the same test, in numpy
        return passed(f"all {mask.shape[0]} rows are prefixes", 0.0, 0.0)
    restarts = mask[:, 1:] > mask[:, :-1]  # a 1 after a 0 (True > False: one operation for a & ~b)
    if not count_true(restarts):
        return passed(f"all {mask.shape[0]} rows are prefixes", 0.0, 0.0)
    row, token = argmax_2d(restarts.to(torch.int8))
    bad_rows = int(restarts.any(1).sum())
    return Outcome(
        Verdict.FAIL,
        f"{bad_rows} completion_mask row(s) are not prefixes: a 1 follows a 0",
        figure=float(bad_rows),
        tolerance=0.0,
        row=row,
        token=None if token is None else token + 1,
    )


@register(
    "batch.mask_prefix_eos",
    requires=("completion_ids", "completion_mask", "meta.eos_token_ids"),
    catalog_ids=("11",),
    description="completion_mask covers exactly the tokens up to and including the first EOS (or max length)",
    tolerance="exact",
    likely_cause="EOS/PAD masking error: pad == eos so the EOS itself is masked out, tokens after EOS "
    "counted, or a secondary EOS id ignored",
    fix="mask = positions <= first index where completion_ids is in eos_token_ids (all of them); never "
    "mask with ids != pad_token_id when pad == eos",
)
def mask_prefix_eos(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    ids = plain(step["completion_ids"])
    mask = plain(step["completion_mask"])
    if ids.shape != mask.shape or ids.dim() != 2:
        return malformed(f"completion_ids {tuple(ids.shape)} and completion_mask {tuple(mask.shape)} differ")
    eos = eos_ids(step) or []
    rows, width = ids.shape
    if _masks_end_at_eos_host(step, spec, ids, mask, eos):
        return passed(f"all {rows} rows end at the first EOS {eos} or at max length", 0.0, 0.0)
    mask = mask.bool()
    positions = torch.arange(width, device=ids.device).expand(rows, width)
    is_eos = torch.isin(ids, torch.tensor(eos, dtype=ids.dtype, device=ids.device))
    has_eos = is_eos.any(1)
    first_eos = torch.where(
        has_eos, is_eos.int().argmax(1), torch.full_like(has_eos, width, dtype=torch.long)
    )
    expected_len = torch.where(has_eos, first_eos + 1, torch.full_like(first_eos, width))
    mask_len = mask.sum(1)
    # Truncated rows (hit max length without EOS) end at max length, even when padding (pad == eos) follows.
    truncated = torch.zeros(rows, dtype=torch.bool, device=ids.device)
    if spec is not None and spec.max_completion_length is not None:
        truncated |= mask_len == spec.max_completion_length
    if step.has("truncated"):
        truncated |= plain(step["truncated"]).bool().reshape(-1)
    ends_before_eos = first_eos >= mask_len
    expected_len = torch.where(truncated & ends_before_eos, mask_len, expected_len)
    pad = step.meta.get("pad_token_id")
    if pad is not None:  # a row that ended without EOS (stop string) and is followed by padding only
        tail_is_pad = ((ids == int(pad)) | (positions < mask_len.unsqueeze(1))).all(1)
        expected_len = torch.where(~has_eos & tail_is_pad, mask_len, expected_len)
    if spec is not None and spec.mask_truncated_completions:  # truncated rows are zeroed on purpose
        expected_len = torch.where(mask_len == 0, mask_len, expected_len)
    expected = positions < expected_len.unsqueeze(1)
    mismatch = mask != expected
    if not count_true(mismatch):
        return passed(f"all {rows} rows end at the first EOS {eos} or at max length", 0.0, 0.0)
    row, token = argmax_2d(mismatch.to(torch.int8))
    bad_rows = mismatch.any(1)
    longer = int((bad_rows & (mask_len > expected_len)).sum())
    shorter = int((bad_rows & (mask_len < expected_len)).sum())
    eos_masked = bool(has_eos[row]) and int(mask_len[row]) == int(first_eos[row])
    pad_is_eos = pad is not None and int(pad) in eos
    if eos_masked:
        what = "the EOS token itself is masked out" + (" (pad_token_id == eos)" if pad_is_eos else "")
    elif int(mask_len[row]) > int(expected_len[row]):
        what = "tokens after the first EOS are counted"
    else:
        what = "the mask ends before the first EOS"
    return Outcome(
        Verdict.FAIL,
        f"{int(bad_rows.sum())} row(s) have a completion_mask that does not end at the first EOS: {what} "
        f"(row {row}: mask length {int(mask_len[row])}, expected {int(expected_len[row])}); "
        f"{longer} too long, {shorter} too short",
        figure=float(bad_rows.sum()),
        tolerance=0.0,
        row=row,
        token=token,
        details={"rows_too_long": longer, "rows_too_short": shorter, "eos_token_ids": eos},
    )


def _masks_end_at_eos_host(
    step: TraceStep, spec: GRPOSpec | None, ids: torch.Tensor, mask: torch.Tensor, eos: list[int]
) -> bool:
    """Whether every row of a small CPU batch passes :func:`mask_prefix_eos`, decided in numpy with the same
    integer and boolean operations; ``False`` sends the step to the torch path (which words any failure)."""
    if ids.dtype is not torch.int64 or ids.shape[1] == 0:
        return False
    host_ids, host_mask = host_view(ids), host_view(mask)
    if host_ids is None or host_mask is None:
        return False
    truncated_flags = None
    if step.has("truncated"):
        truncated_flags = host_view(plain(step["truncated"]))
        if truncated_flags is None or truncated_flags.size != ids.shape[0]:
            return False
    rows, width = ids.shape
    mask_bool = host_mask.astype(bool)
    positions = np.arange(width)
    is_eos = np.zeros(host_ids.shape, dtype=bool)
    for eos_id in eos:
        is_eos |= host_ids == eos_id
    has_eos = is_eos.any(1)
    first_eos = np.where(has_eos, is_eos.argmax(1), width)
    expected_len = np.where(has_eos, first_eos + 1, width)
    mask_len = mask_bool.sum(1)
    truncated = np.zeros(rows, dtype=bool)
    if spec is not None and spec.max_completion_length is not None:
        truncated |= mask_len == spec.max_completion_length
    if truncated_flags is not None:
        truncated |= truncated_flags.astype(bool).reshape(-1)
    expected_len = np.where(truncated & (first_eos >= mask_len), mask_len, expected_len)
    pad = step.meta.get("pad_token_id")
    if pad is not None:
        tail_is_pad = ((host_ids == int(pad)) | (positions < mask_len[:, None])).all(1)
        expected_len = np.where(~has_eos & tail_is_pad, mask_len, expected_len)
    if spec is not None and spec.mask_truncated_completions:
        expected_len = np.where(mask_len == 0, mask_len, expected_len)
    return bool((mask_bool == (positions < expected_len[:, None])).all())


@register(
    "batch.group_sizes",
    requires=("group_index",),
    catalog_ids=("6",),
    description="every group_index group has exactly G rows (partial groups: a warning)",
    tolerance="exact",
    likely_cause=f"{signature('repeat_not_interleave').cause}; or a group split across micro-batches",
    fix=signature("repeat_not_interleave").fix,
)
def group_sizes(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    groups = groups_of(step["group_index"])
    if groups.num_groups == 0:
        return inconclusive("empty group_index")
    size = num_generations(spec, groups)
    if groups.all_of_size(size):
        return passed(f"{groups.num_groups} group(s) of {size}", 0.0, 0.0)
    counts = groups.count
    worst = int(torch.argmax((counts - size).abs()))
    row = groups.first_row(worst)
    too_big = bool((counts > size).any())
    sizes = sorted({int(c) for c in counts})
    return Outcome(
        Verdict.FAIL if too_big else Verdict.WARN,
        f"group sizes {sizes} differ from G={size}"
        + (" (more rows than G share one prompt)" if too_big else " (partial groups in this micro-batch)"),
        figure=float((counts - size).abs().max()),
        tolerance=0.0,
        row=row,
        details={"sizes": sizes, "G": size},
        likely_cause=None
        if too_big
        else "groups split across micro-batches: group-level checks are only meaningful on whole groups",
        fix=None if too_big else "capture whole generation batches (or whole groups) per step",
    )


def _content_tokens(step: TraceStep, mask: torch.Tensor) -> torch.Tensor:
    """(B,) tokens per row that should decode to text: masked, before the first EOS, and not the pad id."""
    eos = eos_ids(step)
    if eos is not None and step.has("completion_ids") and step["completion_ids"].shape == mask.shape:
        ids = plain(step["completion_ids"])
        is_eos = torch.isin(ids, torch.tensor(eos, dtype=ids.dtype, device=ids.device))
        before_eos = is_eos.int().cumsum(1) == 0  # decoding stops at the first EOS
        content = mask & before_eos
        pad = step.meta.get("pad_token_id")
        if pad is not None:  # a pad id the policy sampled is a special token: it decodes to nothing
            content = content & (ids != int(pad))
        return content.sum(1)
    return mask.sum(1) - 1  # without EOS ids, allow one (possibly EOS) token to decode to nothing


@register(
    "batch.text_nonempty",
    requires=("completion_mask", "completion_text"),
    catalog_ids=("S3",),
    description="decoded completion text is non-empty wherever the tokenizer's decode of the completion is "
    "(without that decode: wherever the completion has tokens other than EOS and pad)",
    tolerance="exact",
    likely_cause="decode/post-processing blanks the completion text, so rewards score the wrong string",
    fix="decode completion_ids[mask] with skip_special_tokens=True and pass that text to the reward functions",
)
def text_nonempty(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    texts = step.completion_text or []
    rows = step["completion_mask"].shape[0]
    if len(texts) != rows:
        return Outcome(
            Verdict.FAIL,
            f"{len(texts)} decoded completions for {rows} rows",
            figure=float(abs(len(texts) - rows)),
            tolerance=0.0,
            likely_cause="decoded text misaligned with the token rows (dropped or duplicated completions)",
            fix="decode exactly one text per completion row, in row order",
        )
    decoded = step.meta.get("decoded_completion_text")
    if isinstance(decoded, list) and len(decoded) == rows:
        # the tokenizer's own decode (skip_special_tokens) says which rows have text to show: a completion
        # of special tokens only (pad, unk, bos ...) legitimately decodes to nothing
        if not any(text == "" and str(shown).strip() for text, shown in zip(texts, decoded, strict=True)):
            return passed(f"{rows} decoded completions, none blank where the tokens decode to text", 0.0, 0.0)
        has_text = torch.tensor([bool(str(text).strip()) for text in decoded], dtype=torch.bool)
        blank = torch.tensor([text == "" for text in texts], dtype=torch.bool) & has_text
        if not bool(blank.any()):
            return passed(f"{rows} decoded completions, none blank where the tokens decode to text", 0.0, 0.0)
        row = int(blank.int().argmax())
        what = f"their tokens decode to {str(decoded[row])[:40]!r} (row {row})"
    else:
        content = _content_tokens(step, plain(step["completion_mask"]).bool())
        blank = torch.tensor([text == "" for text in texts], dtype=torch.bool) & (content.cpu() > 0)
        if not bool(blank.any()):
            return passed(f"{rows} decoded completions, none blank where tokens exist", 0.0, 0.0)
        row = int(blank.int().argmax())
        what = f"their completion has {int(content[row])}+ non-EOS, non-pad tokens"
    return Outcome(
        Verdict.FAIL,
        f"{int(blank.sum())} of {rows} decoded completions are empty while {what}",
        figure=float(blank.sum()),
        tolerance=0.0,
        row=row,
        details={"blank_rows": blank.nonzero().reshape(-1)[:20].tolist()},
    )

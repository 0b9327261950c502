"""Validation of what a trace holds: step meta types, text rows, tensor names, shapes and dtypes, and value
checks (masks, group sizes); shared by the reader and by what writes traces."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from grpo_check import limits
from grpo_check._kinds import is_real_number, is_whole_number
from grpo_check.findings import InputError
from grpo_check.trace.format import (
    B_TENSORS,
    BP_TENSORS,
    BT_OR_B1_TENSORS,
    BT_TENSORS,
    FLOAT_TENSORS,
    ID_TENSORS,
    MASK_TENSORS,
    SCALAR_TENSORS,
    _dtype_name,
)
from grpo_check.trace.model import TENSOR_STAGE, TraceStep

# Step meta keys the checks convert with int(): a wrongly typed value would otherwise fail far from the file.
INT_META_KEYS: tuple[str, ...] = (
    "step",
    "micro_batch",
    "rank",
    "iteration",
    "optimizer_steps_since_old_logps",
    "generation_step",
    "gradient_accumulation_steps",
    "steps_per_generation",
    "num_processes",
    "pad_token_id",
)


INT_LIST_META_KEYS: tuple[str, ...] = ("eos_token_ids",)  # an int or a list of ints


def meta_type_problems(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Step meta keys holding a value of the wrong type, as ``(key, message)`` pairs (empty when valid).

    >>> meta_type_problems({"step": "zero", "rank": 0, "eos_token_ids": [2]})
    [('step', "must be an integer or null, got 'zero'")]
    """
    problems: list[tuple[str, str]] = []
    for key, value in meta.items():
        if key in INT_META_KEYS and value is not None and not _is_int64(value):
            problems.append((key, f"must be an integer or null, got {_short(value)}"))
        elif key in INT_LIST_META_KEYS and value is not None and not _is_int_or_int_list(value):
            problems.append((key, f"must be an integer or a list of integers, got {_short(value)}"))
        elif key in NUMBER_META_KEYS and value is not None and not _is_count(value):
            problems.append((key, f"must be a finite number >= 0 or null, got {_short(value)}"))
    return problems


# Step meta keys the checks convert with float(): a count of items, a number >= 0.
NUMBER_META_KEYS: tuple[str, ...] = ("num_items_in_batch",)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int64(value: Any) -> bool:
    return is_whole_number(value) and limits.INT64_MIN <= int(value) <= limits.INT64_MAX


def _is_count(value: Any) -> bool:
    if not is_real_number(value):
        return False
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return False
    return math.isfinite(number) and number >= 0


def _is_int_or_int_list(value: Any) -> bool:
    return _is_int64(value) or (
        isinstance(value, list) and len(value) <= 4096 and all(_is_int64(v) for v in value)
    )


def text_row_problems(
    tensors: Mapping[str, Any], texts: Mapping[str, list[str] | None]
) -> list[tuple[str, str]]:
    """Texts whose entry count differs from the step's rows (B), as ``(field, message)`` pairs.

    >>> import torch
    >>> text_row_problems({"rewards": torch.zeros(4)}, {"completion_text": ["a", "b", "c"]})
    [('completion_text', 'has 3 entries for 4 rows')]
    """
    rows = batch_rows(tensors)
    if rows is None:
        return []
    return [
        (field, f"has {len(text)} entries for {rows} rows")
        for field, text in texts.items()
        if text is not None and len(text) != rows
    ]


_ROW_TENSORS = BT_TENSORS | BT_OR_B1_TENSORS | BP_TENSORS | B_TENSORS | {"rewards_per_func", "advantages"}


def batch_rows(tensors: Mapping[str, Any]) -> int | None:
    """B, the number of rows, from the first tensor that has one (``None`` when none has)."""
    for name, tensor in tensors.items():
        if name in _ROW_TENSORS and tensor.dim() >= 1:
            return int(tensor.shape[0])
    return None


def validate_step_tensors(tensors: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Format errors in one step's named tensors; returns ``(field, message)`` pairs (empty when valid).

    A step with a format error cannot be used (the loader leaves it out). Rules: dtype classes (ids
    integer, masks bool/integer/float, quantities floating point), shapes consistent on B and T,
    ``advantages`` (B,) or (B, T), ``ratio`` (B, T) or (B, 1), ``loss`` a scalar, ``group_index``
    non-negative. Tensors with an ``extra.`` prefix are not checked. Values that are legal to store but
    wrong for GRPO (a mask holding 2) are :func:`step_value_problems`.

    >>> import torch
    >>> validate_step_tensors({"completion_ids": torch.zeros(2, 3), "completion_mask": torch.ones(2, 4)})
    [('completion_ids', 'ids must be an integer tensor, got dtype float32'), ('completion_mask', "T = 4 along this tensor but T = 3 in 'completion_ids'")]
    """
    import torch

    errors: list[tuple[str, str]] = []
    known = {n: t for n, t in tensors.items() if n in TENSOR_STAGE}
    for name, tensor in known.items():
        if _dtype_name(tensor.dtype) not in limits.SUPPORTED_TORCH_DTYPES:
            errors.append(
                (
                    name,
                    f"dtype {_dtype_name(tensor.dtype)} is not supported "
                    f"(one of {', '.join(sorted(limits.SUPPORTED_TORCH_DTYPES))})",
                )
            )
        elif name in ID_TENSORS and (tensor.dtype.is_floating_point or tensor.dtype.is_complex):
            errors.append((name, f"ids must be an integer tensor, got dtype {_dtype_name(tensor.dtype)}"))
        elif name in ID_TENSORS and tensor.dtype == torch.bool:
            errors.append((name, "ids must be an integer tensor, got dtype bool"))
        elif name in MASK_TENSORS and tensor.dtype.is_complex:
            errors.append((name, f"mask must be 0/1, got dtype {_dtype_name(tensor.dtype)}"))
        elif name in FLOAT_TENSORS and not tensor.dtype.is_floating_point:
            errors.append((name, f"must be a floating-point tensor, got dtype {_dtype_name(tensor.dtype)}"))
    errors += _shape_errors(known)
    group_index = known.get("group_index")
    bad_group_index = any(f == "group_index" for f, _ in errors)
    if (
        group_index is not None
        and not bad_group_index
        and group_index.numel()
        and bool((group_index < 0).any())
    ):
        errors.append(("group_index", "must be non-negative (one id per prompt)"))
    return errors


def step_value_problems(
    tensors: Mapping[str, Any], *, num_generations: int | None = None
) -> list[tuple[str, str]]:
    """Values a well-formed step should not hold: masks other than 0/1, a group with more than
    ``num_generations`` rows. These are pipeline bugs the invariants (``batch.masks_binary``,
    ``batch.group_sizes``) report with a diagnosis, so the loader keeps such a step and only notes them.

    >>> import torch
    >>> step_value_problems({"completion_mask": torch.tensor([[1, 2, 0], [1, 1, 0]])})
    [('completion_mask', 'mask must hold only 0 and 1; found value 2 at index (0, 1)')]
    """
    import torch

    problems: list[tuple[str, str]] = []
    for name in sorted(MASK_TENSORS & set(tensors)):
        tensor = tensors[name]
        if not tensor.numel() or tensor.dtype == torch.bool or tensor.dtype.is_complex:
            continue
        bad = ~((tensor == 0) | (tensor == 1))
        if bool(bad.any()):
            position = tuple(int(i) for i in bad.nonzero()[0].tolist())
            value = tensor[position].item() if position else tensor.item()
            problems.append((name, f"mask must hold only 0 and 1; found value {value:g} at index {position}"))
    group_index = tensors.get("group_index")
    if (
        num_generations is not None
        and group_index is not None
        and group_index.numel()
        and not group_index.dtype.is_floating_point
        and group_index.dtype != torch.bool
        and bool((group_index >= 0).all())
    ):
        # unique, not bincount: a group id of 2**40 must not allocate a 2**40-long count table
        labels, counts = torch.unique(group_index.reshape(-1).long(), return_counts=True)
        worst = int(counts.argmax())
        if int(counts[worst]) > num_generations:
            problems.append(
                (
                    "group_index",
                    f"group {int(labels[worst])} has {int(counts[worst])} rows but num_generations is "
                    f"{num_generations} (rows of different prompts share a group id?)",
                )
            )
    return problems


def _shape_errors(tensors: Mapping[str, Any]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    rows: tuple[str, int] | None = None  # (which tensor fixed B, B)
    tokens: tuple[str, int] | None = None  # (which tensor fixed T, T)
    prompt_len: tuple[str, int] | None = None
    functions: tuple[str, int] | None = None

    def agree(name: str, size: int, anchor: tuple[str, int] | None, letter: str):
        if anchor is None:
            return (name, size)
        if anchor[1] != size:
            errors.append(
                (name, f"{letter} = {size} along this tensor but {letter} = {anchor[1]} in {anchor[0]!r}")
            )
        return anchor

    order = sorted(tensors, key=lambda n: (n not in ("completion_ids", "completion_mask"), n))
    for name in order:
        shape = tuple(tensors[name].shape)
        if name in SCALAR_TENSORS:
            if tensors[name].numel() != 1:
                errors.append((name, f"must be a scalar, got shape {list(shape)}"))
            continue
        if name == "reward_weights":
            if len(shape) != 1:
                errors.append((name, f"must be (F,), got shape {list(shape)}"))
            else:
                functions = agree(name, shape[0], functions, "F")
            continue
        if name in BT_TENSORS or name in BP_TENSORS or name == "rewards_per_func":
            if len(shape) != 2:
                want = {"rewards_per_func": "(B, F)"}.get(name, "(B, P)" if name in BP_TENSORS else "(B, T)")
                errors.append((name, f"must be {want}, got shape {list(shape)}"))
                continue
            rows = agree(name, shape[0], rows, "B")
            if name in BT_TENSORS:
                tokens = agree(name, shape[1], tokens, "T")
            elif name in BP_TENSORS:
                prompt_len = agree(name, shape[1], prompt_len, "P")
            else:
                functions = agree(name, shape[1], functions, "F")
        elif name in BT_OR_B1_TENSORS:
            if len(shape) != 2:
                errors.append((name, f"must be (B, T) or (B, 1), got shape {list(shape)}"))
                continue
            rows = agree(name, shape[0], rows, "B")
            if shape[1] != 1:
                tokens = agree(name, shape[1], tokens, "T")
        elif name == "advantages":
            if len(shape) not in (1, 2):
                errors.append((name, f"must be (B,) or (B, T), got shape {list(shape)}"))
                continue
            rows = agree(name, shape[0], rows, "B")
            if len(shape) == 2:
                tokens = agree(name, shape[1], tokens, "T")
        elif name in B_TENSORS:
            if len(shape) != 1:
                errors.append((name, f"must be (B,), got shape {list(shape)}"))
                continue
            rows = agree(name, shape[0], rows, "B")
    return errors


def _check_name(name: str, *, source: str | None) -> None:
    if name not in TENSOR_STAGE and not name.startswith("extra."):
        raise InputError(
            "unknown tensor name; use a canonical name (grpo_check.trace.model.TENSOR_STAGE) or prefix it "
            "with 'extra.'",
            source=source,
            field=name,
        )


def tensor_names(steps: Iterable[TraceStep]) -> list[str]:
    """Every tensor name present in any of ``steps``, in canonical order then extras."""
    present = {name for step in steps for name in step.tensors}
    canonical = [n for n in TENSOR_STAGE if n in present]
    return canonical + sorted(present - set(canonical))

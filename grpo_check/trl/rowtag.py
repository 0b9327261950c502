"""Row tagging: follow every row of TRL's generation batch through its shuffle and split into micro-batches.

An int64 column (:data:`ROW_TAG`) is added to the generation batch: ``generation << 32 | global row``. TRL
never reads it, it consumes no randomness and changes no number; each micro-batch's tag says which rows of
which generation batch it holds.
"""

from __future__ import annotations

from typing import Any

ROW_TAG = "_grpo_check_row"
"""Column added to TRL's generation batch: each row's index in the global generation batch."""

_ROW_BITS = 32


def row_tags(generation: int, offset: int, local_rows: int) -> Any:
    """The tag of each of this rank's ``local_rows`` rows, whose global indices start at ``offset``.

    >>> row_tags(1, 2, 2).tolist()
    [4294967298, 4294967299]
    """
    import torch

    global_rows = torch.arange(offset, offset + local_rows, dtype=torch.long)
    return global_rows + generation * (1 << _ROW_BITS)


def untag_rows(tag: Any) -> tuple[list[int], list[int]]:
    """(generation, global row) of each tagged row.

    >>> untag_rows(row_tags(1, 2, 2))
    ([1, 1], [2, 3])
    """
    tag = tag.detach().to("cpu")
    return (tag >> _ROW_BITS).tolist(), (tag & ((1 << _ROW_BITS) - 1)).tolist()


def group_ids_from_prompts(prompts: list[Any], num_generations: int) -> list[int]:
    """Group id of each row: rows with the same prompt, in blocks of ``num_generations`` occurrences.

    Rows are grouped by prompt *identity*, not by position, so a trainer that interleaves generations
    differently from what its advantage code assumes is still grouped correctly. A prompt that appears in
    more than G rows (a duplicate prompt in the dataset) opens a new group every G occurrences.

    >>> group_ids_from_prompts(["a", "a", "b", "b", "a", "a"], 2)
    [0, 0, 1, 1, 2, 2]
    """
    seen: dict[tuple[str, int], int] = {}
    counts: dict[str, int] = {}
    out: list[int] = []
    for prompt in prompts:
        key = repr(prompt)
        occurrence = counts.get(key, 0)
        counts[key] = occurrence + 1
        block = (key, occurrence // max(num_generations, 1))
        if block not in seen:
            seen[block] = len(seen)
        out.append(seen[block])
    return out


def generation_rows(info: dict[str, Any], global_rows: list[int], tensors: dict[str, Any], rank: int) -> Any:
    """This rank's rows of the generation batch that a micro-batch holds (a LongTensor of local indices), or
    ``None`` unless they provably are those rows: same widths and the same completion tokens."""
    import torch

    batch = info.get("batch") or {}
    ids, mine = batch.get("completion_ids"), tensors.get("completion_ids")
    if ids is None or mine is None or ids.shape[1] != mine.shape[1]:
        return None
    prompt_ids, my_prompt_ids = batch.get("prompt_ids"), tensors.get("prompt_ids")
    if prompt_ids is not None and my_prompt_ids is not None and prompt_ids.shape[1] != my_prompt_ids.shape[1]:
        return None
    local = torch.tensor(global_rows, dtype=torch.long) - rank * info["local_rows"]
    if not len(local) or int(local.min()) < 0 or int(local.max()) >= ids.shape[0]:
        return None
    if not torch.equal(ids[local.to(ids.device)].to("cpu"), mine):
        return None
    return local


def scored_row_order(
    scored_ids: list[list[int]], completion_ids: list[list[int]], pad_token_id: int | None, keys: list[Any]
) -> list[int] | None:
    """Which reward-time row each row of the returned generation batch is, when they are not the same order.

    The rewards are captured when the trainer scores its completions (``scored_ids``: each row's completion
    tokens, unpadded, in scoring order); a ``_generate_and_score_completions`` override may reorder the rows
    of the batch it returns (``completion_ids``, padded with ``pad_token_id``) afterwards. Returns ``order``
    with ``completion_ids[i]`` the completion scored at ``order[i]``, or ``None`` when the order is the same
    (or cannot be told: not a permutation). Rows with the same tokens are told apart by ``keys`` (what was
    scored with them: prompt, rewards); rows equal in both are interchangeable and matched in order.

    >>> scored_row_order([[5, 6], [7], [8, 9]], [[7, 0], [8, 9], [5, 6]], 0, ["a", "b", "c"])
    [1, 2, 0]
    >>> scored_row_order([[5, 6], [7]], [[5, 6], [7, 0]], 0, ["a", "b"]) is None
    True
    """

    def holds(row: list[int], scored: list[int]) -> bool:
        n = len(scored)
        return row[:n] == scored and all(t == pad_token_id for t in row[n:])

    if len(scored_ids) != len(completion_ids):
        return None
    if all(holds(row, scored) for row, scored in zip(completion_ids, scored_ids, strict=True)):
        return None
    taken = [False] * len(scored_ids)
    order: list[int] = []
    for row in completion_ids:
        candidates = [j for j, scored in enumerate(scored_ids) if not taken[j] and holds(row, scored)]
        if not candidates or len({repr(keys[j]) for j in candidates}) > 1:
            return None  # no scored row has these tokens, or several that were scored differently
        taken[candidates[0]] = True
        order.append(candidates[0])
    return order

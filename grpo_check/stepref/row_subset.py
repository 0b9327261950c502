"""Which rows the reference's own forward passes run on: a small subset that still covers every kind of row.

The per-token log-prob bugs the forward passes catch (a misaligned shift, the temperature applied on one side
only, padding or position ids, dropout left on, an overridden log-prob helper, ...) show on every row of a
kind, not on one row by chance: a padding bug on every left-padded row, a truncation bug on every truncated
row, a grouping bug on every group. So the forward passes run on a subset chosen to hold at least one row of
each kind present in the batch, and every row keeps the cheap checks (invariants, and the reference's maths on
the trainer's own tensors).

The kinds a subset covers (each one *label* per row):

* prompt padding: every distinct number of pad tokens in the prompt (the prompt lengths);
* completion end: truncated rows (no EOS) and EOS-ended rows;
* completion length: every length bucket (1, 2–3, 4–7, 8–15, ...);
* group: at least one row of every group (a group-indexing bug must be visible);
* part: every micro-batch of an accumulation window (each rank chooses from its own rows, so every rank with
  rows checks some);
* anomalous: rows whose trainer log-probs look wrong already (a non-finite or positive log-prob on a
  completion token; up to :data:`MAX_ANOMALOUS`), and the row with the largest |logps − old_logps|.

Size: the larger of the coverage minimum and ``ceil(rows · FRACTION)`` (a quarter), the extra rows spread
evenly over the batch. A quarter keeps the forward passes at about a quarter of their full cost on a batch of
few kinds, while the spread rows give a bug confined to some rows of one kind more than one chance to be
seen; the coverage minimum wins whenever the batch holds more kinds than that (one row per group at G = 2,
say). The choice is deterministic (same batch, same rows): a greedy cover, rarest label first, each time the
row that covers the most labels not yet covered, ties to the lowest index.

Example::

    >>> import torch
    >>> prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1]])
    >>> completion_mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    >>> labels = row_labels(prompt_mask, completion_mask, group_index=torch.tensor([0, 0, 1, 1]))
    >>> subset = select_rows(labels)
    >>> subset.rows, subset.total
    ((1, 2), 4)
    >>> subset.reasons
    (('prompt padding 0', 'truncated (no EOS)', 'completion length 2-3', 'group 0'), ('prompt padding 1', 'EOS-ended', 'completion length 1', 'group 1'))
    >>> subset.describe()
    '2 of 4 rows, covering every prompt padding, truncated and EOS-ended rows, every completion-length bucket, every group'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "FRACTION",
    "MAX_ANOMALOUS",
    "META_KEY",
    "Label",
    "RowSubset",
    "all_rows",
    "label_text",
    "row_labels",
    "select_rows",
]

FRACTION = 0.25
"""The share of rows the forward passes run on when the coverage minimum is smaller."""

MAX_ANOMALOUS = 8
"""At most this many rows are added for anomalous trainer log-probs (a sign flip makes every row anomalous)."""

META_KEY = "forward_rows"
"""The step-meta key that holds :meth:`RowSubset.to_meta` (absent: the forward passes ran on every row)."""

Label = tuple[str, Any]
"""(kind, value): ``("padding", 2)``, ``("end", "eos")``, ``("length", (4, 7))``, ``("group", 3)``,
``("part", 1)``, ``("anomalous", ("non-finite or positive log-prob", row))``."""

# what a subset says it covers, per kind, in report order
_COVERS = {
    "padding": "every prompt padding",
    "end": "truncated and EOS-ended rows",
    "length": "every completion-length bucket",
    "group": "every group",
    "part": "every micro-batch",
    "anomalous": "rows whose log-probs stand out",
}


def label_text(label: Label) -> str:
    """A label in words, for the reasons a row was chosen."""
    kind, value = label
    if kind == "padding":
        return f"prompt padding {value}"
    if kind == "end":
        return "truncated (no EOS)" if value == "truncated" else "EOS-ended"
    if kind == "length":
        low, high = value
        return f"completion length {low}" if low == high else f"completion length {low}-{high}"
    if kind == "group":
        return f"group {value}"
    if kind == "part":
        return f"micro-batch {value}"
    if kind == "anomalous":
        return str(value[0])
    return str(value)


def _length_bucket(length: int) -> tuple[int, int]:
    """0, 1, 2–3, 4–7, 8–15, ...: the powers of two a completion length falls between."""
    if length <= 0:
        return (0, 0)
    low = 1 << (length.bit_length() - 1)
    return (low, 2 * low - 1)


def row_labels(
    prompt_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    completion_ids: torch.Tensor | None = None,
    eos_token_ids: Sequence[int] = (),
    group_index: torch.Tensor | None = None,
    parts: Sequence[int] | None = None,
    logps: torch.Tensor | None = None,
    old_logps: torch.Tensor | None = None,
) -> list[frozenset[Label]]:
    """The labels of every row of a batch (B rows; P prompt and T completion tokens).

    Args:
        prompt_mask: (B, P); the zeros are the prompt's padding.
        completion_mask: (B, T); a row's completion length is its number of ones.
        completion_ids / eos_token_ids: a row ends with EOS when its last completion token is one of these ids;
            without them, when it is shorter than T (the batch's completion width).
        group_index: (B,) the prompt each row belongs to.
        parts: the micro-batch of each row (rows of one accumulation window).
        logps / old_logps: (B, T) the trainer's log-probs, for the anomalous rows.

    A row without completion tokens (all masked out) compares nothing: it carries only its micro-batch, and
    :func:`select_rows` takes it only where its micro-batch has no other row, or to fill up the size.
    """
    rows = int(completion_mask.shape[0])
    width = int(completion_mask.shape[1]) if completion_mask.dim() == 2 else 0
    padding = (prompt_mask.shape[1] - prompt_mask.bool().sum(1)).tolist() if prompt_mask.dim() == 2 else None
    lengths = (
        completion_mask.bool().sum(1) if completion_mask.dim() == 2 else torch.zeros(rows, dtype=torch.long)
    )
    ended = lengths < width
    if completion_ids is not None and len(eos_token_ids) > 0 and width > 0:
        last = completion_ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        is_eos = torch.isin(last, torch.as_tensor(list(eos_token_ids), dtype=completion_ids.dtype))
        ended = ended | ((lengths > 0) & is_eos)
    groups = None if group_index is None else group_index.reshape(-1).tolist()
    anomalous = _anomalous_rows(completion_mask, logps, old_logps)
    labels: list[frozenset[Label]] = []
    for row, (length, row_ended) in enumerate(zip(lengths.tolist(), ended.tolist(), strict=True)):
        if length == 0:  # no completion token to compare (masked out): it covers nothing but its micro-batch
            labels.append(frozenset({("part", int(parts[row]))} if parts is not None else ()))
            continue
        own: set[Label] = {("end", "eos" if row_ended else "truncated"), ("length", _length_bucket(length))}
        if padding is not None:
            own.add(("padding", int(padding[row])))
        if groups is not None and row < len(groups):
            own.add(("group", int(groups[row])))
        if parts is not None:
            own.add(("part", int(parts[row])))
        if row in anomalous:  # one label per row: each anomalous row is chosen, not one of them
            own.add(("anomalous", (anomalous[row], row)))
        labels.append(frozenset(own))
    return labels


def _anomalous_rows(
    completion_mask: torch.Tensor, logps: torch.Tensor | None, old_logps: torch.Tensor | None
) -> dict[int, str]:
    """Row -> why its trainer log-probs look wrong: a non-finite or positive log-prob on a completion token (the
    first :data:`MAX_ANOMALOUS` such rows), and the row with the largest |logps − old_logps| (when it is not 0)."""
    out: dict[int, str] = {}
    if logps is None or logps.dim() != 2 or logps.shape != completion_mask.shape:
        return out
    mask = completion_mask.bool()
    values = logps.detach().double()
    bad = ((~torch.isfinite(values)) | (values > 0)) & mask
    for row in torch.nonzero(bad.any(1)).reshape(-1).tolist()[:MAX_ANOMALOUS]:
        out[int(row)] = "non-finite or positive log-prob"
    if old_logps is not None and old_logps.shape == logps.shape:
        gap = torch.where(mask, (values - old_logps.detach().double()).abs(), 0.0).nan_to_num(0.0)
        per_row = gap.amax(1) if gap.numel() else gap.sum(1)
        if per_row.numel() and float(per_row.max()) > 0:
            out.setdefault(int(per_row.argmax()), "largest |logps − old_logps|")
    return out


@dataclasses.dataclass(frozen=True)
class RowSubset:
    """The rows the forward passes ran on (real row indices of the step, ascending), why each was chosen,
    and the kinds of row they cover."""

    rows: tuple[int, ...]
    total: int
    reasons: tuple[tuple[str, ...], ...]
    """One entry per row of :attr:`rows`: the labels it was chosen to cover (words), or ``("spread",)``."""
    covers: tuple[str, ...]

    @property
    def is_all(self) -> bool:
        return len(self.rows) == self.total

    def mask(self) -> torch.Tensor:
        """(total,) bool: True on the chosen rows."""
        out = np.zeros(self.total, dtype=bool)  # numpy: a list index costs torch a tensor and an index_put
        out[list(self.rows)] = True
        return torch.from_numpy(out)

    def describe(self) -> str:
        """``4 of 16 rows, covering every prompt padding, truncated and EOS-ended rows, every group``."""
        text = f"{len(self.rows)} of {self.total} rows"
        return f"{text}, covering {', '.join(self.covers)}" if self.covers and not self.is_all else text

    def to_meta(self) -> dict[str, Any]:
        """JSON-able form for a step's meta (``meta["forward_rows"]``)."""
        return {
            "rows": list(self.rows),
            "of": self.total,
            "reasons": [list(reason) for reason in self.reasons],
            "covers": list(self.covers),
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> RowSubset | None:
        """The subset a step's meta records, or ``None`` (absent or malformed: every row)."""
        if not isinstance(meta, Mapping):
            return None
        rows, total = meta.get("rows"), meta.get("of")
        if not isinstance(rows, list) or not isinstance(total, int) or total < 0:
            return None
        if any(not isinstance(r, int) or not 0 <= r < total for r in rows):
            return None
        reasons = meta.get("reasons") or [[] for _ in rows]
        return cls(
            rows=tuple(rows),
            total=total,
            reasons=tuple(tuple(str(x) for x in reason) for reason in reasons),
            covers=tuple(str(c) for c in meta.get("covers") or ()),
        )


def all_rows(total: int) -> RowSubset:
    """Every row (``forward_rows="all"``)."""
    return RowSubset(rows=tuple(range(total)), total=total, reasons=((),) * total, covers=())


def select_rows(labels: Sequence[frozenset[Label]], fraction: float = FRACTION) -> RowSubset:
    """The rows to run the forward passes on: every label of ``labels`` (one set per row) held by at least one
    chosen row, then evenly spread rows up to ``ceil(len(labels) · fraction)``. Never empty when there are
    rows; deterministic."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    total = len(labels)
    # a row without completion tokens carries no label but its micro-batch: it compares nothing
    compares = [any(kind != "part" for kind, _ in own) for own in labels]
    carriers: dict[Label, list[int]] = {}
    for row, own in enumerate(labels):
        for label in own:
            carriers.setdefault(label, []).append(row)
    uncovered = set(carriers)
    chosen: dict[int, tuple[str, ...]] = {}
    # rarest label first (a label only one row carries forces that row), then a fixed order of labels
    for label in sorted(carriers, key=lambda lab: (len(carriers[lab]), _order(lab))):
        if label not in uncovered:
            continue
        best = max(carriers[label], key=lambda row: (len(labels[row] & uncovered), compares[row], -row))
        gained = labels[best] & uncovered
        chosen[best] = tuple(label_text(lab) for lab in sorted(gained, key=_order))
        uncovered -= gained
    target = max(len(chosen), math.ceil(total * fraction), 1 if total else 0)
    spread = [(k * total) // target for k in range(target)] if target else []
    # evenly spread extra rows, then the first rows not chosen; rows that compare something first
    for row in sorted((*spread, *range(total)), key=lambda r: not compares[r]):
        if len(chosen) >= target:
            break
        chosen.setdefault(row, ("spread",))
    rows = tuple(sorted(chosen))
    kinds = {kind for kind, _ in carriers}
    covers = tuple(text for kind, text in _COVERS.items() if kind in kinds)
    return RowSubset(rows=rows, total=total, reasons=tuple(chosen[r] for r in rows), covers=covers)


_KIND_ORDER = {kind: index for index, kind in enumerate(_COVERS)}


def _order(label: Label) -> tuple[int, str]:
    return (_KIND_ORDER.get(label[0], len(_KIND_ORDER)), repr(label[1]))

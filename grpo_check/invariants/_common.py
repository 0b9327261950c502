"""Shared helpers for the invariant checks: dtype-aware tolerances, per-group reductions, masks, coordinates.

Everything here is vectorised torch (no Python loops over tokens or rows); per-group statistics use
``index_add_`` / ``scatter_reduce`` over the inverse of ``torch.unique(group_index)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from grpo_check._step_cache import (
    _current_memo,
    all_true_like,
    bool_mask,
    cached,
    f64,
    finite_mask,
    host_view,
    plain,
)
from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.tolerance_defaults import DTYPE_DEFAULTS
from grpo_check.trace.model import TraceStep

# torch.testing.assert_close defaults per dtype: (rtol, atol).
_RTOL_ATOL: dict[torch.dtype, tuple[float, float]] = {
    getattr(torch, name): tolerance for name, tolerance in DTYPE_DEFAULTS.items()
}


def rtol_atol(dtype: torch.dtype) -> tuple[float, float]:
    """torch.testing's default ``(rtol, atol)`` for ``dtype`` (float32's for integer/bool tensors)."""
    return _RTOL_ATOL.get(dtype, _FLOAT32_RTOL_ATOL)


_FLOAT32_RTOL_ATOL = _RTOL_ATOL[torch.float32]


def machine_eps(dtype: torch.dtype) -> float:
    """Machine epsilon of a floating dtype (float32's for non-floating dtypes)."""
    eps = _EPS.get(dtype)
    if eps is None:  # (a finfo object per call costs more than the check it serves)
        eps = _EPS[dtype] = float(torch.finfo(dtype if dtype.is_floating_point else torch.float32).eps)
    return eps


_EPS: dict[torch.dtype, float] = {}


def _source(tensor: torch.Tensor) -> torch.Tensor:
    """The step tensor an :func:`f64` copy was made from (``tensor`` itself otherwise)."""
    return cached(("source", tensor), lambda: tensor)


try:  # np.count_nonzero(a) without its Python wrapper and dispatcher (the C function it calls)
    from numpy._core.multiarray import count_nonzero as _count_nonzero
except ImportError:  # numpy 1.x
    _count_nonzero = np.count_nonzero


def count_true(mask: torch.Tensor) -> int:
    """``int(mask.sum())`` for a bool mask (count_nonzero: several times faster than a bool sum on CPU;
    numpy's on a small CPU mask, as :func:`~grpo_check._step_cache.host_view` would give it, faster still)."""
    view = host_view(mask)
    if view is not None:
        return int(_count_nonzero(view))
    return int(torch.count_nonzero(mask))


# Up to this many elements per slice, one reduction over the trailing dims beats one count_nonzero per slice
# (per-call overhead dominates); above it, count_nonzero per slice wins (a bool reduction along dims is ~10x
# slower on CPU than a whole-tensor count_nonzero).
_SMALL_SLICE = 32_768


def count_true_per_slice(mask: torch.Tensor) -> torch.Tensor:
    """(K,) int64 count of True in each ``mask[k]`` of a (K, ...) bool mask."""
    if math.prod(mask.shape[1:]) <= _SMALL_SLICE:  # = mask[0].numel(), without a view
        return mask.reshape(mask.shape[0], -1).sum(1)
    return torch.stack([slice_.count_nonzero() for slice_ in mask.unbind(0)])


def valid_finite(step: TraceStep, values: torch.Tensor) -> torch.Tensor:
    """``token_mask(step, values) & torch.isfinite(values)``, shared between the checks of one step."""
    memo = _current_memo()  # _source(values), its cache hit inlined (the same entry: see cached)
    hit = None if memo is None else memo.get(("source", id(values)))
    if hit is not None and (hit[2] is None or hit[2] == values._version):
        source = hit[0]
    else:
        source = _source(values)
    hit = None if memo is None else memo.get(("finite_sources", id(step)))  # finite_sources(step)'s hit
    sources = finite_sources(step) if hit is None else hit[0]
    if _is_known_finite(sources, source):  # every value finite: the same mask as token_mask's
        return token_mask(step, source)
    return cached(("valid_finite", id(step), source), lambda: token_mask(step, source) & finite_mask(source))


def _memo_of(name: str, tensor: torch.Tensor, compute: Callable[[torch.Tensor], Any]) -> Any:
    """``cached((name, tensor), lambda: compute(tensor))`` without the closure and the key scan (the same
    memo key: the tensor by identity and version counter)."""
    memo = _current_memo()
    if memo is None:
        return compute(tensor)
    if not isinstance(tensor, torch.Tensor):  # (not a tensor: keyed as cached keys it)
        return cached((name, tensor), lambda: compute(tensor))
    memo_key = (name, id(tensor))
    hit = memo.get(memo_key)
    if hit is not None:
        version = hit[2]  # (None: an inference tensor)
        if version is None or version == tensor._version:
            return hit[0]
    version = None if tensor.is_inference() else tensor._version
    value = compute(tensor)
    memo[memo_key] = (value, (name, tensor), version)
    return value


def _has_true(mask: torch.Tensor) -> bool:
    return count_true(mask) > 0


def any_true(mask: torch.Tensor) -> bool:
    """``bool(mask.any())``, shared between the checks of one step."""
    memo = _current_memo()  # _memo_of("any", mask, _has_true), inlined: the same memo key
    if memo is None or type(mask) is not torch.Tensor:
        return _memo_of("any", mask, _has_true)
    memo_key = ("any", id(mask))
    hit = memo.get(memo_key)
    if hit is not None:
        version = hit[2]  # (None: an inference tensor)
        if version is None or version == mask._version:
            return hit[0]
    version = None if mask.is_inference() else mask._version
    value = count_true(mask) > 0
    memo[memo_key] = (value, ("any", mask), version)
    return value


_CONSTANTS: dict[tuple[float, torch.dtype, torch.device], torch.Tensor] = {}
# dtypes whose operations take a Python number in their own dtype (16-bit floats compute in float32)
_OWN_DTYPE_SCALARS = frozenset((torch.float64, torch.float32, torch.int64, torch.int32))


def scalar_like(value: float, like: torch.Tensor) -> torch.Tensor | float:
    """``value`` as an operand next to ``like``: a 0-dim tensor of its dtype and device, made once, where
    an operation converts a Python number to that dtype anyway (float64, float32, int64, int32: the same
    result), else ``value`` itself. Converting a number costs about as much as an operation on a small
    tensor; a 0-dim operand of the same dtype does not."""
    dtype = like.dtype
    if dtype not in _OWN_DTYPE_SCALARS or value != value:
        return value
    key = (value, dtype, _CPU if like.is_cpu else like.device)  # (no device object for a CPU tensor)
    constant = _CONSTANTS.get(key)
    if constant is None:
        with torch.inference_mode(False):  # a normal tensor: usable outside inference mode too
            constant = _CONSTANTS[key] = torch.tensor(value, dtype=dtype, device=like.device)
    return constant


_CPU = torch.device("cpu")


def where_fill(condition: torch.Tensor, values: torch.Tensor, fill: float) -> torch.Tensor:
    """``torch.where(condition, values, fill)`` for a number ``fill``, with the fill as
    :func:`scalar_like` makes it for floating values (the same result: where() gives a Python number the
    dtype of ``values``)."""
    if not values.is_floating_point():
        return torch.where(condition, values, fill)
    return torch.where(condition, values, scalar_like(fill, values))


def scalars_at(tensor: torch.Tensor, *indices: int) -> list[float]:
    """``[tensor[i].item() for i in indices]`` for a 1-D tensor; one ``tolist`` when it is small (indexing
    and converting one element costs about as much as converting a small tensor whole)."""
    if tensor.numel() <= _FEW:
        values = tensor.tolist()
        return [values[i] for i in indices]
    return [tensor[i].item() for i in indices]


_FEW = 256  # elements up to which tolist() costs less than two element look-ups


# Up to this many groups, a check may evaluate its per-group figures (one float64 number per group) as
# Python floats from one ``tolist()`` each: +, −, ×, ÷ and comparisons of Python floats are the same IEEE
# double operations as torch's float64 ones, at a fraction of an operation's cost on a tiny tensor.
FEW_GROUPS = 16


def few_groups(groups: Groups, like: torch.Tensor) -> bool:
    """Whether ``groups``' per-group figures, float64 on ``like``'s device, go through Python floats."""
    return groups.num_groups <= FEW_GROUPS and like.is_cpu and like.dtype is torch.float64


FEW_ROWS = 64  # rows up to which a check may read per-row float64 figures as Python floats, likewise


def few_rows(values: torch.Tensor) -> bool:
    """Whether the per-row figures of ``values`` (≥ 1 row, float64, CPU) go through Python floats."""
    return 0 < values.numel() <= FEW_ROWS and values.is_cpu and values.dtype is torch.float64


def first_argmax(values: list[float]) -> int:
    """``int(torch.argmax(torch.tensor(values, dtype=torch.float64)))`` on a non-empty list: the first NaN,
    else the first of the largest values."""
    best = 0
    largest = values[0]
    if largest != largest:
        return 0
    for index, value in enumerate(values):
        if value != value:
            return index
        if value > largest:
            best, largest = index, value
    return best


def first_argmin(values: list[float]) -> int:
    """``int(torch.argmin(torch.tensor(values, dtype=torch.float64)))`` on a non-empty list: the first NaN,
    else the first of the smallest values."""
    best = 0
    smallest = values[0]
    if smallest != smallest:
        return 0
    for index, value in enumerate(values):
        if value != value:
            return index
        if value < smallest:
            best, smallest = index, value
    return best


def nan_max(values: list[float]) -> float:
    """``float(torch.tensor(values, dtype=torch.float64).max())`` on a non-empty list without −0.0: NaN
    when any value is NaN, else the largest."""
    largest = values[0]
    for value in values:
        if value != value:
            return value
        if value > largest:
            largest = value
    return largest


def masked_abs_max(values: torch.Tensor, valid: torch.Tensor) -> float:
    """``float(values[valid].abs().max())`` without the boolean-index copy (``valid`` must select ≥ 1
    position; NaN at a selected position gives NaN, as the indexed form does), shared between the checks
    of one step (the log-prob scale several tolerances use)."""
    return cached(("masked_abs_max", values, valid), lambda: _masked_abs_max(values, valid))


def _masked_abs_max(values: torch.Tensor, valid: torch.Tensor) -> float:
    if values.dtype in _EXACT_ABS_MAX and valid.dtype is torch.bool and values.shape == valid.shape:
        view, mask = host_view(values), host_view(valid)
        if view is not None and mask is not None and view.size:
            # the largest |value| at valid positions, and 0 (the fill) when there are none or all are
            # smaller: torch's where-then-max, NaN alike (np.maximum propagates it)
            return float(_maximum_reduce(_absolute(view), axis=None, initial=0.0, where=mask))
    return float(where_fill(valid, values.abs(), 0.0).max())


_maximum_reduce = np.maximum.reduce
# the floating dtypes numpy views (|x| and max are exact in each: the same value in numpy as in torch)
_EXACT_ABS_MAX = frozenset((torch.float64, torch.float32, torch.float16))
_absolute = np.absolute


_PASS = Verdict.PASS
_NEW_DETAILS: dict[str, Any] = {}  # the default of Outcome's ``details``: a new dict per outcome


@dataclasses.dataclass(init=False, slots=True)
class Outcome:
    """What a check function returns; the registry turns it into a :class:`~grpo_check.findings.Finding`.

    ``row``/``token`` locate the worst offender in the step's tensors; the registry converts them into GRPO
    coordinates (prompt = group_index value, generation = index of the row within its group, token id).
    ``likely_cause``/``fix``/``catalog_id`` override the check's defaults (used for WARN/FAIL only).
    """

    verdict: Verdict
    explanation: str
    figure: float | None = None
    tolerance: float | None = None
    row: int | None = None
    token: int | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    catalog_id: str | None = None
    likely_cause: str | None = None
    fix: str | None = None

    # written out rather than generated (the same fields): one outcome per check per step, and slots with a
    # plain default cost less than the generated __init__'s default factory and instance dict
    def __init__(
        self,
        verdict: Verdict,
        explanation: str,
        figure: float | None = None,
        tolerance: float | None = None,
        row: int | None = None,
        token: int | None = None,
        details: dict[str, Any] = _NEW_DETAILS,
        catalog_id: str | None = None,
        likely_cause: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.verdict = verdict
        self.explanation = explanation
        self.figure = figure
        self.tolerance = tolerance
        self.row = row
        self.token = token
        self.details = {} if details is _NEW_DETAILS else details
        self.catalog_id = catalog_id
        self.likely_cause = likely_cause
        self.fix = fix


def passed(
    explanation: str, figure: float | None = None, tolerance: float | None = None, **details: Any
) -> Outcome:
    # positional (row, token None): a new dict per call
    return Outcome(Verdict.PASS, explanation, figure, tolerance, None, None, details)


def not_applicable(reason: str) -> Outcome:
    """The invariant holds vacuously for this step (e.g. ratio ≡ 1 only before the first optimizer step)."""
    return Outcome(Verdict.PASS, f"not applicable: {reason}", details={"applicable": False})


def inconclusive(reason: str, **details: Any) -> Outcome:
    return Outcome(Verdict.INCONCLUSIVE, reason, details=dict(details))


def malformed(reason: str) -> Outcome:
    """Inconclusive because the inputs do not fit together (shapes): an ``assert_*`` call raises
    ``InputError`` on it, as it does when a check raised while evaluating."""
    return Outcome(Verdict.INCONCLUSIVE, reason, details={"evaluation_error": "malformed input"})


def spec_or_default(spec: GRPOSpec | None) -> GRPOSpec:
    return spec if spec is not None else GRPOSpec()


_unique = getattr(torch, "_unique2", None) or functools.partial(torch.unique, dim=None)


class Groups:
    """Per-group reductions over ``group_index`` (B,) without Python loops over rows.

    >>> g = Groups(torch.tensor([7, 7, 3, 3]))
    >>> g.sum(torch.tensor([1.0, -1.0, 2.0, 0.5])).tolist()
    [2.5, 0.0]
    """

    def __init__(self, group_index: torch.Tensor):
        flat = plain(group_index)
        if flat.dim() != 1:  # (a 1-D int64 index needs neither: two operations fewer)
            flat = flat.reshape(-1)
        if flat.dtype is not torch.int64:
            flat = flat.long()
        self._device = flat.device
        if 0 < flat.numel() <= FEW_ROWS and flat.is_cpu:
            labels = flat.tolist()
            sizes = _dense_sizes(labels)
            if sizes is not None:  # 0, 0, 1, 1, 2, ...: torch.unique's inverse is the index itself
                self.inverse, self.num_groups = flat, len(sizes)
                self._sizes, self.row_groups = sizes, labels
                return
        # torch.unique(flat, return_inverse=True, return_counts=True) without its Python wrapper
        self.values, self.inverse, self.count = _unique(
            flat, sorted=True, return_inverse=True, return_counts=True
        )
        self.num_groups = int(self.values.numel())

    # made on first use after the contiguous-label path (torch.unique's on the general path)
    @functools.cached_property
    def values(self) -> torch.Tensor:
        """The distinct labels, ascending (torch.unique's values)."""
        return torch.arange(self.num_groups, dtype=torch.int64, device=self._device)

    @functools.cached_property
    def count(self) -> torch.Tensor:
        """Rows per group, int64 (torch.unique's counts)."""
        return torch.tensor(self._sizes, dtype=torch.int64, device=self._device)

    def _inverse_on(self, device: torch.device) -> torch.Tensor:
        """``inverse`` on ``device`` (itself on its own device: no ``.to`` call per reduction)."""
        return self.inverse if device == self._device else self.inverse.to(device)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.num_groups, dtype=x.dtype, device=x.device)
        return out.index_add_(0, self._inverse_on(x.device), x)

    def sum_list(self, values: list[float]) -> list[float]:
        """``sum(torch.tensor(values, dtype=torch.float64)).tolist()`` for the rows' float64 ``values`` as
        Python floats: the CPU ``index_add_`` of a 1-D tensor adds the rows one after another, in row order,
        into zeros; so does this, by the same IEEE additions (for a few rows: one pass in Python)."""
        sums = [0.0] * self.num_groups
        for group, value in zip(self.row_groups, values, strict=True):
            sums[group] += value
        return sums

    @functools.cached_property
    def largest(self) -> int:
        """Rows in the largest group (1 when there is none)."""
        if self.num_groups <= _FEW:
            return max(self.sizes(), default=1)
        return int(self.count.max()) if self.num_groups else 1

    def all_of_size(self, size: int) -> bool:
        """Whether every group has ``size`` rows."""
        if self.num_groups <= _FEW:
            return all(count == size for count in self.sizes())
        return bool((self.count == size).all())

    @functools.cached_property
    def row_groups(self) -> list[int]:
        """``inverse.tolist()``: each row's group (0 … num_groups − 1), for a few rows."""
        return self.inverse.tolist()

    def sizes(self) -> list[int]:
        """Rows per group (``count.tolist()``), for a few groups (one conversion instead of a reduction and
        a conversion per question). Do not modify it."""
        sizes = self.__dict__.get("_sizes")
        if sizes is None:
            sizes = self._sizes = self.count.tolist()
        return sizes

    def count_f64(self, device: torch.device) -> torch.Tensor:
        """``count.to(device=device, dtype=torch.float64)`` (from the row counts themselves when the int64
        counts were not made: the same numbers, exactly)."""
        if "count" not in self.__dict__ and "_sizes" in self.__dict__:
            return torch.tensor(self._sizes, dtype=torch.float64, device=device)
        return self.count.to(device=device, dtype=torch.float64)

    def count_of_size(self, size: int) -> int:
        """Groups of ``size`` rows (``int((count == size).sum())``)."""
        if self.num_groups <= _FEW:
            return sum(1 for count in self.sizes() if count == size)
        return int(torch.count_nonzero(self.count == size))

    def amax(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((self.num_groups,), -torch.inf, dtype=x.dtype, device=x.device)
        return out.scatter_reduce_(0, self._inverse_on(x.device), x, reduce="amax")

    def amin(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((self.num_groups,), torch.inf, dtype=x.dtype, device=x.device)
        return out.scatter_reduce_(0, self._inverse_on(x.device), x, reduce="amin")

    def expand(self, per_group: torch.Tensor) -> torch.Tensor:
        return per_group[self._inverse_on(per_group.device)]

    def first_row(self, group: int) -> int:
        return int((self.inverse == group).nonzero()[0, 0])


def _dense_sizes(labels: list[int]) -> list[int] | None:
    """Rows per label when ``labels`` is 0, 0, 1, 1, 2, ... (each the same as or one above the one before, from
    0: contiguous groups, the usual layout), else ``None``."""
    if labels[0] != 0:
        return None
    sizes = [0]
    previous = 0
    for label in labels:
        if label == previous:
            sizes[-1] += 1
        elif label == previous + 1:
            sizes.append(1)
            previous = label
        else:
            return None
    return sizes


def groups_of(group_index: torch.Tensor) -> Groups:
    """``Groups(group_index)``, shared between the checks of one step (one ``torch.unique`` per step)."""
    return _memo_of("groups", group_index, Groups)


def num_generations(spec: GRPOSpec | None, groups: Groups) -> int:
    """G from the spec, or (spec not given) the largest group in the step (partial groups are smaller)."""
    if spec is not None:
        return spec.num_generations
    return groups.largest


def row_advantages(advantages: torch.Tensor, completion_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B,) advantages: as given, or from (B, T) advantages that are constant along each row's valid tokens.

    Returns ``None`` when (B, T) advantages genuinely vary along a row (token-level advantages).
    """
    return cached(
        ("row_advantages", advantages, completion_mask), lambda: _row_advantages(advantages, completion_mask)
    )


def _row_advantages(advantages: torch.Tensor, completion_mask: torch.Tensor | None) -> torch.Tensor | None:
    adv = f64(advantages)
    if adv.dim() == 1:
        return adv
    if adv.dim() == 2 and adv.shape[1] == 1:
        return adv[:, 0]
    if adv.dim() != 2:
        return None
    if completion_mask is None:
        valid = torch.ones_like(adv, dtype=torch.bool)
    else:
        valid = plain(completion_mask).bool()
    first = torch.where(
        valid.any(1), adv.gather(1, valid.long().argmax(1, keepdim=True)).squeeze(1), adv[:, 0]
    )
    same = torch.where(valid, adv == first.unsqueeze(1), torch.ones_like(valid)).all()
    return first if bool(same) else None


def flat_f64(tensor: torch.Tensor) -> torch.Tensor:
    """``f64(tensor).reshape(-1)``: the float64 copy itself when it is 1-D already (no view, one operation
    fewer, and the copy's cached masks apply to it)."""
    copy = f64(tensor)
    return copy if copy.dim() == 1 else copy.reshape(-1)


def total_rewards(step: TraceStep, spec: GRPOSpec | None) -> torch.Tensor | None:
    """(B,) total reward as the trainer used it: ``rewards``, else ``nansum(rewards_per_func · weights)``.

    Rows whose reward functions all returned NaN (unscorable) are NaN.
    """
    return cached(("total_rewards", id(step), id(spec)), lambda: _total_rewards(step, spec))


def _total_rewards(step: TraceStep, spec: GRPOSpec | None) -> torch.Tensor | None:
    if step.has("rewards"):
        return flat_f64(step["rewards"])
    if not step.has("rewards_per_func"):
        return None
    per_func = f64(step["rewards_per_func"])
    if per_func.dim() == 1:
        per_func = per_func.unsqueeze(1)
    weights = reward_weights(step, spec, per_func.shape[1], device=per_func.device)
    total = (per_func * weights).nansum(1)
    return torch.where(torch.isnan(per_func).all(1), torch.nan, total)


def reward_weights(
    step: TraceStep, spec: GRPOSpec | None, num_funcs: int, device: torch.device | None = None
) -> torch.Tensor:
    """(F,) float64 reward weights: the captured tensor, else the spec's, else ones."""
    if step.has("reward_weights"):
        return f64(step["reward_weights"]).reshape(-1).to(device)
    if spec is not None and spec.reward_weights is not None:
        return torch.tensor(spec.reward_weights, dtype=torch.float64, device=device)
    return torch.ones(num_funcs, dtype=torch.float64, device=device)


def unscorable_rows(step: TraceStep) -> torch.Tensor | None:
    """(B,) bool: rows every reward function returned NaN for (or whose total reward is NaN)."""
    out = None
    if step.has("rewards_per_func"):
        per_func = plain(step["rewards_per_func"])
        per_func = per_func.unsqueeze(1) if per_func.dim() == 1 else per_func
        out = torch.isnan(per_func).all(1)
    if step.has("rewards"):
        nan_total = torch.isnan(plain(step["rewards"]).reshape(-1))
        out = nan_total if out is None else out | nan_total
    return out


def completion_bool(step: TraceStep) -> torch.Tensor:
    """``completion_mask`` as bool, shared between the checks of one step (with :func:`token_mask`)."""
    return bool_mask(step.tensors["completion_mask"])  # (step[...] without its method call)


def token_mask(step: TraceStep, like: torch.Tensor) -> torch.Tensor:
    """(B, T) bool of the tokens a per-token tensor ``like`` is meaningful on (all True if no mask)."""
    tensors = step.tensors  # step.has(name) and step[name], without their method calls
    if "completion_mask" in tensors:
        mask = tensors["completion_mask"]
        if mask.shape == like.shape:
            return bool_mask(mask)  # completion_bool(step)
    return all_true_like(like)


def loss_mask(step: TraceStep, spec: GRPOSpec | None) -> torch.Tensor | None:
    """(B, T) bool of the tokens the loss may train on: completion_mask ∧ tool_mask (∧ ¬truncated)."""
    if "completion_mask" not in step.tensors:  # not step.has("completion_mask")
        return None
    truncation = spec is not None and spec.mask_truncated_completions
    memo = _current_memo()  # cached(("loss_mask", id(step), truncation), ...), inlined
    if memo is None:
        return _loss_mask(step, spec)
    key = ("loss_mask", id(step), truncation)
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = (_loss_mask(step, spec), key)
    return hit[0]


def _loss_mask(step: TraceStep, spec: GRPOSpec | None) -> torch.Tensor:
    mask = bool_mask(step["completion_mask"])  # the step's shared bool mask (the same values)
    if step.has("tool_mask") and step["tool_mask"].shape == mask.shape:
        mask = mask & plain(step["tool_mask"]).bool()
    if spec is not None and spec.mask_truncated_completions and step.has("truncated"):
        mask = mask & ~plain(step["truncated"]).bool().reshape(-1, 1)
    return mask


def argmax_2d(score: torch.Tensor) -> tuple[int, int | None]:
    """(row, token) of the largest entry of a (B,) or (B, T) score (the first NaN, else the first largest)."""
    view = host_view(score) if score.numel() else None  # (an empty score: torch's error, not numpy's)
    # numpy's argmax of the C-order flattened view: torch's, ties and NaN alike
    flat = int(view.argmax()) if view is not None else int(torch.argmax(score.reshape(-1)))
    if score.dim() < 2:
        return flat, None
    return flat // score.shape[1], flat % score.shape[1]


def eos_ids(step: TraceStep) -> list[int] | None:
    ids = step.meta.get("eos_token_ids")
    if ids is None:
        return None
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


def ratio_tensor(step: TraceStep) -> torch.Tensor | None:
    """Importance ratio as the trainer applied it: ``ratio``, else exp(logps − old_logps), else None."""
    if step.has("ratio"):
        return f64(step["ratio"])
    if step.has("logps", "old_logps"):
        return torch.exp(f64(step["logps"]) - f64(step["old_logps"]))
    return None


def fmt(x: float) -> str:
    return f"{x:.4g}"


def _is_float_tensor(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


# the tensors the ``*.finite`` invariants check (each with finite_outcome)
_FINITE_CHECKED = frozenset(
    (
        *("logps", "old_logps", "ref_logps", "sampler_logps", "entropies", "kl", "logps_grad"),
        *("ratio", "clipped_ratio", "sampler_is_ratio", "per_token_loss", "loss", "loss_normalizer"),
        *("advantages", "rewards_per_func", "rewards", "reward_weights"),
    )
)


def step_all_finite(step: TraceStep) -> bool:
    """Whether every floating tensor of a small step among those the ``*.finite`` invariants check is finite
    (``False``: some is not, or the step is too large or spread over devices to decide it this way)."""
    sources = finite_sources(step)
    return bool(sources) and all(
        _is_known_finite(sources, tensor)
        for name, tensor in step.tensors.items()
        if name in _FINITE_CHECKED and _is_float_tensor(tensor)
    )


def finite_sources(step: TraceStep) -> dict[int, tuple[torch.Tensor, int | None]]:
    """``id`` → (tensor, version counter) of each step tensor the ``*.finite`` invariants check when they
    were all finite (else empty), once per step in a cache: a mask of such a tensor's finite values is all
    True while its version is that one (the tensors are held: no other can take their ids meanwhile)."""
    memo = _current_memo()  # cached(("finite_sources", id(step)), ...), inlined: a few dozen calls per step
    if memo is None:
        return _finite_sources(step)
    key = ("finite_sources", id(step))
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = (_finite_sources(step), key)
    return hit[0]


def known_finite(step: TraceStep, *names: str) -> bool:
    """Whether the step tensors ``names`` are known finite (each present, floating, among those the finite
    checks cover, all of them finite, and none changed in place since)."""
    memo = _current_memo()  # finite_sources(step), its cache hit inlined: a few dozen calls per step
    hit = None if memo is None else memo.get(("finite_sources", id(step)))
    sources = finite_sources(step) if hit is None else hit[0]
    if not sources:
        return False
    tensors = step.tensors
    for name in names:  # a loop with _is_known_finite inlined: this runs a few dozen times per step
        tensor = tensors.get(name)
        entry = sources.get(id(tensor))
        if entry is None or entry[0] is not tensor:
            return False
        # the recorded version is None for an inference tensor (it stays one: no version to compare)
        version = entry[1]
        if version is not None and version != tensor._version:
            return False
    return True


def _version(tensor: torch.Tensor) -> int | None:
    """The in-place version counter (``None`` for an inference tensor: nothing changes it outside
    inference mode)."""
    return None if tensor.is_inference() else tensor._version


def _is_known_finite(sources: dict[int, tuple[torch.Tensor, int | None]], tensor: object) -> bool:
    entry = sources.get(id(tensor))
    if entry is None or entry[0] is not tensor:
        return False
    version = entry[1]  # None: an inference tensor, which stays one (no version to compare)
    return version is None or version == tensor._version


def _flatten_all(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat([t.reshape(-1) for t in tensors])``: the fallback of torch's C++ flattening call."""
    return torch.cat([tensor.reshape(-1) for tensor in tensors])


# torch._utils._flatten_dense_tensors without its Python wrapper: the tensors flattened and concatenated in
# one call (a third of the cost of reshaping and concatenating them from Python)
_flatten_dense: Callable[[list[torch.Tensor]], torch.Tensor] = getattr(
    getattr(torch._C, "_nn", None), "flatten_dense_tensors", _flatten_all
)


def _finite_sources(step: TraceStep) -> dict[int, tuple[torch.Tensor, int | None]]:
    sources = {}
    plains = []
    elements = 0
    for name, tensor in step.tensors.items():  # _is_float_tensor and plain, inlined: once per tensor
        if name in _FINITE_CHECKED and isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            sources[id(tensor)] = (tensor, None if tensor.is_inference() else tensor._version)  # _version()
            plains.append(tensor.detach() if tensor.requires_grad else tensor)
            elements += tensor.numel()
    if not plains or elements > _SMALL_SLICE:
        return {}
    for tensor in plains:  # (all on the CPU: one device, without device objects; a loop, not a generator)
        if not tensor.is_cpu:
            device = plains[0].device
            if any(t.device != device for t in plains):
                return {}
            break
    # all of them flattened into one tensor by one C++ call, then one test of every value: numpy's isfinite
    # where the flattened dtype has a numpy one (exact, no warning), else one sum, finite only if every term
    # is (NaN and ±inf propagate; a finite sum that overflows only sends callers to their general path)
    flat = _flatten_dense(plains)
    if flat.is_cpu and flat.dtype in _NUMPY_FLOATS:
        if not _all_of(_isfinite_np(flat.numpy())):
            return {}
    elif not math.isfinite(float(flat.sum())):
        return {}
    return sources


_NUMPY_FLOATS = frozenset((torch.float64, torch.float32, torch.float16))
_isfinite_np = np.isfinite
_all_of = np.logical_and.reduce


def finite_outcome(
    step: TraceStep,
    names: tuple[str, ...],
    *,
    allow_nan: dict[str, Callable[[], torch.Tensor]] | None = None,
) -> Outcome:
    """FAIL on NaN/inf in ``names`` at valid positions, WARN where only padding is non-finite.

    ``allow_nan`` maps a name to a function giving the bool mask of positions where NaN is a legitimate marker
    (e.g. an unscorable reward), called only when that tensor holds a non-finite value. Padding NaN is a
    warning because ``x * mask`` is still NaN (only ``torch.where`` or ``masked_fill`` hides it).
    """
    if _FINITE_CHECKED.issuperset(names):  # known finite: the pass the loop below reaches
        memo = _current_memo()  # finite_sources(step), its cache hit inlined
        hit = None if memo is None else memo.get(("finite_sources", id(step)))
        sources = finite_sources(step) if hit is None else hit[0]
        if sources:
            tensors = step.tensors
            checked = []
            # _is_float_tensor(step.get(name)) and known_finite(step, name), inlined: seven checks per step
            for name in names:
                tensor = tensors.get(name)
                if tensor is None:  # (absent: not a floating tensor)
                    continue
                entry = sources.get(id(tensor))
                if entry is not None and entry[0] is tensor:  # a tensor (the sources hold tensors only)
                    if tensor.is_floating_point():
                        version = entry[1]  # (None: an inference tensor, which stays one)
                        if version is not None and version != tensor._version:
                            break
                        checked.append(name)
                elif isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                    break  # a floating tensor not known finite: the loop below judges
            else:
                if checked:  # passed(...), without its call
                    return Outcome(_PASS, f"all finite: {', '.join(checked)}", 0.0, 0.0, None, None, {})
    checked = []
    worst: tuple[int, str, int | None, int | None, int, int] | None = (
        None  # (severity, name, row, token, n, n_pad)
    )
    for name in names:
        tensor = step.get(name)
        if tensor is None or not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            continue
        checked.append(name)
        finite = finite_mask(tensor)
        if count_true(finite) == finite.numel():
            continue
        values = plain(tensor)
        if allow_nan is None or name not in allow_nan:
            bad = ~finite
        else:
            bad = ~finite & ~(torch.isnan(values) & allow_nan[name]().reshape(values.shape))
            if not bool(bad.any()):
                continue
        valid = token_mask(step, values) if values.dim() == 2 else torch.ones_like(bad)
        in_valid = bad & valid
        severity = 2 if bool(in_valid.any()) else 1
        locate = in_valid if severity == 2 else bad
        if values.dim() == 0:
            row, token = None, None
        else:
            row, token = argmax_2d(locate.to(torch.int8))
        entry = (severity, name, row, token, int(in_valid.sum()), int((bad & ~valid).sum()))
        if worst is None or entry[0] > worst[0]:
            worst = entry
    if not checked:
        return inconclusive(f"no floating tensor among {', '.join(names)}")
    if worst is None:
        return passed(f"all finite: {', '.join(checked)}", 0.0, 0.0)
    severity, name, row, token, n_valid, n_pad = worst
    tensor = step[name]
    value = float(plain(tensor).reshape(-1)[0]) if tensor.dim() == 0 else None
    if value is None and row is not None:
        value = float(plain(tensor)[row] if token is None else plain(tensor)[row, token])
    if severity == 2:
        return Outcome(
            Verdict.FAIL,
            f"{name} has {n_valid} non-finite value(s) at valid positions (first: {value})",
            figure=float(n_valid + n_pad),
            tolerance=0.0,
            row=row,
            token=token,
            details={"tensor": name, "nonfinite_valid": n_valid, "nonfinite_padding": n_pad},
        )
    return Outcome(
        Verdict.WARN,
        f"{name} has {n_pad} non-finite value(s) at padding positions only (first: {value}); "
        "x * mask is still NaN there",
        figure=float(n_pad),
        tolerance=0.0,
        row=row,
        token=token,
        details={"tensor": name, "nonfinite_valid": 0, "nonfinite_padding": n_pad},
        likely_cause="padding positions hold NaN/inf (e.g. log of a masked-out probability)",
        fix="fill padding with 0 (masked_fill / torch.where) before multiplying by the mask",
    )

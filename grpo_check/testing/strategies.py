"""Hypothesis strategies for GRPO batches: property-test any GRPO stage against edge cases.

The main strategy is :func:`grpo_batches`; it draws a :class:`GRPOBatch` (canonical tensor names from
``grpo_check/trace/model.py``) with several prompts per batch, equal group sizes, ragged completion lengths
and, unless switched off, the edge cases that break real pipelines: all-masked rows, zero-variance groups,
NaN (unscorable) rewards, extreme log-probs and bf16 inputs. Building blocks (:func:`group_indices`,
:func:`rewards`, :func:`rewards_per_func`, :func:`completion_masks`, :func:`logps`, :func:`specs`) compose
into your own strategies.

Structure (group sizes, lengths, rewards, which rows are NaN, where extreme log-probs sit) is drawn by
hypothesis so it shrinks to the smallest failing batch; bulk values (log-prob noise, logits, token ids) come
from a seeded ``torch.Generator`` whose seed hypothesis also draws (and shrinks to 0), which keeps examples
cheap to generate.

Example::

    from hypothesis import given, settings
    from grpo_check.testing.strategies import grpo_batches

    @settings(max_examples=25, deadline=None)
    @given(grpo_batches(num_generations=4))
    def test_my_advantages_are_finite(batch):
        adv = my_advantages(batch.rewards, batch.num_generations)
        assert adv.isfinite().all()

:func:`make_batch` builds one deterministic batch without hypothesis (used by the ``grpo_batch`` fixture).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from grpo_check.config import GRPOSpec
from grpo_check.trace.model import TraceStep

EXTREME_LOGPS: tuple[float, ...] = (0.0, -1e-7, -30.0, -100.0)
"""Log-prob values planted by ``extreme_logps=True``: a certain token, a near-certain one, and very unlikely ones."""

REWARD_VALUES: tuple[float, ...] = (0.0, 1.0, -1.0, 0.5, 2.0, 10.0)
"""Simple rewards the reward strategy prefers (exact in float32 and bf16), so shrunk examples stay readable."""

_FLOAT_TENSORS = ("logps", "old_logps", "ref_logps", "advantages", "per_token_loss", "logits")


@dataclasses.dataclass
class GRPOBatch:
    """One drawn GRPO (micro-)batch. Tensor fields use the canonical names of ``TENSOR_STAGE``.

    Rows are grouped contiguously (``group_index = [0]*G + [1]*G + ...``) unless drawn otherwise, so
    ``rewards.view(-1, G)`` is the per-prompt view. ``rewards`` and ``rewards_per_func`` are float32 (float64
    when ``dtype`` is float64); the log-prob-like tensors are in ``dtype``. Values at masked positions are
    arbitrary (finite) on purpose: a correct stage must ignore them. ``logps``, ``old_logps``, ``ref_logps``,
    ``advantages`` and ``per_token_loss`` are drawn independently of each other (each stage's input, not a
    consistent pipeline); ``logits``/``input_ids`` exist when drawn ``with_logits``: ``logits[:, t]``
    predicts ``input_ids[:, t + 1]`` (raw model output, not yet shifted), the completion is the last
    ``T`` tokens of ``input_ids``.
    """

    spec: GRPOSpec
    group_index: torch.Tensor  # (B,) int64
    rewards_per_func: torch.Tensor  # (B, F), NaN = the function could not score the row
    rewards: torch.Tensor  # (B,) weighted total, NaN = unscorable
    completion_ids: torch.Tensor  # (B, T) int64
    completion_mask: torch.Tensor  # (B, T) int64 prefix mask
    logps: torch.Tensor  # (B, T) <= 0
    old_logps: torch.Tensor  # (B, T)
    ref_logps: torch.Tensor  # (B, T)
    advantages: torch.Tensor  # (B,) an input for the loss stage
    per_token_loss: torch.Tensor  # (B, T) an input for the aggregation stage
    logits: torch.Tensor | None = None  # (B, P + T, V) raw (unshifted) logits
    input_ids: torch.Tensor | None = None  # (B, P + T) prompt + completion
    prompt_length: int = 0
    seed: int = 0

    @property
    def num_generations(self) -> int:
        return self.spec.num_generations

    @property
    def batch_size(self) -> int:
        return int(self.group_index.shape[0])

    @property
    def num_prompts(self) -> int:
        return int(torch.unique(self.group_index).numel())

    @property
    def max_length(self) -> int:
        return int(self.completion_mask.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.logps.dtype

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)

    @property
    def num_items_in_batch(self) -> int:
        return int(self.completion_mask.sum())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The canonical-name tensors (what a trace step would hold)."""
        names = (
            "group_index",
            "rewards_per_func",
            "rewards",
            "completion_ids",
            "completion_mask",
            "logps",
            "old_logps",
            "ref_logps",
            "advantages",
            "per_token_loss",
        )
        return {name: getattr(self, name) for name in names}

    def to_trace_step(self, step: int = 0) -> TraceStep:
        """This batch as a :class:`~grpo_check.trace.model.TraceStep` (metadata: step, num_items_in_batch)."""
        return TraceStep(
            tensors=dict(self.tensors()),
            meta={"step": step, "num_items_in_batch": self.num_items_in_batch},
        )

    def describe(self, *, fields: tuple[str, ...] = ("rewards", "lengths")) -> str:
        """Compact text of the batch for failure messages, one prompt group per line."""
        G = self.num_generations
        head = (
            f"B={self.batch_size} rows = {self.num_prompts} prompt(s) x G={G}, T={self.max_length}, "
            f"dtype={str(self.dtype).replace('torch.', '')}, seed={self.seed}"
        )
        lines = [head]
        for prompt in torch.unique(self.group_index).tolist():
            rows = (self.group_index == prompt).nonzero().flatten().tolist()
            parts = []
            for name in fields:
                if name == "lengths":
                    parts.append(f"lengths={[int(self.lengths[r]) for r in rows]}")
                elif name == "rewards":
                    parts.append(f"rewards={_fmt_list(self.rewards[rows].tolist())}")
                else:
                    value = getattr(self, name)
                    if value is None:
                        continue
                    if value.dim() == 1:
                        parts.append(f"{name}={_fmt_list(value[rows].tolist())}")
                    else:
                        masked = [
                            _fmt_list(value[r, : int(self.lengths[r])].tolist())
                            if value.dim() == 2
                            else "..."
                            for r in rows
                        ]
                        parts.append(f"{name}=[{', '.join(masked)}]")
            lines.append(f"  prompt {prompt} (rows {rows[0]}..{rows[-1]}): " + ", ".join(parts))
        return "\n".join(lines)


def _fmt_list(values: list[float]) -> str:
    return "[" + ", ".join(_fmt(v) for v in values) + "]"


def _fmt(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.4g}"


# ---------------------------------------------------------------- building blocks


def _as_strategy(value: Any) -> SearchStrategy:
    return value if isinstance(value, SearchStrategy) else st.just(value)


@st.composite
def group_indices(
    draw: st.DrawFn,
    num_prompts: int | SearchStrategy[int] = st.integers(1, 3),
    num_generations: int | SearchStrategy[int] = st.sampled_from([2, 3, 4]),
    *,
    contiguous: bool = True,
) -> torch.Tensor:
    """(B,) int64 group index with equal group sizes; contiguous blocks (``repeat_interleave``) by default,
    rows shuffled when ``contiguous=False``."""
    prompts = draw(_as_strategy(num_prompts))
    generations = draw(_as_strategy(num_generations))
    index = torch.arange(prompts).repeat_interleave(generations)
    if not contiguous:
        order = draw(st.permutations(list(range(index.numel()))))
        index = index[torch.tensor(order, dtype=torch.long)]
    return index


_REWARD_VALUE: SearchStrategy[float] = st.one_of(
    st.sampled_from(REWARD_VALUES),
    st.integers(-8, 8).map(lambda k: k / 4),
    st.floats(-10, 10, allow_nan=False, width=32),
)
_NAN_FLAG: SearchStrategy[bool] = st.sampled_from([False] * 5 + [True])  # ~1 row in 6; shrinks to False
_EXTREME_VALUE: SearchStrategy[float] = st.sampled_from(EXTREME_LOGPS)


def _reward_value() -> SearchStrategy[float]:
    return _REWARD_VALUE


@st.composite
def rewards_per_func(
    draw: st.DrawFn,
    group_index: torch.Tensor,
    num_functions: int = 1,
    *,
    nan_rewards: bool = True,
    zero_variance: bool = True,
) -> torch.Tensor:
    """(B, F) float32 per-function rewards. Zero-variance groups (one value repeated), unscorable rows
    (every function NaN) and, with F > 1, single NaN entries appear when allowed."""
    rows = int(group_index.numel())
    out = torch.empty(rows, num_functions, dtype=torch.float32)
    for prompt in torch.unique(group_index).tolist():
        members = (group_index == prompt).nonzero().flatten().tolist()
        constant = zero_variance and draw(st.booleans())
        for k in range(num_functions):
            if constant:
                value = draw(_reward_value())
                out[members, k] = value
            else:
                for row in members:
                    out[row, k] = draw(_reward_value())
    if nan_rewards:
        nan_flag = _NAN_FLAG
        for row in range(rows):
            if draw(nan_flag):
                out[row, :] = float("nan")
            elif num_functions > 1:
                for k in range(num_functions):
                    if draw(nan_flag):
                        out[row, k] = float("nan")
    return out


def total_rewards(per_func: torch.Tensor, weights: tuple[float, ...] | None = None) -> torch.Tensor:
    """Σ_k w_k R_ik over non-NaN functions; NaN where every function is NaN (TRL's rule)."""
    w = torch.ones(per_func.shape[1]) if weights is None else torch.tensor(weights, dtype=per_func.dtype)
    total = (per_func * w.to(per_func.dtype)).nansum(dim=1)
    return total.masked_fill(torch.isnan(per_func).all(dim=1), float("nan"))


@st.composite
def rewards(
    draw: st.DrawFn, group_index: torch.Tensor, *, nan_rewards: bool = True, zero_variance: bool = True
) -> torch.Tensor:
    """(B,) float32 total rewards for the given groups (see :func:`rewards_per_func`)."""
    per_func = draw(rewards_per_func(group_index, 1, nan_rewards=nan_rewards, zero_variance=zero_variance))
    return per_func[:, 0]


@st.composite
def completion_masks(
    draw: st.DrawFn,
    batch_size: int,
    max_length: int | SearchStrategy[int] = st.integers(1, 6),
    *,
    masked_rows: bool = True,
) -> torch.Tensor:
    """(B, T) int64 prefix masks with ragged lengths; a length-0 (all-masked) row when ``masked_rows``."""
    length_cap = draw(_as_strategy(max_length))
    length = st.integers(0 if masked_rows else 1, length_cap)
    lengths = [draw(length) for _ in range(batch_size)]
    positions = torch.arange(length_cap)
    return (positions.unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()


@st.composite
def logps(
    draw: st.DrawFn,
    shape: tuple[int, int],
    *,
    dtype: torch.dtype = torch.float32,
    extreme_logps: bool = True,
) -> torch.Tensor:
    """(B, T) log-probs <= 0: seeded values in [-5, 0) plus, when allowed, planted extremes (0, -1e-7, -30,
    -100) at drawn positions."""
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    values = -5.0 * torch.rand(shape, generator=generator, dtype=torch.float64)
    if extreme_logps and shape[0] * shape[1] > 0:
        _plant_extremes(draw, values)
    return values.to(dtype)


def _plant_extremes(draw: st.DrawFn, values: torch.Tensor) -> None:
    rows, cols = values.shape
    plants = draw(
        st.lists(
            st.tuples(st.integers(0, rows - 1), st.integers(0, cols - 1), _EXTREME_VALUE),
            max_size=3,
        )
    )
    for row, col, value in plants:
        values[row, col] = value


def specs(**fixed: Any) -> SearchStrategy[GRPOSpec]:
    """GRPOSpec variants: loss type, std convention, ε, scaling, KL, clipping, IS level.

    Keyword arguments fix a field to a value or to a strategy, e.g. ``specs(loss_type="grpo")`` or
    ``specs(adv_epsilon=st.sampled_from([1e-4, 1e-6]))``.
    """
    fields = {
        "num_generations": st.sampled_from([2, 3, 4]),
        "loss_type": st.sampled_from(["grpo", "bnpo", "dr_grpo", "dapo"]),
        "std": st.sampled_from(["sample", "population"]),
        "adv_epsilon": st.sampled_from([1e-4, 1e-6, 1e-8]),
        "scale_rewards": st.sampled_from(["group", "batch", "none"]),
        "beta": st.sampled_from([0.0, 0.04]),
        "kl_estimator": st.sampled_from(["k3", "k1", "k2"]),
        "epsilon": st.sampled_from([0.2, 0.1]),
        "epsilon_high": st.sampled_from([None, 0.28]),
        "importance_sampling_level": st.sampled_from(["token", "sequence"]),
        "max_completion_length": st.just(6),
    }
    for name, value in fixed.items():
        fields[name] = _as_strategy(value)
    return st.builds(GRPOSpec, **fields)


# ---------------------------------------------------------------- the batch strategy


@st.composite
def grpo_batches(
    draw: st.DrawFn,
    *,
    spec: GRPOSpec | SearchStrategy[GRPOSpec] | None = None,
    num_generations: int | SearchStrategy[int] | None = None,
    num_prompts: int | SearchStrategy[int] = st.integers(1, 3),
    max_length: int = 6,
    num_reward_functions: int | SearchStrategy[int] = 1,
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16),
    nan_rewards: bool = True,
    masked_rows: bool = True,
    zero_variance: bool = True,
    extreme_logps: bool = True,
    with_logits: bool = False,
    vocab_size: int = 5,
    prompt_length: int = 2,
    contiguous: bool = True,
) -> GRPOBatch:
    """Draw a :class:`GRPOBatch`.

    Args:
        spec: the configuration (or a strategy of them, e.g. :func:`specs`); ``num_generations`` in the
            returned batch's spec is the drawn group size. Default ``GRPOSpec(loss_type="grpo")``.
        num_generations: G (int or strategy); default ``{2, 3, 4}``.
        num_prompts: prompts per batch (int or strategy); default 1–3 (grouping bugs need ≥ 2).
        max_length: T upper bound; the batch's T is drawn in ``1..max_length``, lengths in ``0..T``.
        num_reward_functions: F.
        dtypes: dtypes the log-prob-like tensors are drawn in (one per batch).
        nan_rewards, masked_rows, zero_variance, extreme_logps: switch each edge case off.
        with_logits: also draw raw logits ``(B, P + T, vocab_size)`` and ``input_ids`` for the logps stage.
        contiguous: rows of a prompt are adjacent (``repeat_interleave``); ``False`` shuffles rows.
    """
    base = draw(_as_strategy(spec)) if spec is not None else GRPOSpec(loss_type="grpo")
    generations = draw(
        _as_strategy(num_generations if num_generations is not None else st.sampled_from([2, 3, 4]))
    )
    index = draw(group_indices(num_prompts, generations, contiguous=contiguous))
    functions = draw(_as_strategy(num_reward_functions))
    per_func = draw(rewards_per_func(index, functions, nan_rewards=nan_rewards, zero_variance=zero_variance))
    rows = int(index.numel())
    mask = draw(completion_masks(rows, st.integers(1, max_length), masked_rows=masked_rows))
    dtype = draw(st.sampled_from(list(dtypes)))
    seed = draw(st.integers(0, 2**16))
    length = mask.shape[1]
    weights = base.reward_weights
    batch_spec = base.replace(
        num_generations=generations,
        max_completion_length=max(base.max_completion_length or 0, length),
        reward_weights=weights if weights is not None and len(weights) == functions else None,
    )
    tensors = _seeded_tensors(seed, rows, length, vocab_size, prompt_length, with_logits)
    if extreme_logps:
        _plant_extremes(draw, tensors["logps"])
        _derive_old_and_ref(tensors)
    reward_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    per_func = per_func.to(reward_dtype)
    total = total_rewards(per_func, batch_spec.reward_weights)
    advantages = tensors["advantages"].masked_fill(torch.isnan(total), 0.0)
    return GRPOBatch(
        spec=batch_spec,
        group_index=index,
        rewards_per_func=per_func,
        rewards=total,
        completion_ids=tensors["completion_ids"],
        completion_mask=mask,
        logps=tensors["logps"].to(dtype),
        old_logps=tensors["old_logps"].to(dtype),
        ref_logps=tensors["ref_logps"].to(dtype),
        advantages=advantages.to(dtype),
        per_token_loss=tensors["per_token_loss"].to(dtype),
        logits=None if tensors.get("logits") is None else tensors["logits"].to(dtype),
        input_ids=tensors.get("input_ids"),
        prompt_length=prompt_length if with_logits else 0,
        seed=seed,
    )


def _seeded_tensors(
    seed: int, rows: int, length: int, vocab_size: int, prompt_length: int, with_logits: bool
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)

    out: dict[str, torch.Tensor] = {}
    out["completion_ids"] = torch.randint(0, vocab_size, (rows, length), generator=generator)
    out["logps"] = uniform(-5.0, 0.0, rows, length)
    out["log_ratio"] = uniform(-0.6, 0.6, rows, length)  # many ratios outside [1 - 0.2, 1 + 0.2]
    out["ref_delta"] = uniform(-2.0, 2.0, rows, length)
    _derive_old_and_ref(out)
    out["advantages"] = torch.randn(rows, generator=generator, dtype=torch.float64)
    out["per_token_loss"] = torch.randn(rows, length, generator=generator, dtype=torch.float64)
    if with_logits:
        out["logits"] = 3.0 * torch.randn(rows, prompt_length + length, vocab_size, generator=generator)
        prompt_ids = torch.randint(0, vocab_size, (rows, prompt_length), generator=generator)
        out["input_ids"] = torch.cat([prompt_ids, out["completion_ids"]], dim=1)
    return out


def _derive_old_and_ref(tensors: dict[str, torch.Tensor]) -> None:
    tensors["old_logps"] = (tensors["logps"] - tensors["log_ratio"]).clamp(max=0.0)
    tensors["ref_logps"] = (tensors["logps"] + tensors["ref_delta"]).clamp(max=0.0)


def make_batch(
    *,
    spec: GRPOSpec | None = None,
    num_prompts: int = 2,
    num_generations: int = 4,
    max_length: int = 6,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    with_logits: bool = True,
    vocab_size: int = 5,
    prompt_length: int = 2,
) -> GRPOBatch:
    """One deterministic batch without hypothesis: binary rewards, ragged lengths, the last prompt group
    zero-variance, one all-masked row and one unscorable (NaN) row when the batch is large enough."""
    base = spec or GRPOSpec(loss_type="grpo")
    index = torch.arange(num_prompts).repeat_interleave(num_generations)
    rows = int(index.numel())
    generator = torch.Generator().manual_seed(seed)
    reward = torch.randint(0, 2, (rows,), generator=generator).to(torch.float32)
    reward[: min(2, rows)] = torch.tensor([0.0, 1.0])[: min(2, rows)]  # prompt 0 always has signal
    if num_prompts > 1:
        reward[index == num_prompts - 1] = 1.0  # a zero-variance group
    if num_generations > 2:
        reward[2] = float("nan")  # an unscorable row
    lengths = torch.randint(1, max_length + 1, (rows,), generator=generator)
    lengths[0] = max_length
    if rows > 1:
        lengths[-1] = 0  # an all-masked row
    mask = (torch.arange(max_length).unsqueeze(0) < lengths.unsqueeze(1)).long()
    tensors = _seeded_tensors(seed, rows, max_length, vocab_size, prompt_length, with_logits)
    return GRPOBatch(
        spec=base.replace(
            num_generations=num_generations,
            max_completion_length=max(base.max_completion_length or 0, max_length),
            reward_weights=None,
        ),
        group_index=index,
        rewards_per_func=reward.unsqueeze(1),
        rewards=reward,
        completion_ids=tensors["completion_ids"],
        completion_mask=mask,
        logps=tensors["logps"].to(dtype),
        old_logps=tensors["old_logps"].to(dtype),
        ref_logps=tensors["ref_logps"].to(dtype),
        advantages=tensors["advantages"].masked_fill(torch.isnan(reward), 0.0).to(dtype),
        per_token_loss=tensors["per_token_loss"].to(dtype),
        logits=None if not with_logits else tensors["logits"].to(dtype),
        input_ids=tensors.get("input_ids"),
        prompt_length=prompt_length if with_logits else 0,
        seed=seed,
    )


__all__ = [
    "EXTREME_LOGPS",
    "REWARD_VALUES",
    "GRPOBatch",
    "completion_masks",
    "group_indices",
    "grpo_batches",
    "logps",
    "make_batch",
    "rewards",
    "rewards_per_func",
    "specs",
    "total_rewards",
]

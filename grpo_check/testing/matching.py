"""``assert_matches_reference``: property-test your GRPO stage function against the float64 reference.

Hypothesis draws GRPO batches (several prompts, ragged lengths, all-masked rows, zero-variance groups,
NaN rewards, extreme log-probs), your function and the reference run on each, and on a mismatch hypothesis
shrinks the batch; the :class:`~grpo_check.findings.GRPOCheckError` names the stage, the smallest failing
batch, the worst element in GRPO coordinates, and — when your output equals a known variant — the likely
bug.

Calling conventions (your function's parameters are matched **by name**; unknown names fall back to the
positional order shown; parameters with defaults that match nothing keep their default; ``**kwargs``
receives everything; ``spec``/``config`` gives the :class:`~grpo_check.config.GRPOSpec`):

==============  ==========================================================================  ================
stage           arguments (positional order first)                                          returns
==============  ==========================================================================  ================
advantages      ``rewards`` (B,) float, NaN = unscorable; ``num_generations`` int (rows      (B,)
                grouped contiguously: rows ``g*G .. g*G+G-1`` answer prompt g); or
                ``group_index`` (B,) int64; ``rewards_per_func`` (B, 1)
logps           ``logits`` (B, P+T, V) raw model output; ``input_ids`` (B, P+T);             (B, T)
                ``logits_to_keep`` = T; ``temperature``; also ``completion_ids`` (B, T),
                ``prompt_length`` = P, ``completion_mask``
ratio           ``logps``, ``old_logps`` (B, T), ``completion_mask`` (B, T)                  (B, T) or (B, 1)
kl              ``logps``, ``ref_logps`` (B, T); ``completion_mask``                         (B, T)
loss            ``logps`` (B, T, requires grad), ``old_logps``, ``advantages`` (B,),         scalar
                ``completion_mask``; ``ref_logps``, ``num_items_in_batch``,
                ``max_completion_length``
aggregation     ``per_token_loss`` (B, T, requires grad), ``completion_mask``;               scalar
                ``num_items_in_batch``, ``max_completion_length``
==============  ==========================================================================  ================

Configuration comes from ``config`` (a GRPOSpec): ε, std convention, ``scale_rewards``, temperature, loss
type, clip ranges, KL estimator (bare, without bias correction, in the ``kl`` stage; the ``loss`` stage
applies ``use_bias_correction_kl``) and ``importance_sampling_level``. G is drawn (2–4) unless you pass
``num_generations``. For ``kl`` and ``loss``/``aggregation`` a scalar/tensor that carries a graph is also
differentiated and its gradient compared (∂loss/∂logps — what a trainer really applies — or the per-token
aggregation weights).

Example::

    from grpo_check import GRPOSpec
    from grpo_check.testing import assert_matches_reference

    def my_advantages(rewards, num_generations):
        grouped = rewards.view(-1, num_generations)
        mean, std = grouped.nanmean(1, keepdim=True), ...
        return ...

    assert_matches_reference(my_advantages, stage="advantages", config=GRPOSpec(), max_examples=50)
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpo_check._kinds import is_whole_number
from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, GRPOCheckError, InputError, Verdict
from grpo_check.testing import _stages
from grpo_check.testing._compare import call_by_names
from grpo_check.testing.strategies import GRPOBatch, grpo_batches, make_batch

STAGE_NAMES: tuple[str, ...] = ("advantages", "logps", "ratio", "kl", "loss", "aggregation")


@dataclasses.dataclass(frozen=True)
class _Stage:
    name: str
    order: tuple[str, ...]
    aliases: Mapping[str, str]
    grad_input: str | None = None


_STAGES: dict[str, _Stage] = {
    "advantages": _Stage(
        "advantages",
        ("rewards", "num_generations"),
        {
            "reward": "rewards",
            "scores": "rewards",
            "group_size": "num_generations",
            "G": "num_generations",
            "group_ids": "group_index",
            "groups": "group_index",
        },
    ),
    "logps": _Stage(
        "logps",
        ("logits", "input_ids", "logits_to_keep"),
        {
            "ids": "input_ids",
            "n_keep": "logits_to_keep",
            "num_logits_to_keep": "logits_to_keep",
            "tau": "temperature",
            "mask": "completion_mask",
        },
    ),
    "ratio": _Stage(
        "ratio",
        ("logps", "old_logps", "completion_mask"),
        {"per_token_logps": "logps", "old_per_token_logps": "old_logps", "mask": "completion_mask"},
    ),
    "kl": _Stage(
        "kl",
        ("logps", "ref_logps", "completion_mask"),
        {"per_token_logps": "logps", "ref_per_token_logps": "ref_logps", "mask": "completion_mask"},
        grad_input="logps",
    ),
    "loss": _Stage(
        "loss",
        ("logps", "old_logps", "advantages", "completion_mask"),
        {
            "per_token_logps": "logps",
            "old_per_token_logps": "old_logps",
            "ref_per_token_logps": "ref_logps",
            "mask": "completion_mask",
            "loss_mask": "completion_mask",
        },
        grad_input="logps",
    ),
    "aggregation": _Stage(
        "aggregation",
        ("per_token_loss", "completion_mask"),
        {"losses": "per_token_loss", "mask": "completion_mask", "loss_mask": "completion_mask"},
        grad_input="per_token_loss",
    ),
}


def _available(batch: GRPOBatch, stage: _Stage) -> dict[str, Any]:
    spec = batch.spec
    args: dict[str, Any] = {
        "spec": spec,
        "config": spec,
        "num_generations": batch.num_generations,
        "group_index": batch.group_index,
        "completion_mask": batch.completion_mask,
        "num_items_in_batch": batch.num_items_in_batch,
        "max_completion_length": spec.max_completion_length,
        "temperature": spec.temperature,
    }
    if stage.name == "advantages":
        args.update(rewards=batch.rewards.clone(), rewards_per_func=batch.rewards_per_func.clone())
    elif stage.name == "logps":
        args.update(
            logits=batch.logits.clone(),
            input_ids=batch.input_ids,
            completion_ids=batch.completion_ids,
            logits_to_keep=batch.max_length,
            prompt_length=batch.prompt_length,
        )
    elif stage.name in ("ratio", "kl", "loss"):
        args.update(
            logps=batch.logps.clone(), old_logps=batch.old_logps.clone(), ref_logps=batch.ref_logps.clone()
        )
        args["advantages"] = batch.advantages.clone()
        args.update(epsilon=spec.epsilon_low, epsilon_high=spec.epsilon_high_effective, beta=spec.beta)
    elif stage.name == "aggregation":
        args["per_token_loss"] = batch.per_token_loss.clone()
    if stage.grad_input is not None:
        args[stage.grad_input] = args[stage.grad_input].detach().requires_grad_(True)
    return args


def check_stage_on_batch(
    user_fn: Callable[..., Any],
    stage: str,
    batch: GRPOBatch,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    diagnose: bool = True,
) -> Finding | None:
    """Run ``user_fn`` on one batch for ``stage`` and compare with the reference; ``None`` when it agrees."""
    definition = _STAGES[stage]
    args = _available(batch, definition)
    try:
        output = call_by_names(user_fn, args, order=definition.order, aliases=definition.aliases, stage=stage)
    except InputError:
        raise
    except Exception as exc:
        return Finding(
            check_id=f"testing.matches_reference.{stage}",
            stage=_finding_stage(stage),
            verdict=Verdict.FAIL,
            explanation=f"{_fn_name(user_fn)} raised {type(exc).__name__}: {exc}",
            likely_cause="the function does not handle this batch shape or edge case",
            kind="compare",
        )
    if isinstance(output, Mapping):
        key = {"aggregation": "loss"}.get(stage, stage)
        if key not in output:
            raise InputError(f"{_fn_name(user_fn)} returned a mapping without {key!r} for stage {stage!r}")
        output = output[key]
    if not isinstance(output, torch.Tensor):
        if output is None or (
            isinstance(output, tuple | list)
            and any(isinstance(item, torch.Tensor) and item.dim() > 0 for item in output)
        ):
            raise InputError(
                f"{_fn_name(user_fn)} (stage {stage!r}) must return a tensor (or a dict holding one under "
                f"{ {'aggregation': 'loss'}.get(stage, stage)!r}), got "
                + (
                    "None: did it forget to return?"
                    if output is None
                    else f"a {type(output).__name__} of tensors"
                )
            )
        try:
            output = torch.as_tensor(output)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(
                f"{_fn_name(user_fn)} (stage {stage!r}) must return a tensor, got {type(output).__name__}"
            ) from None
    spec = batch.spec
    common = {"rtol": rtol, "atol": atol, "diagnose": diagnose}
    if stage == "advantages":
        return _stages.check_advantages(output, batch.rewards_per_func, batch.group_index, spec, **common)
    if stage == "logps":
        return _stages.check_logps(
            output, batch.logits, batch.completion_ids, spec, prompt_length=batch.prompt_length,
            completion_mask=batch.completion_mask, group_index=batch.group_index, **common,
        )  # fmt: skip
    if stage == "ratio":
        return _stages.check_ratio(
            output,
            batch.logps,
            batch.old_logps,
            batch.completion_mask,
            spec,
            group_index=batch.group_index,
            **common,
        )
    grad = _gradient(output, args.get(definition.grad_input)) if definition.grad_input else None
    if stage == "kl":
        return _stages.check_kl(
            output, batch.logps, batch.ref_logps, batch.completion_mask, spec, actual_grad=grad,
            group_index=batch.group_index, **common,
        )  # fmt: skip
    if stage == "loss":
        return _stages.check_loss(
            output, batch.logps, batch.old_logps, batch.advantages, batch.completion_mask, spec, actual_grad=grad,
            ref_logps=batch.ref_logps, num_items_in_batch=batch.num_items_in_batch, group_index=batch.group_index,
            **common,
        )  # fmt: skip
    return _stages.check_aggregation(
        output, batch.per_token_loss, batch.completion_mask, spec, actual_grad=grad,
        num_items_in_batch=batch.num_items_in_batch, group_index=batch.group_index, **common,
    )  # fmt: skip


def _gradient(output: torch.Tensor, leaf: torch.Tensor | None) -> torch.Tensor | None:
    """∂output/∂leaf; zeros when the output has no graph back to the input (it was detached)."""
    if leaf is None:
        return None
    if not output.requires_grad:
        return torch.zeros_like(leaf)
    target = output.sum() if output.dim() else output
    (grad,) = torch.autograd.grad(target, leaf, allow_unused=True)
    return torch.zeros_like(leaf) if grad is None else grad


def _finding_stage(stage: str) -> str:
    return "loss" if stage == "aggregation" else stage


def _fn_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


class _Mismatch(Exception):
    def __init__(self, finding: Finding, batch: GRPOBatch):
        super().__init__(finding.message())
        self.finding = finding
        self.batch = batch


_DESCRIBE_FIELDS = {
    "advantages": ("rewards", "lengths"),
    "logps": ("lengths",),
    "ratio": ("lengths", "logps", "old_logps"),
    "kl": ("lengths", "logps", "ref_logps"),
    "loss": ("lengths", "advantages"),
    "aggregation": ("lengths", "per_token_loss"),
}


def _check_generation_settings(
    max_examples: Any, num_prompts: Any, max_length: Any, dtypes: Any
) -> tuple[torch.dtype, ...]:
    """``InputError`` for settings hypothesis would reject with a message about its own internals; the
    dtypes as a tuple (one dtype alone is accepted)."""
    if not is_whole_number(max_examples) or max_examples < 1:
        raise InputError(f"must be a whole number >= 1, got {max_examples!r}", field="max_examples")
    low_high = (num_prompts, num_prompts) if is_whole_number(num_prompts) else num_prompts
    if not (
        isinstance(low_high, tuple | list)
        and len(low_high) == 2
        and all(is_whole_number(v) for v in low_high)
        and 1 <= low_high[0] <= low_high[1]
    ):
        raise InputError(
            f"must be a whole number >= 1 or a range (low, high) with 1 <= low <= high, got {num_prompts!r}",
            field="num_prompts",
        )
    if not is_whole_number(max_length) or max_length < 1:
        raise InputError(f"must be a whole number >= 1, got {max_length!r}", field="max_length")
    chosen = (dtypes,) if isinstance(dtypes, torch.dtype) else tuple(dtypes)
    if not chosen or not all(isinstance(d, torch.dtype) and d.is_floating_point for d in chosen):
        raise InputError(
            f"must be one or more floating dtypes (torch.float32, torch.bfloat16, ...), got {dtypes!r}",
            field="dtypes",
        )
    return chosen


def assert_matches_reference(
    user_fn: Callable[..., Any],
    stage: str,
    config: GRPOSpec | None = None,
    *,
    max_examples: int = 50,
    num_generations: int | None = None,
    num_prompts: int | tuple[int, int] = (1, 3),
    max_length: int = 6,
    dtypes: tuple[torch.dtype, ...] = (torch.float32,),
    nan_rewards: bool = True,
    masked_rows: bool = True,
    zero_variance: bool = True,
    extreme_logps: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
    derandomize: bool = True,
) -> None:
    """Property-test ``user_fn`` for ``stage`` against the float64 reference over generated batches.

    Raises :class:`GRPOCheckError` (an ``AssertionError``) naming the stage, the SMALLEST failing batch
    (hypothesis shrinking), the worst element and the likely cause; returns ``None`` when every example
    agrees. See the module docstring for the calling convention of each stage.

    Args:
        user_fn: your function (see the table in the module docstring).
        stage: one of ``"advantages"``, ``"logps"``, ``"ratio"``, ``"kl"``, ``"loss"``, ``"aggregation"``.
        config: the GRPOSpec your function is meant to implement (default ``GRPOSpec()``); its
            ``num_generations`` is replaced by the drawn group size unless ``num_generations`` is given.
        max_examples: hypothesis examples (25–50 keeps a CI test around a second).
        num_prompts: prompts per batch, an int or an inclusive (low, high) range (grouping bugs need ≥ 2).
        dtypes: dtypes of the log-prob-like inputs (add ``torch.bfloat16`` to test low precision; the
            tolerance grows with the dtype's rounding error).
        nan_rewards, masked_rows, zero_variance, extreme_logps: switch off an edge case your function
            deliberately does not support.
        rtol, atol: override torch's per-dtype tolerances.
        derandomize: the same examples every run (reproducible CI); ``False`` explores new ones each run.
    """
    __tracebackhide__ = True
    if stage not in _STAGES:
        raise InputError(f"stage must be one of {', '.join(STAGE_NAMES)}; got {stage!r}", field="stage")
    from grpo_check.testing.assertions import as_spec

    spec = as_spec(config, name="config")
    _check_signature(user_fn, stage, spec)
    dtypes = _check_generation_settings(max_examples, num_prompts, max_length, dtypes)
    prompts = st.just(num_prompts) if isinstance(num_prompts, int) else st.integers(*num_prompts)
    strategy = grpo_batches(
        spec=spec,
        num_generations=num_generations,
        num_prompts=prompts,
        max_length=max_length,
        dtypes=dtypes,
        nan_rewards=nan_rewards,
        masked_rows=masked_rows,
        zero_variance=zero_variance,
        extreme_logps=extreme_logps,
        with_logits=stage == "logps",
    )
    examples = {"count": 0}

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(strategy)
    def _property(batch: GRPOBatch) -> None:
        examples["count"] += 1
        # diagnosed: a difference the diagnoses classify as a convention is not a failure (as in the CLI)
        finding = check_stage_on_batch(user_fn, stage, batch, rtol=rtol, atol=atol)
        if finding is not None:
            raise _Mismatch(finding, batch)

    try:
        _property()
    except _Mismatch as mismatch:
        raise GRPOCheckError(
            _final_finding(mismatch, user_fn, stage, examples["count"], rtol=rtol, atol=atol)
        ) from None


def _final_finding(
    mismatch: _Mismatch,
    user_fn: Callable[..., Any],
    stage: str,
    count: int,
    *,
    rtol: float | None,
    atol: float | None,
) -> Finding:
    batch = mismatch.batch
    finding = check_stage_on_batch(user_fn, stage, batch, rtol=rtol, atol=atol) or mismatch.finding
    description = batch.describe(fields=_DESCRIBE_FIELDS[stage])
    finding.check_id = f"testing.matches_reference.{stage}"
    finding.explanation = (
        f"stage {stage!r}: {_fn_name(user_fn)} disagrees with the float64 reference.\n  "
        + finding.explanation.replace("\n", "\n  ")
        + f"\n  smallest failing batch (shrunk by hypothesis after {count} example(s)):\n    "
        + description.replace("\n", "\n    ")
    )
    finding.details.update(
        batch=description,
        examples=count,
        spec=batch.spec.to_dict(),
        tensors={name: value.tolist() for name, value in batch.tensors().items() if value.numel() <= 256},
    )
    return finding


def _check_signature(user_fn: Callable[..., Any], stage: str, spec: GRPOSpec) -> None:
    """Fail fast (InputError, not a shrunk finding) when ``user_fn``'s parameters cannot be supplied."""
    if not callable(user_fn):
        raise InputError(f"user_fn must be callable, got {type(user_fn).__name__}")
    definition = _STAGES[stage]
    args = _available(make_batch(spec=spec, num_prompts=1, num_generations=2, max_length=2), definition)
    try:
        signature = inspect.signature(user_fn)
    except (TypeError, ValueError):
        return
    known = set(args) | set(definition.aliases)
    slots = 0
    for param in signature.parameters.values():
        if param.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        if param.name in known or param.default is not inspect.Parameter.empty:
            slots += 1
            continue
        if slots < len(definition.order) and param.kind is not inspect.Parameter.KEYWORD_ONLY:
            slots += 1
            continue
        raise InputError(
            f"cannot call {_fn_name(user_fn)} for stage {stage!r}: parameter {param.name!r} matches no known "
            f"argument ({', '.join(sorted(known))}). Rename it, or wrap your function in a lambda."
        )


__all__ = ["STAGE_NAMES", "assert_matches_reference", "check_stage_on_batch"]

"""Assertion helpers: your trainer's tensors against the float64 reference, ``assert_close`` style.

Each ``assert_<stage>_close`` takes your output (a tensor, or a :class:`~grpo_check.trace.model.TraceStep`
from which it and its inputs are read by canonical name), puts it and its inputs into a trace step and runs
the comparison ``grpo-check compare`` runs on it (:func:`grpo_check.compare.compare_step`: the reference fed
the same inputs, the same tolerance policy, the same diagnoses). It raises
:class:`~grpo_check.findings.GRPOCheckError` (an ``AssertionError``) when that stage's check fails — the
message says what differed, where (step, prompt, generation, token), by how much, what was allowed and the
likely cause — or returns ``None``: the assertion and the CLI give the same verdict on the same tensors.
``rtol``/``atol`` override the stage's tolerance as ``--tolerance CHECK=RTOL,ATOL`` does.

Example::

    >>> import torch
    >>> from grpo_check import GRPOSpec
    >>> from grpo_check.testing import assert_advantages_close
    >>> rewards = torch.tensor([0.0, 1.0, 1.0, 1.0])
    >>> assert_advantages_close(torch.tensor([-0.7070, 0.7070, 0.0, 0.0]), rewards=rewards,
    ...                         num_generations=2, rtol=1e-3)
    >>> assert_advantages_close(torch.tensor([-5e-5, 5e-5, 0.0, 0.0]), rewards=rewards, num_generations=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    grpo_check.findings.GRPOCheckError: [FAIL] advantages.values (advantages): advantages (from the trainer's rewards) differs from the reference
    Mismatched elements: 2 / 4 (50.0%)
    Greatest absolute difference: 0.707 at prompt 0, generation 0, row 0 (trainer -5e-05 vs reference -0.707007; up to 1.71e-05 allowed)
    ...

The invariants' ``assert_*`` forms (single-implementation checks such as ``assert_group_sum_zero``) are
re-exported by :mod:`grpo_check.testing` too.
"""

from __future__ import annotations

from typing import Any

import torch

from grpo_check.config import GRPOSpec, as_spec
from grpo_check.findings import Finding, GRPOCheckError, InputError, Verdict
from grpo_check.testing import _stages
from grpo_check.testing._compare import to_tensor
from grpo_check.trace.model import TraceStep


def _raise(finding: Finding | None) -> None:
    __tracebackhide__ = True
    if finding is not None:
        raise GRPOCheckError(finding)


_NONE_ACTUAL = {
    "logps_grad": (
        "the gradient to check is None: no gradient reached logps. Call loss.backward() with logps a leaf "
        "that requires grad (logps.requires_grad_(True)) and pass logps.grad; a None gradient after "
        "backward() means the loss was computed from a detached copy"
    ),
    "loss": "the loss to check is None: pass the scalar loss your trainer computed (did the function return it?)",
}


def _from_step(actual: Any, name: str, inputs: dict[str, Any]) -> tuple[Any, dict[str, Any], int | None]:
    """When ``actual`` is a TraceStep, read ``name`` and missing inputs from it (explicit inputs win)."""
    if actual is None:
        raise InputError(_NONE_ACTUAL.get(name, f"the {name} to check is None"), field=name)
    if not isinstance(actual, TraceStep):
        return actual, inputs, inputs.pop("step", None)
    step = actual
    for key in list(inputs):
        if inputs[key] is None and step.get(key) is not None:
            inputs[key] = step.get(key)
    if step.get(name) is None:
        raise InputError(f"the trace step has no {name!r} tensor to check", field=name)
    meta_step = inputs.pop("step", None)
    return step[name], inputs, meta_step if meta_step is not None else step.step


def _need(inputs: dict[str, Any], *names: str) -> None:
    missing = [n for n in names if inputs.get(n) is None]
    if missing:
        raise InputError(f"missing input(s) {', '.join(missing)}", field=missing[0])


_TOKEN_INPUTS = ("logps", "old_logps", "ref_logps", "completion_mask", "completion_ids", "per_token_loss")


def _check_shapes(
    inputs: dict[str, Any], *, logits: Any = None, prompt_length: int | None = None
) -> tuple[int, int] | None:
    """(B, T) of the inputs, after checking they agree: the (B, T) inputs share one shape, advantages are
    (B,) or (B, T), logits (B, P+T, V) (or (B, T, V) without ``prompt_length``) with ids in [0, V).
    An ``InputError`` naming the input otherwise (not a broadcasting error from deep inside the reference)."""
    shapes = {
        name: tuple(torch.as_tensor(inputs[name]).shape)
        for name in _TOKEN_INPUTS
        if inputs.get(name) is not None
    }
    if not shapes:
        return None
    first, shape = next(iter(shapes.items()))
    if len(shape) != 2:
        raise InputError(f"must be (B, T) (rows, completion tokens), got shape {shape}", field=first)
    for name, other in shapes.items():
        if other != shape:
            raise InputError(
                f"has shape {other}, but {first} has {shape}: the (B, T) inputs must share one shape",
                field=name,
            )
    rows, tokens = shape
    if inputs.get("advantages") is not None:
        got = tuple(torch.as_tensor(inputs["advantages"]).shape)
        if got not in ((rows,), (rows, 1), (rows, tokens)):
            raise InputError(
                f"has shape {got}; expected ({rows},) (one per row) or ({rows}, {tokens}) (per token)",
                field="advantages",
            )
    if logits is not None:
        got = tuple(torch.as_tensor(logits).shape)
        width = tokens if prompt_length is None else prompt_length + tokens
        if len(got) != 3 or got[:2] != (rows, width):
            layout = (
                "(B, T, V)"
                if prompt_length is None
                else f"(B, P+T, V) with P = prompt_length = {prompt_length}"
            )
            raise InputError(f"has shape {got}; expected {layout}, i.e. ({rows}, {width}, V)", field="logits")
        ids = inputs.get("completion_ids")
        if ids is not None:
            ids = torch.as_tensor(ids)
            if ids.dtype.is_floating_point or ids.dtype == torch.bool:
                raise InputError(f"must be integer token ids, got {ids.dtype}", field="completion_ids")
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= got[2]):
                raise InputError(
                    f"holds ids from {int(ids.min())} to {int(ids.max())}, outside the vocabulary of the logits "
                    f"(V = {got[2]})",
                    field="completion_ids",
                )
    return shape


def _check_actual(
    actual: Any, shape: tuple[int, ...] | None, *, name: str, check_id: str, stage: str
) -> None:
    """FAIL (the trainer's tensor, not the inputs, is wrong) when ``actual`` cannot hold ``shape``."""
    if shape is None or actual is None:
        return
    got = tuple(to_tensor(actual, name).shape)
    if got == shape or [d for d in got if d != 1] == [d for d in shape if d != 1]:
        return
    _raise(
        Finding(
            check_id=check_id,
            stage=stage,
            verdict=Verdict.FAIL,
            explanation=f"{name} has shape {got}, expected {shape}",
            details={"actual_shape": list(got), "expected_shape": list(shape)},
        )
    )


def _spec(spec: GRPOSpec | None, **changes: Any) -> GRPOSpec:
    base = as_spec(spec)
    changes = {k: v for k, v in changes.items() if v is not None}
    return base.replace(**changes) if changes else base


def assert_advantages_close(
    actual: torch.Tensor | TraceStep,
    *,
    rewards: torch.Tensor | None = None,
    rewards_per_func: torch.Tensor | None = None,
    group_index: torch.Tensor | None = None,
    num_generations: int | None = None,
    spec: GRPOSpec | None = None,
    step: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """``actual`` (B,) advantages against the reference's from ``rewards`` (B,) or ``rewards_per_func``
    (B, F) and ``group_index`` (B,) — or contiguous groups of ``num_generations`` rows when no index is
    given. ``spec`` sets ε, std convention, ``scale_rewards`` (default ``GRPOSpec()``)."""
    __tracebackhide__ = True
    inputs = {
        "rewards": rewards,
        "rewards_per_func": rewards_per_func,
        "group_index": group_index,
        "step": step,
    }
    actual, inputs, at = _from_step(actual, "advantages", inputs)
    source = inputs["rewards_per_func"] if inputs["rewards_per_func"] is not None else inputs["rewards"]
    if source is None:
        raise InputError("give rewards (B,) or rewards_per_func (B, F)", field="rewards")
    source = torch.as_tensor(source)
    rows = source.shape[0]
    config = _spec(spec, num_generations=num_generations)
    index = inputs["group_index"]
    if index is None:
        if num_generations is None and spec is None:
            raise InputError("give group_index or num_generations", field="group_index")
        if rows % config.num_generations:
            raise InputError(f"{rows} rows is not a multiple of num_generations={config.num_generations}")
        index = torch.arange(rows) // config.num_generations
    _raise(
        _stages.check_advantages(
            actual, source, torch.as_tensor(index), config, step=at, rtol=rtol, atol=atol
        )
    )


def assert_logps_close(
    actual: torch.Tensor | TraceStep,
    *,
    logits: torch.Tensor,
    completion_ids: torch.Tensor | None = None,
    prompt_length: int | None = None,
    completion_mask: torch.Tensor | None = None,
    temperature: float | None = None,
    spec: GRPOSpec | None = None,
    group_index: torch.Tensor | None = None,
    step: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """``actual`` (B, T) log-probs against log-softmax(logits / τ) at ``completion_ids``.

    With ``prompt_length`` the ``logits`` are the model's raw (B, P+T, V) output (the reference applies the
    one-token shift, so an off-by-one in yours shows); without it they are already shifted (B, T, V).
    """
    __tracebackhide__ = True
    inputs = {
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "group_index": group_index,
        "step": step,
    }
    actual, inputs, at = _from_step(actual, "logps", inputs)
    _need(inputs, "completion_ids")
    shape = _check_shapes(inputs, logits=logits, prompt_length=prompt_length)
    _check_actual(actual, shape, name="logps", check_id="testing.logps_close", stage="logps")
    _raise(
        _stages.check_logps(
            actual,
            logits,
            torch.as_tensor(inputs["completion_ids"]),
            _spec(spec, temperature=temperature),
            prompt_length=prompt_length,
            completion_mask=inputs["completion_mask"],
            group_index=inputs["group_index"],
            step=at,
            rtol=rtol,
            atol=atol,
        )
    )


def assert_ratio_close(
    actual: torch.Tensor | TraceStep,
    *,
    logps: torch.Tensor | None = None,
    old_logps: torch.Tensor | None = None,
    completion_mask: torch.Tensor | None = None,
    spec: GRPOSpec | None = None,
    group_index: torch.Tensor | None = None,
    step: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Importance ratio (token (B, T) or sequence (B, 1), per ``spec.importance_sampling_level``)."""
    __tracebackhide__ = True
    inputs = {
        "logps": logps,
        "old_logps": old_logps,
        "completion_mask": completion_mask,
        "group_index": group_index,
        "step": step,
    }
    actual, inputs, at = _from_step(actual, "ratio", inputs)
    _need(inputs, "logps", "old_logps", "completion_mask")
    shape = _check_shapes(inputs)
    if shape is not None and _spec(spec).importance_sampling_level != "token":
        shape = (shape[0], 1)
    _check_actual(actual, shape, name="ratio", check_id="testing.ratio_close", stage="ratio")
    _raise(
        _stages.check_ratio(
            actual,
            inputs["logps"],
            inputs["old_logps"],
            inputs["completion_mask"],
            _spec(spec),
            group_index=inputs["group_index"],
            step=at,
            rtol=rtol,
            atol=atol,
        )
    )


def assert_kl_close(
    actual: torch.Tensor | TraceStep,
    *,
    logps: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    completion_mask: torch.Tensor | None = None,
    estimator: str | None = None,
    grad: torch.Tensor | None = None,
    spec: GRPOSpec | None = None,
    group_index: torch.Tensor | None = None,
    step: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """The per-token KL estimate (``estimator`` or ``spec.kl_estimator``; from plain tensors the bare
    estimate, from a trace step with ``old_logps`` times the ratio where ``spec.use_bias_correction_kl``) and,
    if ``grad`` (∂Σkl/∂logps) is given, its gradient."""
    __tracebackhide__ = True
    inputs = {
        "logps": logps,
        "ref_logps": ref_logps,
        "old_logps": None,
        "completion_mask": completion_mask,
        "group_index": group_index,
        "step": step,
    }
    actual, inputs, at = _from_step(actual, "kl", inputs)
    _need(inputs, "logps", "ref_logps")
    shape = _check_shapes(inputs)
    _check_actual(actual, shape, name="kl", check_id="testing.kl_close", stage="kl")
    _check_actual(grad, shape, name="kl gradient", check_id="testing.kl_close", stage="kl")
    mask = inputs["completion_mask"]
    mask = torch.ones_like(torch.as_tensor(inputs["logps"]), dtype=torch.long) if mask is None else mask
    _raise(
        _stages.check_kl(
            actual,
            torch.as_tensor(inputs["logps"]).detach(),
            torch.as_tensor(inputs["ref_logps"]).detach(),
            mask,
            _spec(spec, kl_estimator=estimator),
            old_logps=inputs["old_logps"],
            actual_grad=grad,
            group_index=inputs["group_index"],
            step=at,
            rtol=rtol,
            atol=atol,
        )
    )


def assert_loss_close(
    actual: torch.Tensor | TraceStep,
    *,
    per_token_loss: torch.Tensor | None = None,
    logps: torch.Tensor | None = None,
    old_logps: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    completion_mask: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    num_items_in_batch: float | None = None,
    spec: GRPOSpec | None = None,
    step: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """The scalar loss of one micro-batch.

    With ``per_token_loss`` only the aggregation is checked (``spec.loss_type``/``aggregation``); otherwise
    the whole objective is recomputed from ``logps``, ``old_logps`` (``None`` = on-policy), ``advantages``
    and ``completion_mask`` (``ref_logps`` when ``spec.beta != 0``). ``num_items_in_batch`` defaults to the
    mask's token count (one process, no accumulation).
    """
    __tracebackhide__ = True
    inputs = {
        "per_token_loss": per_token_loss,
        "logps": logps,
        "old_logps": old_logps,
        "advantages": advantages,
        "completion_mask": completion_mask,
        "ref_logps": ref_logps,
        "step": step,
    }
    if isinstance(actual, TraceStep) and num_items_in_batch is None:
        num_items_in_batch = actual.meta.get("num_items_in_batch")
    actual, inputs, at = _from_step(actual, "loss", inputs)
    config = _spec(spec)
    _need(inputs, "completion_mask")
    _check_shapes(inputs)
    _check_actual(actual, (), name="loss", check_id="testing.loss_close", stage="loss")
    mask = torch.as_tensor(inputs["completion_mask"])
    items = num_items_in_batch if num_items_in_batch is not None else float(mask.sum())
    if per_token_loss is not None:
        _raise(
            _stages.check_aggregation(
                actual,
                torch.as_tensor(per_token_loss).detach(),
                mask,
                config,
                num_items_in_batch=items,
                step=at,
                rtol=rtol,
                atol=atol,
            )
        )
        return
    _need(inputs, "logps", "advantages")
    _raise(
        _stages.check_loss(
            actual,
            _detached(inputs["logps"]),
            _detached(inputs["old_logps"]),
            _detached(inputs["advantages"]),
            mask,
            config,
            ref_logps=_detached(inputs["ref_logps"]),
            num_items_in_batch=items,
            step=at,
            rtol=rtol,
            atol=atol,
        )
    )


def assert_grad_close(
    actual: torch.Tensor | TraceStep,
    *,
    logps: torch.Tensor | None = None,
    old_logps: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    completion_mask: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    num_items_in_batch: float | None = None,
    spec: GRPOSpec | None = None,
    group_index: torch.Tensor | None = None,
    step: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """``actual`` = ∂loss/∂logps (B, T) — the per-token weight your trainer really applies — against the
    reference's by float64 autograd. Catches detached ratios, sign errors, clipping on the wrong side,
    gradient at padding and wrong normalisers, which loss values cannot show (bug-catalog 21, 5, 31)."""
    __tracebackhide__ = True
    inputs = {
        "logps": logps,
        "old_logps": old_logps,
        "advantages": advantages,
        "completion_mask": completion_mask,
        "ref_logps": ref_logps,
        "group_index": group_index,
        "step": step,
    }
    if isinstance(actual, TraceStep) and num_items_in_batch is None:
        num_items_in_batch = actual.meta.get("num_items_in_batch")
    actual, inputs, at = _from_step(actual, "logps_grad", inputs)
    _need(inputs, "logps", "advantages", "completion_mask")
    shape = _check_shapes(inputs)
    _check_actual(actual, shape, name="∂loss/∂logps", check_id="testing.grad_close", stage="grad")
    mask = torch.as_tensor(inputs["completion_mask"])
    items = num_items_in_batch if num_items_in_batch is not None else float(mask.sum())
    _raise(
        _stages.check_loss(
            None,
            _detached(inputs["logps"]),
            _detached(inputs["old_logps"]),
            _detached(inputs["advantages"]),
            mask,
            _spec(spec),
            actual_grad=actual,
            ref_logps=_detached(inputs["ref_logps"]),
            num_items_in_batch=items,
            group_index=inputs["group_index"],
            step=at,
            rtol=rtol,
            atol=atol,
        )
    )


def _detached(value: Any) -> torch.Tensor | None:
    if value is None:
        return None
    return torch.as_tensor(value).detach()


__all__ = [
    "assert_advantages_close",
    "assert_grad_close",
    "assert_kl_close",
    "assert_logps_close",
    "assert_loss_close",
    "assert_ratio_close",
]

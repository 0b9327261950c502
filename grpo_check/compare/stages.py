"""One comparison per stage, each fed the trainer's *own* upstream tensors (stage isolation).

* ``rewards``    trainer ``rewards`` vs Σ_k w_k R_ik of the trainer's ``rewards_per_func``
* ``advantages`` trainer ``advantages`` vs the reference advantages of the trainer's rewards
* ``logps``      trainer ``logps``/``ref_logps`` vs the reference's own forward pass (``model=``/``ref_model=``);
                 sampler-vs-trainer distribution metrics when ``sampler_logps`` was captured
* ``ratio``      trainer ``ratio``/``clipped_ratio``/clip masks vs the reference from the trainer's logps
* ``kl``         trainer ``kl`` vs the reference estimator on the trainer's logps and ref_logps
* ``loss``       trainer ``per_token_loss``/``loss`` vs the reference objective on the trainer's logps,
                 old_logps, ref_logps and advantages
* ``grad``       trainer ``logps_grad`` vs float64 autograd ∂loss/∂logps of that reference loss

An end-to-end pass (``e2e.*`` checks) recomputes everything from the rewards with the reference's own
advantages (and, given a model, its own log-probs) and is reported separately.

Example::

    >>> import torch
    >>> from grpo_check.config import GRPOSpec
    >>> from grpo_check.trace.model import TraceStep
    >>> from grpo_check.compare.stages import compare_stages
    >>> from grpo_check.compare.tolerances import TolerancePolicy
    >>> step = TraceStep(tensors={"rewards_per_func": torch.tensor([[1.0], [0.0]]),
    ...                           "group_index": torch.tensor([0, 0]),
    ...                           "advantages": torch.tensor([0.7070, -0.7070])}, meta={"step": 0})
    >>> findings, _ = compare_stages(step, GRPOSpec(num_generations=2), TolerancePolicy())
    >>> [(f.check_id, f.verdict.value) for f in findings if f.check_id == "advantages.values"]
    [('advantages.values', 'pass')]
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from grpo_check._step_cache import cached
from grpo_check.compare import distribution
from grpo_check.compare._diff import (
    Comparison,
    StepContext,
    as_f64,
    compare_tensor,
    compare_tensors,
    not_captured,
)
from grpo_check.compare.tolerances import LOW_PRECISION, Tolerance, TolerancePolicy
from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, InputError, Verdict
from grpo_check.trace.model import TraceStep


@dataclasses.dataclass
class StageReference:
    """The reference's tensors for one step.

    ``tensors``: stage-isolated values under canonical names (``advantages``, ``rewards``, ``ratio``, ``kl``,
    ``per_token_loss``, ``loss``, ``logps_grad``, ``logps`` / ``ref_logps`` from a model forward, ...).
    ``e2e``: the end-to-end values. ``logits``: the model's completion logits, when a model was given.
    """

    tensors: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    e2e: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    logits: torch.Tensor | None = None
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        return self.tensors.get(name, default)


def step_context(step: TraceStep, spec: GRPOSpec) -> StepContext:
    """GRPO coordinates of ``step`` (group index inferred as contiguous blocks of G when not captured); one
    per step while a step cache is open (the comparison and the diagnoses share it)."""
    # the cached value holds the step too: its id cannot be reused by another step while the cache is open
    key = ("step_context", id(step), spec.num_generations)
    return cached(key, lambda: (_step_context(step, spec), step))[0]


def _step_context(step: TraceStep, spec: GRPOSpec) -> StepContext:
    group_index = step.get("group_index")
    if group_index is None:
        for name in ("rewards_per_func", "rewards", "advantages", "completion_ids", "logps"):
            t = step.get(name)
            if t is not None and t.dim() >= 1 and t.shape[0] % spec.num_generations == 0:
                group_index = torch.div(torch.arange(t.shape[0]), spec.num_generations, rounding_mode="floor")
                break
    return StepContext(
        step=step.meta.get("step"),
        micro_batch=step.meta.get("micro_batch"),
        rank=step.meta.get("rank"),
        group_index=None if group_index is None else group_index.reshape(-1),
        completion_ids=step.get("completion_ids"),
        completion_mask=step.get("completion_mask"),
    )


# Tensors a trainer computes with the model: under mixed precision (e.g. bf16 autocast) they are stored as
# float32 but are only as precise as the compute dtype the capture records in ``meta["compute_dtype"]``.
_MODEL_COMPUTED = frozenset({"logps", "old_logps", "ref_logps", "sampler_logps", "entropies"})


def _dtype(step: TraceStep, name: str) -> str:
    """The precision ``name`` was computed in: the compute dtype for model outputs, else the stored dtype."""
    t = step.get(name)
    stored = str(t.dtype).removeprefix("torch.") if isinstance(t, torch.Tensor) else "float32"
    compute = step.meta.get("compute_dtype")
    if name in _MODEL_COMPUTED and compute in LOW_PRECISION:
        return str(compute)
    return stored


def _same_precision(reference: torch.Tensor, step: TraceStep, name: str) -> torch.Tensor | None:
    """The reference rounded to the precision ``name`` was computed in: the error a same-precision
    reference makes (``None`` for full-precision tensors)."""
    dtype_name = _dtype(step, name)
    if dtype_name in LOW_PRECISION:
        return reference.detach().to(getattr(torch, dtype_name)).double()
    return None


def _meta_int(meta: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = meta.get(key)
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def reference_advantages(step: TraceStep, spec: GRPOSpec, group_index: torch.Tensor | None = None):
    """Reference :class:`AdvantageOutput` from the trainer's rewards (``rewards_per_func`` or ``rewards``)."""
    from grpo_check.reference.advantages import compute_advantages

    rewards = step.get("rewards_per_func")
    if rewards is None:
        rewards = step.get("rewards")
    if rewards is None:
        return None
    weights = step.get("reward_weights") if step.get("rewards_per_func") is not None else None
    gi = group_index if group_index is not None else step.get("group_index")
    if gi is None and rewards.shape[0] % spec.num_generations:
        return None
    return compute_advantages(rewards, None if gi is None else gi.reshape(-1), spec, reward_weights=weights)


def reference_downstream(
    step: TraceStep, spec: GRPOSpec, **overrides: torch.Tensor | None
) -> dict[str, torch.Tensor] | None:
    """Reference ratio, KL, per-token loss, loss and ∂loss/∂logps from the trainer's upstream tensors.

    ``overrides`` replace trainer inputs by name (e.g. ``advantages=`` the reference advantages for the
    end-to-end pass). Returns ``None`` when ``logps`` or ``advantages`` is missing. Gradients are float64
    autograd with respect to a leaf copy of the given ``logps``.
    """
    from grpo_check.reference.loss import aggregate_loss, loss_mask, per_token_loss

    def pick(name: str) -> torch.Tensor | None:
        if name in overrides:
            return overrides[name]
        return step.get(name)

    logps_in, advantages, mask_in = pick("logps"), pick("advantages"), pick("completion_mask")
    if logps_in is None or advantages is None:
        return None
    logps = as_f64(logps_in).detach().clone().requires_grad_(True)
    if mask_in is None:
        mask_in = torch.ones_like(logps, dtype=torch.long)
    mask = loss_mask(mask_in, pick("tool_mask"), pick("truncated"), spec.mask_truncated_completions)
    if spec.beta != 0.0 and pick("ref_logps") is None:
        return None
    if spec.top_entropy_quantile < 1.0 and pick("entropies") is None:
        return None
    sampler_logps = pick("sampler_logps")
    if spec.sampler_is_correction and sampler_logps is None and pick("sampler_is_ratio") is None:
        return None
    old = pick("old_logps")
    with torch.enable_grad():
        out = per_token_loss(
            logps,
            None if old is None else as_f64(old),
            as_f64(advantages),
            mask,
            spec,
            ref_logps=None if pick("ref_logps") is None else as_f64(pick("ref_logps")),
            entropies=None if pick("entropies") is None else as_f64(pick("entropies")),
            sampler_logps=None if sampler_logps is None else as_f64(sampler_logps),
            sampler_is_ratio=None if pick("sampler_is_ratio") is None else as_f64(pick("sampler_is_ratio")),
        )
        meta = step.meta
        items = meta.get("num_items_in_batch")
        agg = aggregate_loss(
            out.per_token_loss,
            mask,
            spec,
            num_items_in_batch=None if items is None else float(items),
            gradient_accumulation_steps=_meta_int(meta, "gradient_accumulation_steps", None),
            num_processes=_meta_int(meta, "num_processes", None),
            steps_per_generation=_meta_int(meta, "steps_per_generation", None),
            entropies=None if pick("entropies") is None else as_f64(pick("entropies")),
            entropy_mask=out.entropy_mask,
        )
        (grad,) = torch.autograd.grad(agg.loss, logps, allow_unused=True)
    result = {
        "ratio": out.ratio.detach(),
        "log_ratio": out.log_ratio.detach(),
        "per_token_loss": out.per_token_loss.detach(),
        "policy_loss": out.policy_loss.detach(),
        "loss": agg.loss.detach(),
        "loss_normalizer": agg.loss_normalizer.detach(),
        "logps_grad": torch.zeros_like(logps) if grad is None else grad.detach(),
        "loss_mask": mask,
    }
    for name in ("clipped_ratio", "is_low_clipped", "is_high_clipped", "kl", "sampler_is_ratio"):
        value = getattr(out, name)
        if value is not None:
            result[name] = value.detach()
    return result


# RoPE models: positions 0..L−1 vs cumsum(mask) − 1 agree up to float rounding (~1e-5 nats); absolute position
# embeddings (GPT-2) differ by whole nats. Anything beyond this is a material difference (bug-catalog #14).
_POSITIONS_MATERIAL = Tolerance(rtol=1e-3, atol=1e-3, source="position-ids materiality")


# train() methods that only set ``training`` on the module tree (transformers' override also re-casts kernels, but
# only when ``use_kernels`` is on, which :func:`set_training` checks).
_PLAIN_TRAIN_METHODS = frozenset({"Module.train", "PreTrainedModel.train"})


def set_training(model: Any, training: bool) -> None:
    """``model.train(training)``, without ``nn.Module.train``'s per-module ``__setattr__``.

    On a small model the regular call costs more than half a millisecond, paid twice per forward pass of the
    reference; this sets the same ``training`` flag on every submodule directly. It falls back to
    ``model.train`` for anything that is not a plain module tree (a module class with its own ``train``, a
    transformers model with ``use_kernels``, or an object that is not an ``nn.Module``).
    """
    root = model if isinstance(model, torch.nn.Module) else getattr(model, "wrapped_module", None)
    if not isinstance(root, torch.nn.Module) or getattr(root, "use_kernels", False):
        model.train(training)
        return
    modules = list(root.modules())
    if any(type(module).train.__qualname__ not in _PLAIN_TRAIN_METHODS for module in modules):
        model.train(training)
        return
    for module in modules:
        object.__setattr__(module, "training", training)


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """The reference's forward passes run in eval mode (no dropout); the model's mode is restored after."""
    was_training = bool(getattr(model, "training", False))
    if was_training:
        set_training(model, False)
    try:
        yield
    finally:
        if was_training:
            set_training(model, True)


def _sequence_logits(model: Any, step: TraceStep) -> torch.Tensor | None:
    """Logits (B, P+T, V) of ``model`` over prompt + completion, no grad, eval mode, positions from the
    attention mask (as generation numbers them); ``None`` when the batch tensors were not captured. The
    model runs on its own device; the logits come back on the step's (a full copy: only the diagnoses and
    the kept-sampling-mass comparison ask for them)."""
    from grpo_check.reference.logps import on_model_device, position_ids_from_mask

    if not step.has("prompt_ids", "prompt_mask", "completion_ids", "completion_mask"):
        return None
    if isinstance(model, KnownLogps) and model.model is None:
        return None
    input_ids = torch.cat([step["prompt_ids"], step["completion_ids"]], dim=1)
    attention = torch.cat([step["prompt_mask"], step["completion_mask"]], dim=1).long()
    inputs = on_model_device(
        model,
        {
            "input_ids": input_ids,
            "attention_mask": attention,
            "position_ids": position_ids_from_mask(attention),
        },
    )
    with _eval_mode(model), torch.no_grad():
        out = model(**inputs)
    return (out.logits if hasattr(out, "logits") else out[0]).detach().to(input_ids.device)


def model_logits(model: Any, step: TraceStep) -> torch.Tensor | None:
    """Completion logits (B, T, V) of ``model``: position P−1+t predicts completion token t."""
    logits = _sequence_logits(model, step)
    if logits is None:
        return None
    n = step["completion_ids"].shape[1]
    return logits[:, -(n + 1) : -1, :]


def model_logps_shifted(model: Any, step: TraceStep, temperature: float, shift: int) -> torch.Tensor | None:
    """Own forward pass, but token t scored by the logits at position P−1+t+shift (a misaligned one-token shift)."""
    from grpo_check.reference.logps import logps_from_logits

    if not step.has("prompt_ids", "completion_ids"):
        return None
    prompt_length, length = step["prompt_ids"].shape[1], step["completion_ids"].shape[1]
    start = prompt_length - 1 + shift
    if start < 0:
        return None
    logits = _sequence_logits(model, step)
    if logits is None:
        return None
    logits = logits[:, start : start + length, :]
    if logits.shape[1] < length:  # shift past the end: pad with the last position (masked out by the caller)
        logits = torch.cat([logits, logits[:, -1:].expand(-1, length - logits.shape[1], -1)], dim=1)
    return logps_from_logits(logits, step["completion_ids"], temperature)


@dataclasses.dataclass(frozen=True)
class KnownLogps:
    """A model whose log-probs for one step's batch were already computed by the reference's own forward pass.

    A frozen reference model scores a row the same way in every micro-batch, so an adapter may run its forward
    once over a whole generation batch and hand each micro-batch its rows. :func:`model_logps` returns
    ``logps`` for the convention they were computed with (positions from the attention mask, at
    ``temperature``) and runs ``model`` itself for any other (the position-ids diagnosis).
    """

    model: Any
    logps: torch.Tensor
    temperature: float

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # config, training, train(), wrapped_module: the model's own
        if name in ("model", "logps", "temperature"):  # not set yet (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)


def window_known_logps(model: Any, steps: list[TraceStep], temperature: float) -> list[Any]:
    """``KnownLogps`` per step from ONE forward pass of ``model`` over all the steps' rows (micro-batches of one
    gradient-accumulation window: the weights do not change inside it), or ``model`` itself for each step when
    their prompt or completion widths differ or the batch tensors are missing. The caller sets no-grad and RNG.
    """
    names = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
    if len(steps) < 2 or any(
        not s.has(*names) or s[name].shape[1] != steps[0][name].shape[1] for s in steps for name in names
    ):
        return [model] * len(steps)
    combined = TraceStep(tensors={name: torch.cat([s[name] for s in steps]) for name in names}, meta={})
    logps = model_logps(model, combined, temperature)  # restores the model's train mode
    if logps is None:
        return [model] * len(steps)
    bounds = [0]
    for s in steps:
        bounds.append(bounds[-1] + int(s["completion_ids"].shape[0]))
    return [KnownLogps(model, logps[start:stop], temperature) for start, stop in itertools.pairwise(bounds)]


def model_logps(
    model: Any, step: TraceStep, temperature: float, positions: str = "from_mask"
) -> torch.Tensor | None:
    """The reference's own forward pass (``grpo_check.reference.logps_from_model``) on the step's batch."""
    from grpo_check.reference.logps import logps_from_model

    needed = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
    if not step.has(*needed):
        return None
    if isinstance(model, KnownLogps):
        if positions == "from_mask" and temperature == model.temperature:
            return model.logps
        model = model.model
    if model is None:  # log-probs known for one convention only, and no model to compute another
        return None
    with _eval_mode(model):
        return logps_from_model(
            model,
            step["prompt_ids"],
            step["prompt_mask"],
            step["completion_ids"],
            step["completion_mask"],
            temperature=temperature,
            positions=positions,
        )


def _advantage_findings(
    step: TraceStep, spec: GRPOSpec, policy: TolerancePolicy, ctx: StepContext, ref: StageReference
) -> list[Finding]:
    findings: list[Finding] = []
    adv_out = reference_advantages(step, spec)
    if adv_out is None:
        if step.has("advantages"):
            findings.append(
                not_captured("advantages.values", "advantages", ctx, ["rewards_per_func (or rewards)"])
            )
        return findings
    ref.tensors.update(
        rewards=adv_out.rewards,
        advantages=adv_out.advantages,
        group_mean=adv_out.group_mean,
        group_std=adv_out.group_std,
        scorable=adv_out.scorable,
    )
    comparisons: list[Comparison] = []
    if step.has("rewards") and step.has("rewards_per_func"):
        comparisons.append(
            Comparison(
                check_id="rewards.total",
                stage="rewards",
                name="rewards",
                what="total reward Σ_k w_k R_ik",
                trainer=step["rewards"],
                reference=adv_out.rewards,
                # unscorable rows (every reward function NaN) carry no total: TRL records 0, others NaN
                mask=adv_out.scorable.bool(),
                tolerance=policy.for_check("rewards.total", "rewards", _dtype(step, "rewards")),
            )
        )
    if step.has("advantages"):
        trainer_adv = step["advantages"]
        want = adv_out.advantages
        mask = None
        if trainer_adv.dim() == 2:  # (B, T): the same advantage on every token of the row
            want = want.unsqueeze(1).expand_as(as_f64(trainer_adv))
        else:
            mask = torch.ones_like(as_f64(trainer_adv), dtype=torch.bool)
        comparisons.append(
            Comparison(
                check_id="advantages.values",
                stage="advantages",
                name="advantages",
                what="advantages (from the trainer's rewards)",
                trainer=trainer_adv,
                reference=want,
                reference_same_precision=_same_precision(want, step, "advantages"),
                tolerance=policy.for_check("advantages.values", "advantages", _dtype(step, "advantages")),
                mask=mask,
            )
        )
    findings += compare_tensors(comparisons, ctx)
    unscorable = _unscorable_finding(step, adv_out, ctx, findings)
    if unscorable is not None:
        findings.append(unscorable)
    return findings


def _unscorable_finding(
    step: TraceStep, adv_out: Any, ctx: StepContext, findings: list[Finding]
) -> Finding | None:
    """Rows whose every reward function returned NaN must not carry a score into the group statistics."""
    rewards = step.get("rewards")
    unscorable = ~adv_out.scorable.bool()
    if rewards is None or not bool(unscorable.any()):
        return None
    scored = unscorable & torch.isfinite(as_f64(rewards).reshape(-1))
    advantages_failed = any(
        f.check_id == "advantages.values" and f.verdict in (Verdict.FAIL, Verdict.WARN) for f in findings
    )
    if not bool(scored.any()):
        verdict, explanation = (
            Verdict.PASS,
            f"{int(unscorable.sum())} unscorable row(s) carry no total reward",
        )
        row = None
    else:
        row = int(torch.nonzero(scored)[0])
        value = float(as_f64(rewards).reshape(-1)[row])
        if advantages_failed:
            verdict = Verdict.FAIL
            explanation = (
                f"{int(scored.sum())} row(s) where every reward function returned NaN carry a finite total reward "
                f"(row {row}: {value:.4g}) and the advantages differ from the reference: the unscorable completion "
                "was scored and counted in the group statistics"
            )
        else:
            verdict = Verdict.PASS
            explanation = (
                f"{int(scored.sum())} unscorable row(s) record a finite total reward (row {row}: {value:.4g}), but "
                "the advantages match the reference: the score was not used in the group statistics"
            )
    return Finding(
        check_id="rewards.unscorable",
        stage="rewards",
        verdict=verdict,
        figure=float(scored.sum()),
        tolerance=0.0,
        where=ctx.where(row=row),
        kind="compare",
        explanation=explanation,
    )


def _forward_comparison(
    step: TraceStep,
    name: str,
    check_id: str,
    reference: torch.Tensor,
    temperature: float,
    tolerance: Tolerance,
    note: str = "",
) -> Comparison:
    """The trainer's ``name`` against log-probs from the reference's own forward pass."""
    return Comparison(
        check_id=check_id,
        stage="logps",
        name=name,
        what=f"{name} (vs the reference's own forward pass, T={temperature:g}{note})",
        trainer=step[name],
        reference=reference,
        reference_same_precision=_same_precision(reference, step, name),
        tolerance=tolerance,
    )


def _logps_findings(
    step: TraceStep,
    spec: GRPOSpec,
    policy: TolerancePolicy,
    ctx: StepContext,
    ref: StageReference,
    model: Any,
    ref_model: Any,
) -> list[Finding]:
    # one slot per source in order: a finding already made (not captured) or a comparison to run, batched
    slots: list[Finding | tuple[str, str, Any, float, Any, torch.Tensor]] = []
    comparisons: list[Comparison] = []
    for name, check_id, source, temperature in (
        ("logps", "logps.model", model, spec.temperature),
        ("ref_logps", "logps.ref_model", ref_model, spec.temperature),
    ):
        if source is None:
            continue
        if not step.has(name):
            slots.append(not_captured(check_id, "logps", ctx, [name]))
            continue
        want = model_logps(source, step, temperature)
        if want is None:
            slots.append(
                not_captured(
                    check_id, "logps", ctx, ["prompt_ids", "prompt_mask", "completion_ids", "completion_mask"]
                )
            )
            continue
        tol = policy.for_check(check_id, name, _dtype(step, name))
        slots.append((name, check_id, source, temperature, tol, want))
        comparisons.append(_forward_comparison(step, name, check_id, want, temperature, tol))
    compared = iter(compare_tensors(comparisons, ctx))
    findings: list[Finding] = []
    for slot in slots:
        if isinstance(slot, Finding):
            findings.append(slot)
            continue
        name, check_id, source, temperature, tol, want = slot
        finding = next(compared)
        alt = None
        if finding.verdict is not Verdict.PASS:
            # position ids: a plain training forward uses 0..P+T−1 regardless of left padding
            alt = model_logps(source, step, temperature, positions="arange")
        if alt is not None:
            alt_finding = _forward_comparison(
                step, name, check_id, alt, temperature, tol, note=", arange position ids"
            ).run(ctx)
            if alt_finding.verdict is Verdict.PASS:
                # RoPE: the two position conventions agree up to rounding, and arange is what a plain training
                # forward uses; absolute positions: they differ, and the trainer ignores the left padding (#14)
                positions_differ = (
                    compare_tensor(
                        check_id=check_id,
                        stage="logps",
                        name=name,
                        trainer=alt,
                        reference=want,
                        tolerance=_POSITIONS_MATERIAL,
                        ctx=ctx,
                    ).verdict
                    is not Verdict.PASS
                )
                if positions_differ:
                    finding.details["matches_positions"] = "arange"
                else:
                    alt_finding.details["position_ids"] = "arange"
                    finding, want = alt_finding, alt
        ref.tensors[name] = want
        findings.append(finding)
    on_policy_old = step.meta.get("optimizer_steps_since_old_logps") == 0
    if model is not None and on_policy_old and step.has("old_logps") and "logps" in ref.tensors:
        # no optimizer step since the old log-probs were taken: they must equal the same forward pass
        want = ref.tensors["logps"]
        findings += compare_tensors(
            [
                Comparison(
                    check_id="logps.old_model",
                    stage="logps",
                    name="old_logps",
                    what="old_logps (no optimizer step since: vs the reference's own forward pass)",
                    trainer=step["old_logps"],
                    reference=want,
                    reference_same_precision=_same_precision(want, step, "old_logps"),
                    tolerance=policy.for_check("logps.old_model", "logps", _dtype(step, "old_logps")),
                )
            ],
            ctx,
        )
    if model is not None and ref.logits is None and spec.truncated_sampling and step.has("sampler_logps"):
        # the full logits are needed only for the kept sampling mass S_t: one more forward, so only then
        ref.logits = model_logits(model, step)
    if step.has("logps", "sampler_logps"):
        findings.append(_sampler_finding(step, spec, ctx, ref))
    return findings


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _sampler_finding(step: TraceStep, spec: GRPOSpec, ctx: StepContext, ref: StageReference) -> Finding:
    mask = step.get("completion_mask")
    if mask is None:
        mask = torch.ones_like(step["logps"], dtype=torch.bool)
    # the sampler generated with the old weights: compare it with the trainer's log-probs at those weights
    trainer_name = "old_logps" if step.has("old_logps") else "logps"
    metrics = distribution.sampler_metrics(step[trainer_name], step["sampler_logps"], mask)
    metrics["trainer_tensor"] = trainer_name
    if not metrics.get("tokens"):
        return Finding(
            check_id="logps.sampler",
            stage="logps",
            verdict=Verdict.INCONCLUSIVE,
            where=ctx.where(),
            kind="compare",
            explanation="trainer vs sampler log-probs: no finite masked token to compare",
        )
    residual_note = ""
    metrics_for_verdict = metrics
    if spec.truncated_sampling and ref.logits is not None:
        from grpo_check.reference.logps import sampling_kept_mass

        kept = sampling_kept_mass(
            ref.logits, step.get("completion_ids"), spec.temperature, spec.top_p, spec.top_k or 0, spec.min_p
        )
        ref.tensors["kept_mass"] = kept
        expected = distribution.expected_d_from_kept_mass(kept)
        metrics["expected_mean_d"] = float(expected[mask.bool()].mean())
        residual_note = (
            f"; the sampling parameters (top_p={spec.top_p:g}, top_k={spec.top_k}, min_p={spec.min_p}) predict a "
            f"mean d of {metrics['expected_mean_d']:.3g} for a renormalising sampler"
        )
    k3, frac = metrics["k3"], metrics["frac_ratio_outside"]
    if k3 > distribution.FAIL_K3 or frac > distribution.FAIL_FRAC_OUTSIDE:
        verdict = Verdict.FAIL
    elif k3 > distribution.WARN_K3 or metrics["max_abs_d"] > 0.5:
        verdict = Verdict.WARN
    else:
        verdict = Verdict.PASS
    del metrics_for_verdict
    where = ctx.where(row=metrics["worst_row"], token=metrics["worst_token"])
    return Finding(
        check_id="logps.sampler",
        stage="logps",
        verdict=verdict,
        figure=k3,
        tolerance=distribution.FAIL_K3,
        where=where,
        kind="compare",
        details={
            "metrics": {k: v for k, v in metrics.items() if k != "values"},
            "values": metrics["values"],
            "values_label": f"d = {trainer_name} − sampler_logps",
        },
        explanation=(
            f"trainer vs sampler log-probs (d = {trainer_name} − sampler_logps on {metrics['tokens']} tokens): "
            f"mean |d| {metrics['mean_abs_d']:.3g}, max |d| {metrics['max_abs_d']:.3g} (at {where.describe()}), "
            f"k1 {metrics['k1']:.3g}, k3 {k3:.3g}, Pearson {_fmt(metrics['pearson'])}, "
            f"{frac:.2%} of tokens with exp(d) outside [0.5, 2]{residual_note}"
        ),
    )


# stage-isolated comparisons the end-to-end pass repeats: quantity -> (isolated check id, its label)
_ISOLATED_LOSS_CHECKS = {
    "per_token_loss": ("loss.per_token", "per-token loss (from the trainer's own upstream)"),
    "loss": ("loss.value", "aggregated loss (from the trainer's own upstream)"),
    "logps_grad": (
        "grad.logps_grad",
        "∂loss/∂logps (float64 autograd of the reference loss at the trainer's logps)",
    ),
}


def _downstream_findings(
    step: TraceStep, spec: GRPOSpec, policy: TolerancePolicy, ctx: StepContext, ref: StageReference
) -> list[Finding]:
    findings: list[Finding] = []
    needed = ["logps", "advantages"] + (["ref_logps"] if spec.beta != 0.0 else [])
    wanted = [n for n in ("ratio", "kl", "per_token_loss", "loss", "logps_grad") if step.has(n)]
    if not wanted:
        return findings
    missing = [n for n in needed if not step.has(n)]
    down = None if missing else reference_downstream(step, spec)
    if down is None:
        for name, check_id, stage in (
            ("ratio", "ratio.values", "ratio"),
            ("kl", "kl.values", "kl"),
            ("per_token_loss", "loss.per_token", "loss"),
            ("loss", "loss.value", "loss"),
            ("logps_grad", "grad.logps_grad", "grad"),
        ):
            if step.has(name):
                findings.append(not_captured(check_id, stage, ctx, missing or ["entropies/sampler inputs"]))
        return findings
    ref.tensors.update({k: v for k, v in down.items() if k not in ("loss_mask",)})
    ref.notes["isolated_downstream"] = down
    loss_mask = down["loss_mask"].bool()
    checks = [
        (
            "ratio",
            "ratio.values",
            "ratio",
            "importance ratio ρ (from the trainer's logps and old_logps)",
            None,
        ),
        ("clipped_ratio", "ratio.clipped", "ratio", "clipped ratio clip(ρ)", None),
        ("sampler_is_ratio", "ratio.sampler_is", "ratio", "sampler importance-sampling weight", None),
        (
            "kl",
            "kl.values",
            "kl",
            f"per-token KL ({spec.kl_estimator}) from the trainer's logps and ref_logps",
            None,
        ),
        (
            "per_token_loss",
            "loss.per_token",
            "loss",
            _ISOLATED_LOSS_CHECKS["per_token_loss"][1],
            loss_mask,
        ),
        ("loss", "loss.value", "loss", _ISOLATED_LOSS_CHECKS["loss"][1], None),
        ("loss_normalizer", "loss.normalizer", "loss", "loss normaliser", None),
        (
            "logps_grad",
            "grad.logps_grad",
            "grad",
            _ISOLATED_LOSS_CHECKS["logps_grad"][1],
            torch.ones_like(loss_mask),
        ),
    ]
    comparisons: list[Comparison] = []
    for name, check_id, stage, what, mask in checks:
        if not step.has(name):
            continue
        if name not in down:
            continue
        want = down[name]
        got = step[name]
        if name in ("is_low_clipped", "is_high_clipped"):
            continue
        if name == "logps_grad" and got is None:
            continue
        if want.dim() == 2 and as_f64(got).dim() == 2 and want.shape[1] == 1 and got.shape[1] != 1:
            want = want.expand_as(as_f64(got))
        comparisons.append(
            Comparison(
                check_id=check_id,
                stage=stage,
                name=name,
                what=what,
                trainer=got,
                reference=want,
                reference_same_precision=_same_precision(want, step, name),
                tolerance=policy.for_check(check_id, name, _dtype(step, name)),
                mask=mask,
            )
        )
    findings += compare_tensors(comparisons, ctx)
    for name in ("is_low_clipped", "is_high_clipped"):
        if step.has(name) and name in down:
            findings.append(_mask_finding(step, name, down[name], loss_mask, ctx))
    return findings


def _mask_finding(
    step: TraceStep, name: str, want: torch.Tensor, loss_mask: torch.Tensor, ctx: StepContext
) -> Finding:
    got = step[name].bool()
    want = want.bool().expand_as(got) if want.shape != got.shape else want.bool()
    differ = (got ^ want) & loss_mask.expand_as(got)
    count = int(differ.sum())
    check_id = f"ratio.{name}"
    if count == 0:
        return Finding(
            check_id=check_id,
            stage="ratio",
            verdict=Verdict.PASS,
            figure=0.0,
            tolerance=0.0,
            where=ctx.where(),
            kind="compare",
            explanation=f"{name} matches the reference on every loss token",
        )
    flat = int(torch.nonzero(differ.reshape(-1))[0])
    row, token = divmod(flat, got.shape[1])
    return Finding(
        check_id=check_id,
        stage="ratio",
        verdict=Verdict.FAIL,
        figure=float(count),
        tolerance=0.0,
        where=ctx.where(row=row, token=token),
        kind="compare",
        explanation=(
            f"{name} differs from the reference on {count} loss token(s); first at "
            f"{ctx.where(row=row, token=token).describe()}: trainer {bool(got[row, token])}, reference "
            f"{bool(want[row, token])}"
        ),
    )


def _e2e_findings(
    step: TraceStep,
    spec: GRPOSpec,
    policy: TolerancePolicy,
    ctx: StepContext,
    ref: StageReference,
    upstream: list[Finding],
) -> list[Finding]:
    """Reference from the rewards onward with its own upstream; reported as ``e2e.*``."""
    findings: list[Finding] = []
    ref_adv = ref.tensors.get("advantages")
    if ref_adv is None:
        return findings
    overrides: dict[str, torch.Tensor | None] = {"advantages": ref_adv}
    if "logps" in ref.tensors and step.has("logps"):
        overrides["logps"] = ref.tensors["logps"]
        if not step.has("old_logps"):
            overrides["old_logps"] = ref.tensors["logps"]
    if "ref_logps" in ref.tensors:
        overrides["ref_logps"] = ref.tensors["ref_logps"]
    if not step.has("logps") and "logps" not in overrides:
        return findings
    # Where every upstream tensor the end-to-end pass would replace already matched the reference within
    # tolerance (stage-isolated), the end-to-end reference equals the isolated one up to that tolerance:
    # reuse it instead of a second float64 forward + backward (the e2e findings then repeat the isolated ones).
    upstream_check = {
        "advantages": "advantages.values",
        "logps": "logps.model",
        "ref_logps": "logps.ref_model",
    }
    verdicts = {f.check_id: f.verdict for f in upstream}
    isolated = ref.notes.get("isolated_downstream")
    reuse = isolated is not None and all(
        verdicts.get(upstream_check.get(name, "")) is Verdict.PASS
        for name in overrides
        if name != "old_logps"
    )
    if reuse:
        down = isolated
    else:
        try:
            down = reference_downstream(step, spec, **overrides)
        except InputError:
            return findings
    if down is None:
        return findings
    ref.e2e.update(advantages=ref_adv, **{k: v for k, v in down.items() if k != "loss_mask"})
    comparisons: list[Comparison] = []
    planned: list[Comparison | Finding] = []
    isolated_by_id = {f.check_id: f for f in upstream}
    for name, check_id, what, mask in (
        ("per_token_loss", "e2e.per_token_loss", "end-to-end per-token loss", down["loss_mask"].bool()),
        ("loss", "e2e.loss", "end-to-end loss (reference from the rewards onward)", None),
        (
            "logps_grad",
            "e2e.logps_grad",
            "end-to-end ∂loss/∂logps",
            torch.ones_like(down["loss_mask"]).bool(),
        ),
    ):
        if not step.has(name):
            continue
        comparison = Comparison(
            check_id=check_id,
            stage="loss" if name != "logps_grad" else "grad",
            name=name,
            what=what,
            trainer=step[name],
            reference=down[name],
            reference_same_precision=_same_precision(down[name], step, name),
            tolerance=policy.for_check(check_id, name, _dtype(step, name)),
            mask=mask,
        )
        repeated = _repeat_isolated(comparison, isolated_by_id) if reuse else None
        planned.append(comparison if repeated is None else repeated)
        if repeated is None:
            comparisons.append(comparison)
    computed = iter(compare_tensors(comparisons, ctx))
    for item in planned:
        finding = next(computed) if isinstance(item, Comparison) else item
        finding.details["end_to_end"] = True
        finding.details["reused_isolated_reference"] = reuse
        findings.append(finding)
    return findings


def _repeat_isolated(comparison: Comparison, isolated_by_id: Mapping[str, Finding]) -> Finding | None:
    """With the isolated reference reused, an end-to-end comparison is the isolated one again (same trainer
    tensor, same reference, same mask): a passing isolated finding relabelled, instead of a second pass
    over the tensors. ``None`` (compare afresh) unless it passed under the same tolerance."""
    isolated_id, isolated_label = _ISOLATED_LOSS_CHECKS[comparison.name]
    isolated = isolated_by_id.get(isolated_id)
    prefix = f"{isolated_label} matches the reference:"
    if (
        isolated is None
        or isolated.verdict is not Verdict.PASS
        or isolated.details.get("tolerance") != comparison.tolerance.to_dict()
        or not isolated.explanation.startswith(prefix)
    ):
        return None
    return dataclasses.replace(
        isolated,
        check_id=comparison.check_id,
        stage=comparison.stage,
        explanation=comparison.what + isolated.explanation[len(isolated_label) :],
        details=dict(isolated.details),
    )


def compare_stages(
    step: TraceStep,
    spec: GRPOSpec,
    policy: TolerancePolicy,
    *,
    model: Any = None,
    ref_model: Any = None,
    end_to_end: bool = True,
) -> tuple[list[Finding], StageReference]:
    """Every stage comparison for one step; returns the findings and the reference tensors used."""
    ctx = step_context(step, spec)
    ref = StageReference()
    findings: list[Finding] = []
    findings += _advantage_findings(step, spec, policy, ctx, ref)
    findings += _logps_findings(step, spec, policy, ctx, ref, model, ref_model)
    findings += _downstream_findings(step, spec, policy, ctx, ref)
    if end_to_end:
        findings += _e2e_findings(step, spec, policy, ctx, ref, findings)
    for finding in findings:
        if finding.figure is not None and isinstance(finding.figure, float) and math.isnan(finding.figure):
            finding.figure = None
    return findings, ref

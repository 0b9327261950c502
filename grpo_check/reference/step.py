"""One whole reference step from trace-named inputs, stage by stage (spec §9).

Stage isolation: with ``isolate=True`` (default) every stage is fed the *given* (trainer's) upstream tensors
where they exist — e.g. the loss stage uses the trainer's ``advantages``, ``logps`` and ``old_logps`` — so a
bug shows up in the one stage that has it. The reference's own recomputation of each upstream tensor is
returned too (``step["advantages"]`` is always the reference's advantages from the rewards), and
``step.sources`` says, per input a stage consumed, whether it was ``"given"`` or ``"reference"``.
With ``isolate=False`` the reference runs end to end from the earliest inputs (rewards → advantages → loss).

Example::

    >>> import torch
    >>> from grpo_check.config import GRPOSpec
    >>> from grpo_check.reference import reference_step
    >>> inputs = {"completion_mask": torch.ones(2, 2), "group_index": torch.tensor([0, 0]),
    ...           "rewards_per_func": torch.tensor([[1.0], [0.0]]), "logps": torch.full((2, 2), -1.0)}
    >>> step = reference_step(inputs, GRPOSpec(num_generations=2, loss_type="dapo"))
    >>> [round(v, 4) for v in step["advantages"].tolist()]
    [0.707, -0.707]
    >>> step["logps_grad"]
    tensor([[-0.1768, -0.1768],
            [ 0.1768,  0.1768]], dtype=torch.float64)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import InputError
from grpo_check.reference._util import as_f64
from grpo_check.reference.advantages import compute_advantages, total_rewards
from grpo_check.reference.gradients import autograd_logps_grad, closed_form_logps_grad
from grpo_check.reference.kl import per_token_kl
from grpo_check.reference.loss import aggregate_loss, per_token_loss
from grpo_check.reference.loss import loss_mask as compute_loss_mask
from grpo_check.reference.ratio import importance_log_ratio
from grpo_check.reference.ratio import sampler_is_ratio as compute_sampler_is_ratio

STAGES = ("advantages", "ratio", "kl", "loss", "grad")


@dataclasses.dataclass
class ReferenceStep:
    """The reference's tensors for one step, by canonical name (``grpo_check.trace.model.TENSOR_STAGE``).

    ``tensors``: canonical tensors the reference computed (float64). ``extras``: non-canonical intermediates
    (``group_mean``, ``group_std``, ``scorable``, ``loss_mask``, ``entropy_mask``, ``off_policy_mask``,
    ``vespo_phi``, ``advantages_used``, ``policy_loss``, ``entropy_loss``, ``logps_grad_closed_form``).
    ``sources``: for each upstream input a stage consumed, ``"given"`` or ``"reference"``.
    ``skipped``: stage → why it was not computed (missing inputs).
    """

    tensors: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    extras: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    sources: dict[str, str] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self.tensors:
            return self.tensors[name]
        return self.extras[name]

    def __contains__(self, name: object) -> bool:
        return name in self.tensors or name in self.extras

    def get(self, name: str, default: Any = None) -> Any:
        return self.tensors.get(name, self.extras.get(name, default))

    def keys(self) -> list[str]:
        return list(self.tensors)


def _meta_value(meta: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if meta.get(name) is not None:
            return meta[name]
    return None


def reference_step(
    inputs: Mapping[str, torch.Tensor],
    spec: GRPOSpec,
    meta: Mapping[str, Any] | None = None,
    *,
    isolate: bool = True,
    stages: Iterable[str] | None = None,
) -> ReferenceStep:
    """Compute every stage the inputs allow; see the module docstring for ``isolate``.

    ``inputs`` uses canonical names (``completion_mask``, ``group_index``, ``rewards_per_func``,
    ``advantages``, ``logps``, ``old_logps``, ``ref_logps``, ``sampler_logps``, ``entropies``, ``tool_mask``,
    ``truncated``, ``sampler_is_ratio``, ``reward_weights``). ``meta`` may carry ``num_items_in_batch``,
    ``gradient_accumulation_steps`` (or ``current_gradient_accumulation_steps``), ``num_processes``,
    ``steps_per_generation``, ``max_completion_length``. ``stages`` limits the work to a subset of
    ``STAGES``. Equations: (S1) in ``reference/grpo-algorithm.md``.
    """
    meta = dict(meta or {})
    wanted = set(STAGES if stages is None else stages)
    unknown = wanted - set(STAGES)
    if unknown:
        raise InputError(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}", field="stages")
    out = ReferenceStep()
    given = {name: value for name, value in inputs.items() if value is not None}

    # ---- advantages (A*) -------------------------------------------------------------------------------
    if "advantages" in wanted:
        rewards_source = None
        if isolate and "rewards" in given and spec.multi_objective_aggregation == "sum_then_normalize":
            rewards_source, name = given["rewards"], "rewards"
        elif "rewards_per_func" in given:
            rewards_source, name = given["rewards_per_func"], "rewards_per_func"
        elif "rewards" in given:
            rewards_source, name = given["rewards"], "rewards"
        if rewards_source is None:
            out.skipped["advantages"] = "no rewards_per_func or rewards given"
        else:
            weights = given.get("reward_weights") if name == "rewards_per_func" else None
            adv = compute_advantages(rewards_source, given.get("group_index"), spec, reward_weights=weights)
            if "rewards_per_func" in given:  # (R1) the reference's own total reward
                w = given.get("reward_weights", spec.reward_weights)
                out.tensors["rewards"] = total_rewards(
                    given["rewards_per_func"], None if w is None else torch.as_tensor(w)
                )
            else:
                out.tensors["rewards"] = adv.rewards
            out.tensors["advantages"] = adv.advantages
            out.extras.update(group_mean=adv.group_mean, group_std=adv.group_std, scorable=adv.scorable)
            out.sources["advantages.input"] = f"given {name}"

    # ---- which upstream tensors the later stages use ------------------------------------------------
    if "logps" not in given or "completion_mask" not in given:
        for stage in ("ratio", "kl", "loss", "grad"):
            if stage in wanted:
                out.skipped[stage] = "needs logps and completion_mask"
        return out
    logps = as_f64(given["logps"]).detach()
    old_logps = as_f64(given["old_logps"]) if "old_logps" in given else logps
    out.sources["old_logps"] = "given" if "old_logps" in given else "reference (= logps, on-policy)"
    mask = compute_loss_mask(
        given["completion_mask"],
        given.get("tool_mask"),
        given.get("truncated"),
        spec.mask_truncated_completions,
    )  # (M1)
    out.extras["loss_mask"] = mask
    if isolate and "advantages" in given:
        advantages, out.sources["advantages"] = as_f64(given["advantages"]), "given"
    elif "advantages" in out.tensors:
        advantages, out.sources["advantages"] = out.tensors["advantages"], "reference"
    elif "advantages" in given:
        advantages, out.sources["advantages"] = as_f64(given["advantages"]), "given"
    else:
        advantages = None
    sampler_logps = as_f64(given["sampler_logps"]) if "sampler_logps" in given else None

    # ---- ratio (P*) ------------------------------------------------------------------------------------
    own_is_ratio = None
    if spec.sampler_is_correction and sampler_logps is not None:
        own_is_ratio = compute_sampler_is_ratio(
            old_logps,
            sampler_logps,
            mask,
            spec.sampler_is_mode,
            spec.sampler_is_clip_min,
            spec.sampler_is_clip_max,
        )  # (P7)
    if isolate and "sampler_is_ratio" in given:
        is_ratio_used, out.sources["sampler_is_ratio"] = as_f64(given["sampler_is_ratio"]), "given"
    else:
        is_ratio_used = own_is_ratio
        if own_is_ratio is not None:
            out.sources["sampler_is_ratio"] = "reference"
    if spec.sampler_is_correction and is_ratio_used is None and {"loss", "grad"} & wanted:
        out.skipped["loss"] = "sampler_is_correction needs sampler_logps or sampler_is_ratio"
        wanted -= {"loss", "grad"}
    if "ratio" in wanted:
        log_ratio = importance_log_ratio(logps, old_logps, mask, spec.importance_sampling_level)
        out.tensors["ratio"] = log_ratio.exp()
        if own_is_ratio is not None:
            out.tensors["sampler_is_ratio"] = own_is_ratio

    # ---- kl (K*) -----------------------------------------------------------------------------------------
    if "kl" in wanted:
        if "ref_logps" in given:
            ratio_for_kl = None
            if spec.use_bias_correction_kl:
                ratio_for_kl = importance_log_ratio(
                    logps, old_logps, mask, spec.importance_sampling_level
                ).exp()
            out.tensors["kl"] = per_token_kl(logps, given["ref_logps"], spec.kl_estimator, ratio_for_kl)
        else:
            out.skipped["kl"] = "no ref_logps given"

    # ---- loss (O*, N*) and grad (G*) -------------------------------------------------------------------
    if not ({"loss", "grad"} & wanted):
        return out
    if advantages is None:
        out.skipped["loss"] = "no advantages given and none computable (no rewards)"
        return out
    if spec.beta != 0.0 and "ref_logps" not in given:
        out.skipped["loss"] = f"beta={spec.beta} needs ref_logps"
        return out
    needs_entropy = spec.top_entropy_quantile < 1.0 or spec.entropy_coef != 0.0
    if needs_entropy and "entropies" not in given:
        out.skipped["loss"] = "top_entropy_quantile < 1 or entropy_coef != 0 needs entropies"
        return out
    out.extras["advantages_used"] = advantages
    aggregate_kwargs = dict(
        gradient_accumulation_steps=_meta_value(
            meta, "current_gradient_accumulation_steps", "gradient_accumulation_steps"
        ),
        num_processes=_meta_value(meta, "num_processes"),
        steps_per_generation=_meta_value(meta, "steps_per_generation"),
        max_completion_length=_meta_value(meta, "max_completion_length"),
    )
    num_items = _meta_value(meta, "num_items_in_batch")
    ref_logps = given.get("ref_logps")
    entropies = given.get("entropies")

    def total_loss(current_logps: torch.Tensor) -> tuple[Any, Any]:
        token_loss = per_token_loss(
            current_logps, old_logps if "old_logps" in given else None, advantages, mask, spec,
            ref_logps=ref_logps, entropies=entropies, sampler_logps=sampler_logps, sampler_is_ratio=is_ratio_used,
        )  # fmt: skip
        reduced = aggregate_loss(
            token_loss.per_token_loss, mask, spec, num_items,
            entropies=entropies, entropy_mask=token_loss.entropy_mask, **aggregate_kwargs,
        )  # fmt: skip
        return token_loss, reduced

    token_loss, reduced = total_loss(logps)  # (S1)
    out.tensors.update(
        per_token_loss=token_loss.per_token_loss, loss=reduced.loss, loss_normalizer=reduced.loss_normalizer
    )
    if "ratio" in wanted and token_loss.clipped_ratio is not None:
        out.tensors["clipped_ratio"] = token_loss.clipped_ratio
    if "ratio" in wanted and token_loss.is_low_clipped is not None:
        out.tensors["is_low_clipped"] = token_loss.is_low_clipped
        out.tensors["is_high_clipped"] = token_loss.is_high_clipped
    out.extras["policy_loss"] = reduced.policy_loss
    for name in ("entropy_mask", "off_policy_mask", "vespo_phi"):
        value = getattr(token_loss, name)
        if value is not None:
            out.extras[name] = value
    if reduced.entropy_loss is not None:
        out.extras["entropy_loss"] = reduced.entropy_loss
    if "grad" in wanted:
        out.tensors["logps_grad"] = autograd_logps_grad(logps, lambda leaf: total_loss(leaf)[1].loss)  # (G0)
        out.extras["logps_grad_closed_form"] = closed_form_logps_grad(
            logps, old_logps if "old_logps" in given else None, advantages, mask, spec,
            ref_logps=ref_logps, entropies=entropies, sampler_logps=sampler_logps, sampler_is_ratio=is_ratio_used,
            num_items_in_batch=num_items, **aggregate_kwargs,
        )  # fmt: skip
    return out

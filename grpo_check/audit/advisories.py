"""Advisories: numerical GRPO bugs that shipped in a TRL release and were fixed in a later one.

What pip-audit does for vulnerabilities, for GRPO correctness: given a TRL release and a configuration, the
advisories that release and configuration trigger, each with the pull request that fixed it and the first
release that has the fix. Every entry was confirmed by reading ``trl/trainer/grpo_trainer.py`` /
``grpo_config.py`` in the released wheels (``pip download trl==X --no-deps``): the last affected release
still has the faulty code, ``fixed_in`` has the fix. A release is affected when
``introduced <= release < fixed_in`` (a fix backported to a patch release, e.g. 0.22.2, is honoured).

The entries are data, shared by ``grpo-check audit`` (rules ``GA6xx``) and the zoo's history cases.

Example::

    >>> from grpo_check.audit.advisories import triggered
    >>> [(a.id, a.fixed_in) for a, _ in triggered("0.15.2", {"temperature": 0.9})]
    [('GA602', '0.16.0')]
    >>> [a.id for a, _ in triggered("0.16.0", {"temperature": 0.9})]  # the temperature bug is fixed in 0.16.0
    ['GA610']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from grpo_check.audit.registry import _as_float
from grpo_check.audit.versions import parse_version

Trigger = Callable[[Mapping[str, Any]], "str | None"]

DAPO_FAMILY: tuple[str, ...] = ("dapo", "cispo", "vespo")


@dataclasses.dataclass(frozen=True)
class Advisory:
    """One shipped bug.

    Attributes:
        id: audit rule id (``GA6xx``).
        title: one line.
        effect: what the bug does to the numbers, and by how much.
        introduced: first affected TRL release.
        fixed_in: first release with the fix (affected: ``introduced <= release < fixed_in``).
        pr: the fixing pull request, ``huggingface/trl#NNNN``.
        condition: the configuration that triggers it, in words.
        trigger: effective config values (TRL field names, plus ``num_processes``) -> why it triggers, or None.
        stage: where grpo-check's side-by-side comparison localises it (``logps``, ``advantages``, ``loss`` …).
        workaround: what to do on an affected release when the trigger cannot simply be avoided.
        data_dependent: it also needs something only the data shows (prompt lengths, rewards returning None).
        catalog_id: the bug-catalog entry it belongs to.
    """

    id: str
    title: str
    effect: str
    introduced: str
    fixed_in: str
    pr: str
    condition: str
    trigger: Trigger
    stage: str
    data_dependent: str = ""
    catalog_id: str | None = None
    severity: str = "error"
    workaround: str = ""

    @property
    def fix(self) -> str:
        """What to do: upgrade, or the workaround on an affected release."""
        instead = self.workaround or f"avoid {self.condition}"
        return f"Upgrade to TRL ≥ {self.fixed_in}; on an affected release, {instead}."

    @property
    def url(self) -> str:
        repo, number = self.pr.split("#")
        return f"https://github.com/{repo}/pull/{number}"

    @property
    def last_affected(self) -> str:
        """The newest release tabulated in :data:`RELEASES` that is affected."""
        return [r for r in RELEASES if self.affects(r)][-1]

    def affects(self, release: str) -> bool:
        """Whether ``release`` has the bug (``introduced <= release < fixed_in``)."""
        version = parse_version(release)
        return parse_version(self.introduced) <= version < parse_version(self.fixed_in)

    def check(self, release: str, values: Mapping[str, Any]) -> str | None:
        """Why this release and configuration trigger the bug, or None."""
        if not self.affects(release):
            return None
        return self.trigger(values)


# Every TRL release with GRPO, 0.14.0 … 1.16.0, patch releases included.
RELEASES: tuple[str, ...] = (
    *("0.14.0", "0.15.0", "0.15.1", "0.15.2", "0.16.0", "0.16.1", "0.17.0", "0.18.0", "0.18.1", "0.18.2"),
    *("0.19.0", "0.19.1", "0.20.0", "0.21.0", "0.22.0", "0.22.1", "0.22.2", "0.23.0", "0.23.1", "0.24.0"),
    *("0.25.0", "0.25.1", "0.26.0", "0.26.1", "0.26.2", "0.27.0", "0.27.1", "0.27.2", "0.28.0", "0.29.0"),
    *("0.29.1", "1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0", "1.5.1", "1.6.0", "1.7.0", "1.7.1"),
    *("1.8.0", "1.9.0", "1.9.1", "1.9.2", "1.10.0", "1.11.0", "1.12.0", "1.13.0", "1.14.0", "1.14.1"),
    *("1.14.2", "1.15.0", "1.16.0"),
)


def _number(values: Mapping[str, Any], name: str) -> float | None:
    return _as_float(values.get(name))


def _count(values: Mapping[str, Any], name: str, default: int = 1) -> int:
    number = _number(values, name)
    return int(number) if number is not None and number.is_integer() and number >= 1 else default


def _truthy(values: Mapping[str, Any], name: str) -> bool:
    value = values.get(name)
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


# --------------------------------------------------------------------------- triggers (pure)


def _several_prompts_per_device(values: Mapping[str, Any]) -> str | None:
    prompts = _count(values, "per_device_train_batch_size")
    if prompts < 2:
        return None
    return f"per_device_train_batch_size = {prompts} prompts per device: prompts of different lengths are left-padded"


def _temperature_not_one(values: Mapping[str, Any]) -> str | None:
    temperature = _number(values, "temperature")
    if temperature is None or temperature == 1.0:
        return None
    return f"temperature = {temperature} (sampling divides the logits by it; the trainer's log-probs do not)"


def _vllm_with_prompt_truncation(values: Mapping[str, Any]) -> str | None:
    if not _truthy(values, "use_vllm") or values.get("max_prompt_length") is None:
        return None
    return f"use_vllm = true with max_prompt_length = {values.get('max_prompt_length')}"


def _entropy_masking_on_several_processes(values: Mapping[str, Any]) -> str | None:
    quantile = _number(values, "top_entropy_quantile")
    processes = _count(values, "num_processes")
    if quantile is None or quantile >= 1.0 or processes < 2:
        return None
    return f"top_entropy_quantile = {quantile} on {processes} processes"


def _any_scale_rewards(values: Mapping[str, Any]) -> str | None:
    scale = values.get("scale_rewards")
    scale = {True: "group", False: "none"}.get(scale, scale) if isinstance(scale, bool) else scale
    effect = {
        "group": "no scaling at all (the group std is never divided by)",
        "batch": "scaling by each group's std",
        "none": "scaling by each group's std",
    }.get(str(scale).lower() if scale is not None else "group")
    if effect is None:
        return None
    return f"scale_rewards = {scale!r} gives {effect}"


def _dapo_family_masking_truncated(values: Mapping[str, Any]) -> str | None:
    loss = str(values.get("loss_type") or "")
    if loss not in DAPO_FAMILY or not _truthy(values, "mask_truncated_completions"):
        return None
    return f"loss_type = {loss!r} with mask_truncated_completions = true"


def _dapo_family_generation_window(values: Mapping[str, Any]) -> str | None:
    loss = str(values.get("loss_type") or "")
    accumulation = _count(values, "gradient_accumulation_steps")
    steps = _count(values, "steps_per_generation", default=accumulation)
    if loss not in DAPO_FAMILY or steps == accumulation:
        return None
    return (
        f"loss_type = {loss!r} with steps_per_generation = {steps} ≠ gradient_accumulation_steps = "
        f"{accumulation}: the loss is scaled by {accumulation}/{steps} = {accumulation / steps:g}"
    )


def _generation_straddles_an_update(values: Mapping[str, Any]) -> str | None:
    iterations = _count(values, "num_iterations")
    accumulation = _count(values, "gradient_accumulation_steps")
    steps = _count(values, "steps_per_generation", default=accumulation)
    if iterations != 1 or steps >= accumulation or accumulation % steps == 0:
        return None
    return (
        f"steps_per_generation = {steps} < gradient_accumulation_steps = {accumulation} and does not divide it: "
        "part of each generation batch is trained on after an optimizer step"
    )


def _several_iterations(values: Mapping[str, Any]) -> str | None:
    iterations = _count(values, "num_iterations")
    if iterations < 2:
        return None
    return f"num_iterations = {iterations} (the ratio moves away from 1, so clipping can act)"


def _always(values: Mapping[str, Any]) -> str | None:
    return "every configuration"


def _luspo_token_level_loss(values: Mapping[str, Any]) -> str | None:
    if str(values.get("loss_type") or "") != "luspo":
        return None
    beta = _number(values, "beta") or 0.0
    level = str(values.get("importance_sampling_level") or "token")  # TRL's default: token
    quantile = _number(values, "top_entropy_quantile")
    why = [
        *([f"beta = {beta:g}"] if beta != 0.0 else []),
        *(["importance_sampling_level = 'token'"] if level == "token" else []),
        *([f"top_entropy_quantile = {quantile:g}"] if quantile is not None and quantile < 1.0 else []),
    ]
    if not why:
        return None
    return f"loss_type = 'luspo' with {', '.join(why)}: the per-token loss is (B, T), not (B, 1)"


def _entropy_bonus_dapo_family_several_micro_batches(values: Mapping[str, Any]) -> str | None:
    loss = str(values.get("loss_type") or "")
    coefficient = _number(values, "entropy_coef") or 0.0
    adaptive = _truthy(values, "use_adaptive_entropy")
    accumulation = _count(values, "gradient_accumulation_steps")
    steps = _count(values, "steps_per_generation", default=accumulation)
    if loss not in DAPO_FAMILY or (coefficient == 0.0 and not adaptive) or max(accumulation, steps) < 2:
        return None
    bonus = "use_adaptive_entropy = true" if adaptive else f"entropy_coef = {coefficient:g}"
    return (
        f"{bonus} with loss_type = {loss!r}, gradient_accumulation_steps = {accumulation} and "
        f"steps_per_generation = {steps}"
    )


# --------------------------------------------------------------------------- the advisories

ADVISORIES: dict[str, Advisory] = {
    a.id: a
    for a in (
        Advisory(
            id="GA601",
            title="log-probs computed without the attention mask (left-padded prompts attended)",
            effect=(
                "The policy and reference forward passes get input_ids only, so the pad tokens left of a shorter "
                "prompt are attended to: every log-prob of that prompt's completions is computed in a different "
                "context than the one sampled, and the ratio, KL and gradient inherit the error."
            ),
            introduced="0.14.0",
            fixed_in="0.15.0",
            pr="huggingface/trl#2708",
            condition="more than one prompt per device (per_device_train_batch_size ≥ 2 in TRL 0.14)",
            trigger=_several_prompts_per_device,
            stage="logps",
            data_dependent="prompts in one batch differ in token length",
            catalog_id="14",
        ),
        Advisory(
            id="GA602",
            title="trainer log-probs not divided by the sampling temperature",
            effect=(
                "Completions are sampled from softmax(logits / T) but scored with softmax(logits): the "
                "importance ratio, the KL and the gradient are those of another policy whenever T ≠ 1 (the "
                "default temperature of these releases is 0.9)."
            ),
            introduced="0.14.0",
            fixed_in="0.16.0",
            pr="huggingface/trl#3029",
            condition="temperature ≠ 1 (default 0.9 in these releases)",
            trigger=_temperature_not_one,
            stage="logps",
            catalog_id="1",
        ),
        Advisory(
            id="GA603",
            title="vLLM generates from the untruncated prompt, the trainer scores the truncated one",
            effect=(
                "max_prompt_length truncates prompt_ids for the trainer, but the prompt text sent to vLLM is the "
                "full one: completions of long prompts are conditioned on text the trainer never sees, so their "
                "log-probs, ratios and gradients are computed off-policy."
            ),
            introduced="0.14.0",
            fixed_in="0.19.0",
            pr="huggingface/trl#3601",
            condition="use_vllm = true and max_prompt_length set (default 512)",
            trigger=_vllm_with_prompt_truncation,
            stage="logps",
            data_dependent="prompts longer than max_prompt_length tokens",
            catalog_id="1",
            severity="warning",
        ),
        Advisory(
            id="GA604",
            title="vLLM prompts lose their special tokens when max_prompt_length is set",
            effect=(
                "The truncated prompts are decoded with skip_special_tokens=True before being sent to vLLM, so "
                "chat-template tokens (<|im_start|> …) and BOS are dropped from every prompt vLLM sees while the "
                "trainer scores the prompt with them: sampler and trainer condition on different contexts."
            ),
            introduced="0.19.0",
            fixed_in="0.19.1",
            pr="huggingface/trl#3651",
            condition="use_vllm = true and max_prompt_length set (default 512)",
            trigger=_vllm_with_prompt_truncation,
            stage="logps",
            data_dependent="a tokenizer or chat template with special tokens in the prompt",
            catalog_id="1",
        ),
        Advisory(
            id="GA605",
            title="entropy-mask threshold computed per process, not over the whole batch",
            effect=(
                "top_entropy_quantile keeps the tokens above an entropy quantile; the quantile was taken over "
                "each process's tokens only, so each GPU trains on a different fraction of the global batch's "
                "high-entropy tokens and the result depends on the number of processes."
            ),
            introduced="0.20.0",
            fixed_in="0.21.0",
            pr="huggingface/trl#3833",
            condition="top_entropy_quantile < 1 on more than one process",
            trigger=_entropy_masking_on_several_processes,
            stage="loss",
        ),
        Advisory(
            id="GA606",
            title="scale_rewards values swapped: 'group' does not scale, 'none' does",
            effect=(
                "The branches of the advantage normalisation are inverted: scale_rewards='group' (the default, and "
                "True) never divides by the std, while 'none' and 'batch' divide by each group's std. Every "
                "advantage is off by the factor 1/(σ_group + 1e-4) or its inverse."
            ),
            introduced="0.22.0",
            fixed_in="0.22.2",
            pr="huggingface/trl#3992",
            condition="every value of scale_rewards",
            trigger=_any_scale_rewards,
            stage="advantages",
            catalog_id="10",
            workaround="write scale_rewards='none' to get group scaling (and 'group' to get none)",
        ),
        Advisory(
            id="GA607",
            title="DAPO-family loss normalised by tokens of masked truncated completions",
            effect=(
                "num_items_in_batch counts the tokens of every completion, including the truncated ones that "
                "mask_truncated_completions removes from the loss: the token-mean is divided by too many tokens, "
                "so the loss and gradient shrink by the fraction of truncated tokens."
            ),
            introduced="0.22.0",
            fixed_in="1.9.0",
            pr="huggingface/trl#6439",
            condition="loss_type dapo (default since 0.22), cispo or vespo, with mask_truncated_completions = true",
            trigger=_dapo_family_masking_truncated,
            stage="loss",
            data_dependent="some completions reach max_completion_length",
            catalog_id="4",
        ),
        Advisory(
            id="GA608",
            title="DAPO-family loss normalised over the generation batch, not the accumulation window",
            effect=(
                "num_items_in_batch spans the generation batch (steps_per_generation micro-steps) while one "
                "optimizer step accumulates gradient_accumulation_steps micro-steps: the accumulated loss is "
                "scaled by gradient_accumulation_steps / steps_per_generation (0.5× at spg=4, GAS=2)."
            ),
            introduced="0.22.0",
            fixed_in="1.9.1",
            pr="huggingface/trl#6024",
            condition="loss_type dapo, cispo or vespo with steps_per_generation ≠ gradient_accumulation_steps",
            trigger=_dapo_family_generation_window,
            stage="loss",
            catalog_id="4",
        ),
        Advisory(
            id="GA609",
            title="old log-probs skipped although the generation batch straddles an optimizer step",
            effect=(
                "With num_iterations = 1 and steps_per_generation ≤ gradient_accumulation_steps the old "
                "log-probs are taken as the current ones (ratio ≡ 1). When steps_per_generation does not divide "
                "gradient_accumulation_steps, part of a generation batch is trained on after an update: those "
                "samples are off-policy, yet the ratio is 1 and clipping never acts."
            ),
            introduced="0.18.0",
            fixed_in="0.20.0",
            pr="huggingface/trl#3725",
            condition="num_iterations = 1, steps_per_generation < gradient_accumulation_steps and not a divisor",
            trigger=_generation_straddles_an_update,
            stage="ratio",
            catalog_id="17",
        ),
        Advisory(
            id="GA610",
            title="unscorable completions count as reward 0 in the group baseline",
            effect=(
                "A completion for which every reward function returns None gets reward nansum(NaN…) = 0: it "
                "enters its group's mean and std as a real 0 and receives a non-zero advantage of its own."
            ),
            introduced="0.16.0",
            fixed_in="1.6.0",
            pr="huggingface/trl#5902",
            condition="any configuration (the trigger is in the reward functions)",
            trigger=_always,
            stage="advantages",
            data_dependent="a reward function returns None for some completions (e.g. multi-task data)",
            catalog_id="8",
            workaround="make the reward functions return a number for every completion",
            severity="warning",
        ),
        Advisory(
            id="GA611",
            title="logged clip_ratio counts out-of-range tokens the clip does not act on",
            effect=(
                "clip_ratio was computed as the fraction of tokens where the unclipped surrogate is the smaller "
                "term (per_token_loss1 < per_token_loss2): tokens whose ratio left the clip range on the side "
                "where the pessimistic min keeps the unclipped term, so the clip does not act on them; the tokens "
                "it does clip are not counted. The gradient is unaffected; the metric used to tune epsilon is."
            ),
            introduced="0.16.0",
            fixed_in="0.17.0",
            pr="huggingface/trl#3175",
            condition="num_iterations > 1 (with one iteration the ratio is 1 and the metric is 0 either way)",
            trigger=_several_iterations,
            stage="metrics",
            catalog_id="22",
            severity="warning",
            workaround="recompute the clipped fraction from the ratios and advantages (grpo-check compare does)",
        ),
        Advisory(
            id="GA612",
            title="luspo loss weighted each row's per-token losses by its length instead of masking them",
            effect=(
                "The loss is (per_token_loss * |o_i|).mean() over all T columns. That is LUSPO's row weight only "
                "when the per-token loss is one value per row; with a KL term, token-level importance sampling "
                "(TRL's default level) or an entropy mask it is (B, T): padding tokens enter the loss and each "
                "token of row i is weighted by |o_i| / T instead of 1."
            ),
            introduced="0.28.0",
            fixed_in="1.10.0",
            pr="huggingface/trl#6654",
            condition="loss_type luspo with beta ≠ 0, importance_sampling_level = 'token' or top_entropy_quantile < 1",
            trigger=_luspo_token_level_loss,
            stage="loss",
            catalog_id="5",
            workaround="set importance_sampling_level = 'sequence', beta = 0 and top_entropy_quantile = 1",
        ),
        Advisory(
            id="GA613",
            title="entropy bonus of dapo/cispo/vespo divided by the global token count, not averaged per micro-batch",
            effect=(
                "The entropy bonus of a dapo-family loss is its micro-batch's entropy sum over the generation "
                "batch's token count, while every other loss type takes the micro-batch's mean entropy / "
                "gradient_accumulation_steps: with several micro-batches per window or generation batch the "
                "bonus of a micro-batch scales with its share of the tokens and the coefficient means something "
                "else than documented."
            ),
            introduced="1.8.0",
            fixed_in="1.10.0",
            pr="huggingface/trl#6648",
            condition=(
                "entropy_coef ≠ 0 or use_adaptive_entropy, with loss_type dapo, cispo or vespo and more than one "
                "micro-batch per accumulation window or generation batch"
            ),
            trigger=_entropy_bonus_dapo_family_several_micro_batches,
            stage="loss",
            catalog_id="4",
            workaround="use one micro-batch per optimizer step, or loss_type bnpo for a token-mean loss",
        ),
    )
}


def triggered(release: str, values: Mapping[str, Any]) -> list[tuple[Advisory, str]]:
    """The advisories ``release`` and the effective config ``values`` trigger, each with why."""
    found = []
    for advisory in ADVISORIES.values():
        why = advisory.check(release, values)
        if why is not None:
            found.append((advisory, why))
    return found


def fixed_by(release: str) -> list[Advisory]:
    """The advisories a release no longer has (``fixed_in <= release``)."""
    version = parse_version(release)
    return [a for a in ADVISORIES.values() if parse_version(a.fixed_in) <= version]

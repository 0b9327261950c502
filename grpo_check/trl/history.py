"""Numerical GRPO bugs that shipped in TRL releases and were fixed later, and how a run names them.

The reference encodes GRPO as specified, never what one release computed; so a release with a shipped bug
fails a comparison. When the installed release is one a bug affects, the settings trigger it, and the stage
it corrupts fails, :func:`name_shipped_bugs` adds a diagnosis naming the bug, the releases it affects, the
release that fixed it and the pull request, and marks the failing findings it explains.

Each entry was established by reading the released code (``pip download trl==X --no-deps``) on both sides
of the fix.

Example::

    >>> from grpo_check.trl.history import shipped_bugs
    >>> [bug.id for bug in shipped_bugs("0.15.2", {"temperature": 0.9})]
    ['trl-temperature-logps']
    >>> [bug.id for bug in shipped_bugs("0.16.0", {"temperature": 0.9})]
    []
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from grpo_check.findings import Finding, Verdict
from grpo_check.trl.versions import parse_version

Settings = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class ShippedBug:
    """One shipped bug: affected releases [first, last], the fixing release and PR, what triggers it, and the
    stages whose comparison it makes fail."""

    id: str
    title: str
    first: str
    last: str
    fixed_in: str
    pr: int
    stages: tuple[str, ...]
    trigger: Callable[[Settings], bool]
    trigger_text: str
    effect: str

    def affects(self, version: str) -> bool:
        return parse_version(self.first) <= parse_version(version) <= parse_version(self.last)

    @property
    def source(self) -> str:
        return f"huggingface/trl PR #{self.pr}"

    def describe(self) -> str:
        return (
            f"{self.title} — shipped in TRL {self.first} to {self.last}, fixed in {self.fixed_in} "
            f"({self.source}); triggered by {self.trigger_text}: {self.effect}"
        )


def _temperature_not_one(settings: Settings) -> bool:
    return float(settings.get("temperature", 1.0)) != 1.0


def _global_token_normaliser_with_spg_not_gas(settings: Settings) -> bool:
    gas = int(settings.get("gradient_accumulation_steps", 1) or 1)
    spg = int(settings.get("steps_per_generation", gas) or gas)
    return str(settings.get("loss_type", "")) in ("dapo", "cispo", "vespo") and spg != gas


def _global_token_normaliser_with_truncation_mask(settings: Settings) -> bool:
    return str(settings.get("loss_type", "")) in ("dapo", "cispo", "vespo") and bool(
        settings.get("mask_truncated_completions", False)
    )


def _luspo_with_token_level_loss(settings: Settings) -> bool:
    """luspo whose per-token loss is (B, T): a KL term, token-level ratios or an entropy mask broadcast it."""
    return str(settings.get("loss_type", "")) == "luspo" and (
        float(settings.get("beta", 0.0) or 0.0) != 0.0
        or str(settings.get("importance_sampling_level", "token")) == "token"
        or float(settings.get("top_entropy_quantile", 1.0)) < 1.0
    )


def _entropy_bonus_with_global_normaliser(settings: Settings) -> bool:
    """An entropy bonus with a dapo-family loss, over more than one micro-batch per window or generation."""
    gas = int(settings.get("gradient_accumulation_steps", 1) or 1)
    spg = int(settings.get("steps_per_generation", gas) or gas)
    return (
        str(settings.get("loss_type", "")) in ("dapo", "cispo", "vespo")
        and float(settings.get("entropy_coef", 0.0) or 0.0) != 0.0
        and max(gas, spg) > 1
    )


def _left_padded_prompts(settings: Settings) -> bool:
    """Prompts of different lengths in one batch (left padding): known from the captured prompt masks."""
    return bool(settings.get("left_padded_prompts", False))


def _any_scale_rewards(settings: Settings) -> bool:
    """Every scale_rewards value is affected: 'group' (the default) does not scale, 'batch' and 'none' do."""
    return True


def _unscorable_rows(settings: Settings) -> bool:
    """A row that every reward function left unscored (None): known from the captured rewards, not a setting."""
    return bool(settings.get("unscorable_rows", False))


SHIPPED_BUGS: tuple[ShippedBug, ...] = (
    ShippedBug(
        id="trl-scale-rewards-swapped",
        title="scale_rewards branches swapped: 'group' (the default) never divides by the std, 'batch' and 'none' "
        "divide by each group's std",
        first="0.22.0",
        last="0.22.1",
        fixed_in="0.22.2",
        pr=3992,
        stages=("advantages",),
        trigger=_any_scale_rewards,
        trigger_text="any scale_rewards (the default 'group' included)",
        effect="the advantages are r − group mean, not divided by the group std, under the default; 'none' and "
        "'batch' scale by the group std instead",
    ),
    ShippedBug(
        id="trl-logps-no-attention-mask",
        title="log-probs computed without the attention mask: the left padding of shorter prompts is attended",
        first="0.14.0",
        last="0.14.0",
        fixed_in="0.15.0",
        pr=2708,
        stages=("logps", "ratio", "kl", "loss", "grad"),
        trigger=_left_padded_prompts,
        trigger_text="prompts of different lengths in one batch (left padding)",
        effect="the policy and reference log-probs of a row with a padded prompt condition on its pad tokens",
    ),
    ShippedBug(
        id="trl-temperature-logps",
        title="log-probs computed without dividing the logits by the sampling temperature",
        first="0.14.0",
        last="0.15.2",
        fixed_in="0.16.0",
        pr=3029,
        stages=("logps", "ratio", "kl", "loss", "grad"),
        trigger=_temperature_not_one,
        trigger_text="temperature != 1 (the default was 0.9)",
        effect="the policy and reference log-probs are those of the T=1 distribution, not of the sampling one",
    ),
    ShippedBug(
        id="trl-dapo-normaliser-spg",
        title="dapo/cispo/vespo token normaliser mis-scaled by gradient_accumulation_steps / steps_per_generation",
        first="0.22.0",
        last="1.9.0",
        fixed_in="1.9.1",
        pr=6024,
        stages=("loss", "grad"),
        trigger=_global_token_normaliser_with_spg_not_gas,
        trigger_text="loss_type dapo, cispo or vespo with steps_per_generation != gradient_accumulation_steps",
        effect="each micro-batch divides by the generation batch's token count, so one accumulation window's "
        "loss and gradient are scaled by gradient_accumulation_steps / steps_per_generation",
    ),
    ShippedBug(
        id="trl-num-items-truncated",
        title="dapo/cispo/vespo token normaliser counts the tokens of truncated completions the loss masks out",
        first="0.22.0",
        last="1.8.0",
        fixed_in="1.9.0",
        pr=6439,
        stages=("loss", "grad"),
        trigger=_global_token_normaliser_with_truncation_mask,
        trigger_text="loss_type dapo, cispo or vespo with mask_truncated_completions=True and a truncated completion",
        effect="num_items_in_batch is counted before the truncated rows are masked, so the denominator counts "
        "tokens the numerator does not: loss and gradient shrink by the masked fraction",
    ),
    ShippedBug(
        id="trl-luspo-unmasked",
        title="luspo loss weighted each row's per-token losses by its length instead of masking them",
        first="0.28.0",
        last="1.9.2",
        fixed_in="1.10.0",
        pr=6654,
        stages=("loss", "grad"),
        trigger=_luspo_with_token_level_loss,
        trigger_text="loss_type luspo with a (B, T) per-token loss (beta != 0, token-level importance sampling "
        "or top_entropy_quantile < 1)",
        effect="(per_token_loss * |o_i|).mean() over all T columns: padding enters and each row is weighted by "
        "|o_i|^2 / T instead of summed over its tokens",
    ),
    ShippedBug(
        id="trl-entropy-bonus-normaliser",
        title="entropy bonus of dapo/cispo/vespo divided by the policy's global token count, not averaged per "
        "micro-batch",
        first="1.8.0",
        last="1.9.2",
        fixed_in="1.10.0",
        pr=6648,
        stages=("loss", "grad"),
        trigger=_entropy_bonus_with_global_normaliser,
        trigger_text="entropy_coef != 0 with loss_type dapo, cispo or vespo and several micro-batches per "
        "accumulation window or generation batch",
        effect="the bonus of a micro-batch scales with its share of the generation batch's tokens instead of "
        "being its mean entropy / gradient_accumulation_steps",
    ),
    ShippedBug(
        id="trl-unscorable-rows-counted",
        title="a completion every reward function left unscored (None) entered its group's mean and std as reward 0",
        first="0.16.0",
        last="1.5.1",
        fixed_in="1.6.0",
        pr=5902,
        stages=("advantages",),
        trigger=_unscorable_rows,
        trigger_text="a completion for which every reward function returns None",
        effect="nansum turns the unscorable row into a reward of 0: it shifts its group's baseline and scale and "
        "gets an advantage of its own instead of being left out with advantage 0",
    ),
)


def _first_place(finding: Finding) -> tuple[int, int, int, str]:
    where = finding.where
    return (where.step or 0, where.micro_batch or 0, where.rank or 0, finding.check_id)


def shipped_bugs(version: str, settings: Settings) -> list[ShippedBug]:
    """The shipped bugs ``version`` has that ``settings`` (GRPOSpec fields by name) trigger."""
    return [bug for bug in SHIPPED_BUGS if bug.affects(version) and bug.trigger(settings)]


def name_shipped_bugs(findings: Iterable[Finding], version: str, settings: Settings) -> list[Finding]:
    """One diagnosis per shipped bug of ``version`` that ``settings`` trigger and that a failing comparison in
    its stages shows; the failing findings it explains get its id in ``details["shipped_bug"]`` and, where
    no diagnosis named a cause, the bug as their likely cause."""
    findings = list(findings)
    out: list[Finding] = []
    for bug in shipped_bugs(version, settings):
        failing = [
            f
            for f in findings
            if f.verdict is Verdict.FAIL
            and f.stage in bug.stages
            and not f.check_id.startswith("trl.shipped_bug.")
        ]
        if not failing:
            continue
        cause = f"shipped TRL bug: {bug.title} (TRL {bug.first}–{bug.last}, fixed in {bug.fixed_in}, {bug.source})"
        fix = f"upgrade to TRL >= {bug.fixed_in}"
        for finding in failing:
            finding.details = {**(finding.details or {}), "shipped_bug": bug.id}
            if finding.likely_cause is None:
                finding.likely_cause, finding.fix = cause, finding.fix or fix
            elif bug.source not in finding.likely_cause:
                finding.likely_cause = f"{finding.likely_cause}; {cause}"
        first = min(failing, key=_first_place)  # the earliest failure: the same whatever order checks ran in
        out.append(
            Finding(
                check_id=f"trl.shipped_bug.{bug.id}",
                stage=first.stage,
                verdict=Verdict.FAIL,
                figure=first.figure,
                tolerance=first.tolerance,
                where=first.where,
                kind="diagnosis",
                explanation=f"TRL {version} has a known shipped bug: {bug.describe()}",
                likely_cause=cause,
                fix=fix,
                details={
                    "shipped_bug": bug.id,
                    "affected": [bug.first, bug.last],
                    "fixed_in": bug.fixed_in,
                    "pr": bug.pr,
                    "explains": sorted({f.check_id for f in failing}),
                },
            )
        )
    return out


def name_shipped_bugs_in_trace(manifest: Mapping[str, Any], findings: Iterable[Finding]) -> list[Finding]:
    """:func:`name_shipped_bugs` for a trace TRL's ``GRPOTrainer`` recorded (its manifest names the TRL
    release and the configuration); ``[]`` for any other trace."""
    version = (manifest.get("versions") or {}).get("trl")
    if not version or not str(manifest.get("trainer", "")).startswith("trl."):
        return []
    return name_shipped_bugs(findings, str(version), manifest.get("config") or {})

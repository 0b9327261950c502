"""Numerical GRPO bugs that shipped in TRL releases and were fixed later, and how a run names them.

The reference encodes GRPO as specified, never what one release computed; so a release with a shipped bug
fails a comparison. When the installed release is one a bug affects, the settings trigger it, and the stage
it corrupts fails, :func:`name_shipped_bugs` adds a diagnosis naming the bug, the releases it affects, the
release that fixed it and the pull request, and marks the failing findings it explains.

The facts of each bug (affected releases, fixing release and pull request, title, effect) are those of its
audit advisory (:data:`grpo_check.audit.advisories.ADVISORIES`, rules ``GA6xx``), confirmed in the released code
on both sides of the fix; an entry here adds what a run needs to name the bug: the stages its comparison
fails in and a trigger over the run's settings and captured data.

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

from grpo_check.audit.advisories import ADVISORIES, Advisory
from grpo_check.findings import Finding, Verdict

Settings = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class ShippedBug:
    """One shipped bug as a run names it: its audit advisory, the stages whose comparison it makes fail, and
    what triggers it in a run's settings (GRPOSpec fields by name, plus facts the captured data shows)."""

    id: str
    advisory: Advisory
    stages: tuple[str, ...]
    trigger: Callable[[Settings], bool]

    @property
    def title(self) -> str:
        return self.advisory.title

    @property
    def first(self) -> str:
        return self.advisory.introduced

    @property
    def last(self) -> str:
        return self.advisory.last_affected

    @property
    def fixed_in(self) -> str:
        return self.advisory.fixed_in

    @property
    def pr(self) -> int:
        return int(self.advisory.pr.rsplit("#", 1)[1])

    @property
    def trigger_text(self) -> str:
        return self.advisory.condition

    @property
    def effect(self) -> str:
        return self.advisory.effect

    def affects(self, version: str) -> bool:
        return self.advisory.affects(version)

    @property
    def source(self) -> str:
        return f"huggingface/trl PR #{self.pr}"

    def describe(self) -> str:
        return (
            f"{self.title} — shipped in TRL {self.first} to {self.last}, fixed in {self.fixed_in} "
            f"({self.source}, audit rule {self.advisory.id}); triggered by {self.trigger_text}. {self.effect}"
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
    ShippedBug("trl-scale-rewards-swapped", ADVISORIES["GA606"], ("advantages",), _any_scale_rewards),
    ShippedBug(
        "trl-logps-no-attention-mask",
        ADVISORIES["GA601"],
        ("logps", "ratio", "kl", "loss", "grad"),
        _left_padded_prompts,
    ),
    ShippedBug(
        "trl-temperature-logps",
        ADVISORIES["GA602"],
        ("logps", "ratio", "kl", "loss", "grad"),
        _temperature_not_one,
    ),
    ShippedBug(
        "trl-dapo-normaliser-spg",
        ADVISORIES["GA608"],
        ("loss", "grad"),
        _global_token_normaliser_with_spg_not_gas,
    ),
    ShippedBug(
        "trl-num-items-truncated",
        ADVISORIES["GA607"],
        ("loss", "grad"),
        _global_token_normaliser_with_truncation_mask,
    ),
    ShippedBug("trl-luspo-unmasked", ADVISORIES["GA612"], ("loss", "grad"), _luspo_with_token_level_loss),
    ShippedBug(
        "trl-entropy-bonus-normaliser",
        ADVISORIES["GA613"],
        ("loss", "grad"),
        _entropy_bonus_with_global_normaliser,
    ),
    ShippedBug("trl-unscorable-rows-counted", ADVISORIES["GA610"], ("advantages",), _unscorable_rows),
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

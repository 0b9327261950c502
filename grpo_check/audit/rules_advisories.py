"""Audit rules ``GA6xx``: advisories, numerical bugs that shipped in the TRL release audited against and were
fixed later (one rule per entry of :data:`grpo_check.audit.advisories.ADVISORIES`)."""

from __future__ import annotations

from grpo_check.audit import advisories as _advisories
from grpo_check.audit.registry import AuditContext, CheckFn, Hit, rule


def _advisory_check(advisory: _advisories.Advisory) -> CheckFn:
    def check(ctx: AuditContext) -> Hit | None:
        release = str(ctx.facts.get("requested_version") or ctx.version)
        try:
            why = advisory.check(release, ctx.values)
        except ValueError:  # an unparsable version: GA406 / the loader report it
            return None
        if why is None:
            return None
        data = f"; it bites when {advisory.data_dependent}" if advisory.data_dependent else ""
        return Hit(
            f"TRL {release}: {advisory.title} — {why}{data} ({advisory.pr}, fixed in TRL {advisory.fixed_in})",
            details={
                "advisory": advisory.id,
                "pr": advisory.pr,
                "url": advisory.url,
                "introduced": advisory.introduced,
                "fixed_in": advisory.fixed_in,
                "stage": advisory.stage,
            },
        )

    return check


def _register_advisories() -> None:
    for advisory in _advisories.ADVISORIES.values():
        # the fields in the order of relevance: the first one present in the file gives the finding's line
        fields = {
            "GA601": ("per_device_train_batch_size",),
            "GA602": ("temperature",),
            "GA603": ("use_vllm", "max_prompt_length"),
            "GA604": ("use_vllm", "max_prompt_length"),
            "GA605": ("top_entropy_quantile", "num_processes"),
            "GA606": ("scale_rewards",),
            "GA607": ("mask_truncated_completions", "loss_type"),
            "GA608": ("steps_per_generation", "gradient_accumulation_steps", "loss_type"),
            "GA609": ("steps_per_generation", "gradient_accumulation_steps", "num_iterations"),
            "GA611": ("num_iterations",),
            "GA612": ("loss_type", "beta", "importance_sampling_level", "top_entropy_quantile"),
            "GA613": (
                "entropy_coef",
                "use_adaptive_entropy",
                "loss_type",
                "steps_per_generation",
                "gradient_accumulation_steps",
            ),
        }.get(advisory.id, ("trl_version",))
        rule(
            advisory.id,
            advisory.title,
            advisory.severity,  # type: ignore[arg-type]
            fields,
            reason=(
                f"{advisory.effect} Affected: TRL {advisory.introduced} – {advisory.last_affected}; "
                f"triggered by: {advisory.condition}."
            ),
            source=f"{advisory.pr} ({advisory.url}); fixed in TRL {advisory.fixed_in}",
            fix=advisory.fix,
            catalog_id=advisory.catalog_id,
        )(_advisory_check(advisory))


_register_advisories()

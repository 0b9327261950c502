"""Audit rules ``GA5xx``: facts of an instantiated ``GRPOTrainer`` (dropout really active, reference = policy,
overrides)."""

from __future__ import annotations

from grpo_check.audit.registry import _TRAINER_INIT, AuditContext, Hit, _as_float, rule


@rule(
    "GA501",
    "dropout is active in the policy",
    "error",
    ("disable_dropout",),
    reason=(
        "The instantiated model has dropout modules with p > 0 and they are not disabled: two forwards with the "
        "same weights disagree, so ratio ≠ 1 on-policy and log-prob comparisons are noise."
    ),
    source="TRL PR #3234; bug-catalog #15",
    fix="Set disable_dropout = true, or set the model config's dropout probabilities to 0.",
    catalog_id="15",
)
def _dropout_active(ctx: AuditContext) -> Hit | None:
    dropout = _as_float(ctx.facts.get("dropout_max"))
    if dropout is None or dropout <= 0.0:
        return None
    return Hit(f"largest dropout probability in the policy: {dropout}", figure=dropout)


@rule(
    "GA504",
    "dropout that disable_dropout does not reach",
    "error",
    ("disable_dropout",),
    reason=(
        "TRL's disable_dropout_in_model only sets p = 0 on torch.nn.Dropout modules. Several architectures "
        "(Llama and its relatives) keep attention dropout as a plain float (attention_dropout) that is handed "
        "to the attention kernel while the model is in training mode, so it stays active even with "
        "disable_dropout = true: ratio ≠ 1 on-policy, noisy KL."
    ),
    source=(
        "trl/trainer/utils.py disable_dropout_in_model (TRL 1.16: isinstance(module, torch.nn.Dropout)); "
        "transformers models/llama/modeling_llama.py (dropout=self.attention_dropout when training); bug-catalog #15"
    ),
    fix=(
        "Build the model with config.attention_dropout = 0.0 (and any other *_dropout float), or zero the "
        "attributes after loading: `for m in model.modules(): m.attention_dropout = 0.0` where present."
    ),
    catalog_id="15",
)
def _functional_dropout_active(ctx: AuditContext) -> Hit | None:
    found = ctx.facts.get("functional_dropout") or {}
    if not found:
        return None
    where = ", ".join(f"{name} = {value}" for name, value in list(found.items())[:3])
    return Hit(
        f"dropout kept as a float attribute: {where}",
        figure=max(found.values()),
        details={"modules": dict(found)},
    )


@rule(
    "GA502",
    "reference model is the policy itself",
    "error",
    ("beta",),
    reason=(
        "With beta > 0 the KL is taken to the reference model; if the reference is the same object as the "
        "policy the KL is identically 0 and the penalty does nothing."
    ),
    source="TRL #3194 / PR #3196, #1340; bug-catalog #20",
    fix="Pass a separate frozen copy (or use PEFT so TRL disables the adapter for the reference).",
    catalog_id="20",
)
def _ref_is_policy(ctx: AuditContext) -> Hit | None:
    if ctx.facts.get("ref_is_policy") and _as_float(ctx["beta"]):
        return Hit("trainer.ref_model is trainer.model")
    return None


@rule(
    "GA503",
    "trainer attribute differs from its args",
    "info",
    ("<field>",),
    reason=(
        "The trainer reads these values from attributes set in __init__ (self.beta, self.loss_type, …); "
        "something changed them after construction, so trainer.args no longer tells what runs."
    ),
    source=f"{_TRAINER_INIT} (attributes copied from args)",
    fix="Change GRPOConfig before building the trainer instead of patching attributes.",
)
def _attribute_overrides(ctx: AuditContext) -> list[Hit]:
    return [
        Hit(f"trainer.{attr} = {now!r} but args.{field} = {was!r} (the audit uses {now!r})", fields=(field,))
        for field, attr, was, now in ctx.facts.get("overrides", ())
    ]

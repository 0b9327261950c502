"""``grpo-check audit``: check a TRL GRPO configuration against rules before a run wastes a GPU-week.

Input: a YAML/JSON file (flat GRPOConfig fields, or nested in a recipe under ``training:``/``trainer:``/
``grpo:``/``args:`` …), a ``dict``, a ``trl.GRPOConfig`` or an instantiated ``GRPOTrainer``. Output: a
:class:`grpo_check.findings.Result` of ``kind="audit"``, ``stage="config"`` findings whose ``check_id`` is
the rule id. Severity maps to verdicts: error → ``FAIL``, warning → ``WARN``, info → ``PASS`` with
``details["severity"] == "info"`` (so info never changes the exit code, even with ``--strict``).

Example::

    >>> from grpo_check.audit import audit
    >>> result = audit({"num_generations": 6, "per_device_train_batch_size": 4, "loss_type": "grpo"},
    ...                trl_version="1.16")
    >>> sorted(f.check_id for f in result.failures)
    ['GA001']
    >>> result.exit_code()
    1
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from grpo_check.audit import versions
from grpo_check.audit.loader import LoadedConfig, load_source
from grpo_check.audit.rules import RULES, AuditContext, Hit, Rule, effective_values, get_rule
from grpo_check.findings import Finding, InputError, Result, Verdict

__all__ = ["RULES", "AuditContext", "Rule", "audit", "audit_loaded", "get_rule", "verdict_for"]

_VERDICT = {"error": Verdict.FAIL, "warning": Verdict.WARN, "info": Verdict.PASS}


def verdict_for(severity: str) -> Verdict:
    """error → FAIL, warning → WARN, info → PASS (the finding carries ``details["severity"] = "info"``)."""
    return _VERDICT[severity]


def audit(
    source: Any,
    trl_version: str | None = None,
    *,
    num_processes: int | None = None,
    num_reward_funcs: int | None = None,
    rules: Iterable[str] | None = None,
) -> Result:
    """Audit a GRPO configuration.

    Args:
        source: path to a YAML/JSON file, a mapping, a ``trl.GRPOConfig`` or a ``GRPOTrainer``.
        trl_version: interpret unset fields with this TRL release's defaults (``"0.19"``). Default: the
            version an object was built with, else the installed ``trl`` (read from package metadata,
            without importing trl), else the newest release tabulated.
        num_processes: processes (GPUs) the run will use; a file cannot know it (default 1, or the
            file's ``num_processes`` key, or the trainer's accelerator).
        num_reward_funcs: number of reward functions, to check ``reward_weights`` (a trainer knows it).
        rules: only run these rule ids.

    Raises:
        InputError: unreadable, malformed or refused (pickle) input; unknown rule id; bad version.
    """
    loaded = load_source(source)
    return audit_loaded(
        loaded,
        trl_version=trl_version,
        num_processes=num_processes,
        num_reward_funcs=num_reward_funcs,
        rules=rules,
    )


def _installed(package: str) -> str | None:
    """The installed version of ``package`` from its metadata (nothing is imported), else None."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _choose_version(loaded: LoadedConfig, trl_version: str | None) -> tuple[str, str]:
    if trl_version is not None:
        try:
            versions.parse_version(trl_version)
        except ValueError:
            raise InputError(f"not a TRL version: {trl_version!r} (expected e.g. 0.19 or 1.16.0)") from None
        return str(trl_version), "--trl-version"
    if loaded.trl_version:
        return loaded.trl_version, "the object's TRL"
    from importlib import metadata

    try:
        return metadata.version("trl"), "installed trl"
    except metadata.PackageNotFoundError:
        return versions.LATEST, "newest tabulated (trl not installed)"


def audit_loaded(
    loaded: LoadedConfig,
    *,
    trl_version: str | None = None,
    num_processes: int | None = None,
    num_reward_funcs: int | None = None,
    rules: Iterable[str] | None = None,
) -> Result:
    """Run the rules on an already loaded configuration (see :func:`audit`)."""
    requested, version_source = _choose_version(loaded, trl_version)
    resolved = versions.resolve_version(requested)
    facts: dict[str, Any] = dict(loaded.facts)
    if num_processes is not None:
        if num_processes < 1:
            raise InputError(f"num_processes must be ≥ 1, got {num_processes}")
        facts["num_processes"] = num_processes
    if num_reward_funcs is not None:
        if num_reward_funcs < 1:
            raise InputError(f"num_reward_funcs must be ≥ 1, got {num_reward_funcs}")
        facts["num_reward_funcs"] = num_reward_funcs
    facts["load_problems"] = list(loaded.problems)
    # The installed transformers is the one the audited release runs with only when that release is installed.
    installed_trl = _installed("trl")
    same_stack = installed_trl is None or versions.parse_version(installed_trl) == versions.parse_version(
        requested
    )
    facts.setdefault("transformers_version", _installed("transformers") if same_stack else None)
    facts.setdefault("transformers_known", same_stack)
    assumptions: list[str] = []
    if num_processes is not None:
        facts["num_processes_source"] = "--num-processes"
    elif "num_processes" in facts and loaded.kind in ("file", "mapping"):
        facts.setdefault("num_processes_source", "num_processes")
    elif "num_processes" not in facts:
        facts["num_processes"] = 1
        if loaded.kind in ("file", "mapping"):
            facts["num_processes_assumed"] = True
            assumptions.append("num_processes = 1 (the file does not say; pass --num-processes N)")
    facts["requested_version"] = requested
    facts["effective"] = loaded.effective
    facts["keys"] = tuple(loaded.values) if not loaded.effective else ()
    facts["user_values"] = dict(loaded.values)
    if "scale_rewards" in loaded.values and not loaded.effective:
        facts["raw_scale_rewards"] = loaded.values["scale_rewards"]  # before True -> "group" normalisation
    if loaded.effective:
        values = versions.defaults_for(resolved)
        values.update(loaded.values)
        values["num_processes"] = facts["num_processes"]
        if values.get("epsilon_high") is None:
            values["epsilon_high"] = values.get("epsilon")
    else:
        values = effective_values(loaded.values, version=resolved, num_processes=facts["num_processes"])
    ctx = AuditContext(values=values, explicit=loaded.explicit, version=resolved, facts=facts)

    selected = [get_rule(r) for r in rules] if rules is not None else list(RULES.values())
    result = Result(
        metadata={
            "source": loaded.origin,
            "source_kind": loaded.kind,
            "key_path": loaded.key_path,
            "trl_version": requested,
            "trl_version_table": resolved,
            "trl_version_source": version_source,
            "num_processes": facts["num_processes"],
            "num_processes_source": facts.get("num_processes_source", "assumed" if assumptions else None),
            "assumptions": assumptions,
            "section_line": loaded.facts.get("section_line"),
            "rules_run": [r.id for r in selected],
            "config": _jsonable(
                {k: values.get(k) for k in sorted(set(loaded.values) | _KEY_FIELDS) if k in values}
            ),
        }
    )
    for current in selected:
        for hit in current.run(ctx):
            result.add(_finding(current, hit, loaded, ctx))
    return result


_KEY_FIELDS = frozenset(
    {
        "num_generations",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "steps_per_generation",
        "generation_batch_size",
        "loss_type",
        "beta",
        "epsilon",
        "epsilon_high",
        "scale_rewards",
        "importance_sampling_level",
        "learning_rate",
        "temperature",
        "num_iterations",
        "max_completion_length",
    }
)


def _finding(current: Rule, hit: Hit, loaded: LoadedConfig, ctx: AuditContext) -> Finding:
    fields = tuple(hit.fields or current.fields)
    line = next((loaded.lines[f] for f in fields if f in loaded.lines), None)
    details: dict[str, Any] = {
        "severity": current.severity,
        "rule_title": current.title,
        "category": current.category,
        "fields": list(fields),
        "values": _jsonable({f: ctx.values.get(f) for f in fields if f in ctx.values}),
        "source": current.source,
        "file": loaded.origin if loaded.kind == "file" else None,
        "line": line,
        "key_path": loaded.key_path,
        "trl_version": ctx.version,
    }
    details.update(_jsonable(dict(hit.details)))
    message = hit.message
    if "num_processes" in current.fields or "num_processes" in fields:
        if ctx.facts.get("num_processes_assumed"):
            details["assumed"] = {"num_processes": 1}
            message += " [assumed num_processes = 1: the file does not say; pass --num-processes N]"
        elif ctx.facts.get("num_processes_source") not in (None, "--num-processes"):
            message += f" [num_processes = {ctx.facts['num_processes']} from the file's {ctx.facts['num_processes_source']}]"
    return Finding(
        check_id=current.id,
        stage="config",
        verdict=verdict_for(current.severity),
        figure=hit.figure,
        explanation=message,
        likely_cause=current.reason,
        fix=current.fix,
        catalog_id=current.catalog_id,
        kind="audit",
        details=details,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)

"""The compare engine: stage-isolated comparison of a trace against the float64 reference (or another trace).

Example::

    >>> from grpo_check.compare.synthetic import make_trace
    >>> from grpo_check.compare import compare
    >>> result = compare(make_trace(steps=1))
    >>> result.exit_code(), result.metadata["tolerances"]["reference_dtype"]
    (0, 'float64')
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import platform
from collections.abc import Callable, Iterable
from typing import Any

from grpo_check._step_cache import step_cache
from grpo_check.compare import distribution
from grpo_check.compare.hooks import step_findings
from grpo_check.compare.stages import compare_stages
from grpo_check.compare.tolerances import TolerancePolicy, as_policy
from grpo_check.config import GRPOSpec, as_spec, spec_for_step
from grpo_check.findings import Finding, InputError, Result, Verdict
from grpo_check.stepref.inputs import step_context
from grpo_check.trace.model import Trace, TraceStep

ProgressCallback = Callable[[int, int], None]


def compare_step(
    step: TraceStep,
    spec: GRPOSpec,
    *,
    tolerances: TolerancePolicy | None = None,
    model: Any = None,
    ref_model: Any = None,
    diagnose: bool = True,
    end_to_end: bool = True,
    trace: Trace | None = None,
) -> list[Finding]:
    """Compare one captured step (micro-batch) stage by stage against the reference; then diagnose.

    This is the building block the TRL adapter calls live during training. Findings have kind
    ``"compare"`` (stage-isolated and ``e2e.*``) and ``"diagnosis"`` (signature → bug-catalog entry; the
    compare finding it explains gets the same ``likely_cause``/``fix``/``catalog_id``). The check families
    registered in :mod:`grpo_check.compare.hooks` (re-derivations) run on the step too; ``trace`` is the trace
    it belongs to, for the ones that join it with other steps.

    >>> from grpo_check.compare.synthetic import make_step
    >>> from grpo_check.config import GRPOSpec
    >>> spec = GRPOSpec(num_generations=4, loss_type="grpo", beta=0.04)
    >>> findings = compare_step(make_step(spec), spec)
    >>> sorted({f.verdict.value for f in findings if f.kind != "rederive"})
    ['pass']
    """
    step = _as_step(step)
    spec = spec_for_step(
        as_spec(spec), step.meta
    )  # a coefficient the trainer moves per step (adaptive entropy)
    policy = _DEFAULT_POLICY if tolerances is None else as_policy(tolerances)
    with step_cache(step):  # float64 copies made once for the comparison and the diagnoses
        findings, reference = compare_stages(
            step, spec, policy, model=model, ref_model=ref_model, end_to_end=end_to_end
        )
        if diagnose:
            run_diagnose = _LAZY.get("diagnose") or _import_diagnose()
            findings += run_diagnose(step, reference, spec, findings, model=model, tolerances=policy)
        findings += step_findings(step, spec, trace)
    return findings


# the default policy, built once (frozen, and nothing changes its overrides): a step compared without a declared
# policy needs no policy object of its own
_DEFAULT_POLICY = TolerancePolicy()

_LAZY: dict[str, Callable[..., Any]] = {}  # functions imported on first use (importing compare stays cheap)


def _import_diagnose() -> Callable[..., list[Finding]]:
    """:func:`grpo_check.diagnose.diagnose`, imported once (a per-call import of a package's name costs a
    Python call every time)."""
    from grpo_check.diagnose import diagnose

    _LAZY["diagnose"] = diagnose
    return diagnose


def _invariant_findings(steps: TraceStep | list[TraceStep], spec: GRPOSpec) -> list[Finding]:
    try:
        module = importlib.import_module("grpo_check.invariants")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("grpo_check.invariants"):
            return []
        raise
    run = getattr(module, "run_invariants", None)
    return [] if run is None else list(run(steps, spec))


def _spec_for(trace: Trace, spec: GRPOSpec | None) -> GRPOSpec:
    return spec if spec is not None else trace.spec()


def _metadata(
    trace: Trace, spec: GRPOSpec, policy: TolerancePolicy, source: str | None, mode: str
) -> dict[str, Any]:
    versions: dict[str, Any] = {}
    try:
        from grpo_check import __version__

        versions["grpo_check"] = __version__
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    versions["python"] = platform.python_version()
    return {
        "mode": mode,
        "tolerances": policy.to_dict(),
        "config": spec.to_dict(),
        "versions": versions,
        "trace_versions": dict(trace.manifest.get("versions") or {}),
        "source": source or trace.manifest.get("source") or trace.manifest.get("trainer"),
        "trainer": trace.manifest.get("trainer"),
        "steps": len(trace.steps),
        "trace_problems": list(trace.problems),
    }


def check(trace: Trace, *, spec: GRPOSpec | None = None, source: str | None = None) -> Result:
    """Invariants only (one implementation's own tensors, no reference): the ``grpo-check check`` command.

    ``trace``: a :class:`~grpo_check.trace.model.Trace` or the path of a trace directory."""
    trace = _as_trace(trace)
    spec = _spec_for(trace, spec)
    result = Result(metadata=_metadata(trace, spec, TolerancePolicy(), source, "check"))
    # all steps in one call: a check whose inputs no step holds is reported "not captured" once per trace
    result.extend(_invariant_findings(list(trace.steps), spec))
    _add_trace_problems(result, trace)
    _add_nothing_checked(result)
    return result


def compare(
    trace: Trace,
    *,
    against: Trace | None = None,
    spec: GRPOSpec | None = None,
    model: Any = None,
    ref_model: Any = None,
    tolerances: TolerancePolicy | None = None,
    invariants: bool = True,
    diagnose: bool = True,
    source: str | None = None,
    progress: ProgressCallback | None = None,
) -> Result:
    """Compare a trace stage by stage against the float64 reference, or against another trace.

    Args:
        trace: the captured run (a :class:`~grpo_check.trace.model.Trace`, or the path of a trace directory).
        against: compare with this trace (or trace directory) instead of the reference (e.g. two trainer
            versions).
        spec: the algorithm configuration (default: the trace manifest's ``config``).
        model / ref_model: recompute logps / ref_logps with the reference's own forward pass; either may be a
            callable ``step -> model`` returning the weights that step's log-probs were computed with.
        tolerances: the declared :class:`TolerancePolicy` (written into ``metadata["tolerances"]``).
        invariants: also run the single-implementation invariants on every step.
        progress: called as ``progress(done, total)`` after each step.
    """
    trace = _as_trace(trace)
    against = None if against is None else _as_trace(against, "against")
    for name, value in (("model", model), ("ref_model", ref_model)):
        if value is not None and not callable(value):
            raise InputError(
                f"{name} must be a model (a torch module) or a callable step -> model, got {type(value).__name__}"
            )
    spec = _spec_for(trace, spec)
    policy = as_policy(tolerances)
    if against is not None:
        from grpo_check.compare.trace_vs_trace import compare_traces

        result = Result(metadata=_metadata(trace, spec, policy, source, "trace-vs-trace"))
        result.metadata["against"] = against.manifest.get("source") or against.manifest.get("trainer")
        result.extend(_collapsed(compare_traces(trace, against, spec, policy, progress=progress), trace))
        _add_trace_problems(result, trace)
        _add_unused_overrides(result, policy)
        _add_nothing_checked(result)
        return result
    result = Result(metadata=_metadata(trace, spec, policy, source, "reference"))
    total = len(trace.steps)
    for index, step in enumerate(trace.steps):
        if invariants:
            result.extend(_invariant_findings(step, spec))
        result.extend(
            compare_step(
                _every_row(step) if model is not None or ref_model is not None else step,
                spec,
                tolerances=policy,
                model=_for_step(model, step),
                ref_model=_for_step(ref_model, step),
                diagnose=diagnose,
                trace=trace,
            )
        )
        if progress is not None:
            progress(index + 1, total)
    result.findings[:] = _collapsed(result.findings, trace)
    finish_result(
        result,
        trace,
        spec,
        policy,
        model_at_hand=model is not None,
        ref_model_at_hand=ref_model is not None,
        hows=_recorded_model_hows(trace),
    )
    return result


def finish_result(
    result: Result,
    trace: Trace,
    spec: GRPOSpec,
    policy: TolerancePolicy,
    *,
    model_at_hand: bool,
    ref_model_at_hand: bool | None = None,
    reasons: dict[str, str] | None = None,
    not_applicable: dict[str, str] | None = None,
    hows: dict[str, str] | None = None,
) -> Result:
    """What every comparison against the reference ends with, offline (:func:`compare`) or live
    (``grpo_check.trl.attach``): trends across steps, the run-level warnings and the coverage
    (``metadata["coverage"]``, see :mod:`grpo_check.coverage`)."""
    from grpo_check.coverage import coverage_of

    result.extend(_trend_findings(trace.steps, spec))
    _add_trace_problems(result, trace)
    _add_unused_overrides(result, policy)
    _add_nothing_checked(result)
    result.metadata["coverage"] = coverage_of(
        result.findings,
        beta=spec.beta,
        model_at_hand=model_at_hand,
        ref_model_at_hand=ref_model_at_hand,
        reasons=reasons,
        not_applicable=not_applicable,
        hows=hows,
    )
    return result


def _recorded_model_hows(trace: Trace) -> dict[str, str]:
    """``pass --model <path>`` where the trace recorded the model it was captured with."""
    recorded = trace.manifest.get("model") or {}
    if not isinstance(recorded, dict):
        return {}
    hows: dict[str, str] = {}
    for family, key, option in (
        ("forward_logps", "policy", "--model"),
        ("ref_forward", "ref_model", "--ref-model"),
    ):
        if isinstance(recorded.get(key), str) and recorded[key]:
            note = "; the weights of its first step" if key == "policy" else ""
            hows[family] = f"pass {option} {recorded[key]} (recorded in the trace{note})"
    return hows


def _as_trace(value: Any, name: str = "trace") -> Trace:
    """A Trace, or the trace directory at a path; an ``InputError`` for anything else."""
    if isinstance(value, Trace):
        return value
    if isinstance(value, str | os.PathLike):
        from grpo_check.trace.io import load_trace

        return load_trace(value)
    hint = " (that is one step: use compare_step or run_invariants)" if isinstance(value, TraceStep) else ""
    raise InputError(
        f"{name} must be a grpo_check Trace or the path of a trace directory, got {type(value).__name__}{hint}"
    )


def _as_step(value: Any) -> TraceStep:
    if isinstance(value, TraceStep):
        return value
    raise InputError(
        f"step must be a grpo_check TraceStep (TraceStep(tensors={{...}}, meta={{...}})), got {type(value).__name__}"
    )


def _every_row(step: TraceStep) -> TraceStep:
    """``step`` without the row subset a live run recorded for its forward passes (``meta["forward_rows"]``):
    an offline comparison with a model runs the forward passes on every row."""
    from grpo_check.stepref.row_subset import META_KEY

    if META_KEY not in step.meta:
        return step
    return dataclasses.replace(step, meta={k: v for k, v in step.meta.items() if k != META_KEY})


def _for_step(model: Any, step: TraceStep) -> Any:
    """A model, or a callable ``step -> model`` (the policy at the weights that step's log-probs used)."""
    if model is None:
        return None
    import torch

    if isinstance(model, torch.nn.Module) or not callable(model):
        return model
    return model(step)


def _trend_findings(steps: Iterable[TraceStep], spec: GRPOSpec) -> list[Finding]:
    """Sampler-vs-trainer drift across steps (bug-catalog #1, #26)."""
    series: list[tuple[int | None, float]] = []
    for step in steps:
        if not step.has("logps", "sampler_logps"):
            continue
        mask = step.get("completion_mask")
        if mask is None:
            import torch

            mask = torch.ones_like(step["logps"], dtype=torch.bool)
        trainer_logps = step["old_logps"] if step.has("old_logps") else step["logps"]
        metrics = distribution.sampler_metrics(trainer_logps, step["sampler_logps"], mask)
        if metrics.get("tokens"):
            series.append((step.meta.get("step"), metrics["mean_abs_d"]))
    if len(series) < 3:
        return []
    values = [v for _, v in series]
    slope = distribution.trend(values)
    level = max(sum(values) / len(values), 1e-12)
    drifting = slope > 0 and slope * (len(values) - 1) > max(level, 1e-3)
    return [
        Finding(
            check_id="logps.sampler_trend",
            stage="logps",
            verdict=Verdict.WARN if drifting else Verdict.PASS,
            figure=slope,
            tolerance=max(level, 1e-3) / max(len(values) - 1, 1),
            kind="compare",
            catalog_id="1" if drifting else None,
            likely_cause=(
                "trainer and sampler drift apart over the run: stale sampler weights or cache after weight sync"
                if drifting
                else None
            ),
            fix="check the weight sync to the sampler (and prefix-cache reset) after each optimizer step"
            if drifting
            else None,
            explanation=(
                f"mean |logps − sampler_logps| over {len(values)} steps goes from {values[0]:.3g} to "
                f"{values[-1]:.3g} (slope {slope:.3g} per step)"
            ),
            details={"values": values, "steps": [s for s, _ in series]},
        )
    ]


def _run_warning(check_id: str, explanation: str, **details: Any) -> Finding:
    """A warning about the run itself (stage ``run``), not about one of its tensors."""
    return Finding(
        check_id=check_id,
        stage="run",
        verdict=Verdict.WARN,
        kind="compare",
        explanation=explanation,
        details=details,
    )


def _add_trace_problems(result: Result, trace: Trace) -> None:
    for problem in trace.problems:
        result.add(_run_warning("run.trace_problem", f"trace load problem: {problem}"))


def _collapsed(findings: list[Finding], trace: Trace) -> list[Finding]:
    """As ``check`` does over several steps: "not captured" once, and only for what ran on no step at all."""
    if len(trace.steps) < 2:
        return findings
    from grpo_check.invariants.registry import collapse_not_captured

    return collapse_not_captured(findings)


def _add_nothing_checked(result: Result) -> None:
    """A trace holding none of the tensors any check needs would otherwise read "OK": say that nothing was
    checked."""
    decided = (Verdict.PASS, Verdict.FAIL, Verdict.WARN, Verdict.CONVENTION)
    if any(finding.verdict in decided for finding in result.findings):
        return
    result.add(
        _run_warning(
            "run.nothing_checked",
            "no check could run: the trace holds none of the tensors the checks need (see the not-captured list "
            "for what to record)",
        )
    )


def _add_unused_overrides(result: Result, policy: TolerancePolicy) -> None:
    """A tolerance override that names neither a quantity nor a check of this comparison (a typo, most
    likely) changed nothing: say so, instead of letting the user believe a tolerance was loosened."""
    from grpo_check.compare.tolerances import QUANTITY_DEFAULTS

    check_ids = {finding.check_id for finding in result.findings}
    for key in policy.overrides:
        if key in QUANTITY_DEFAULTS or key in check_ids:
            continue
        near = difflib.get_close_matches(key, sorted(check_ids | set(QUANTITY_DEFAULTS)), n=1)
        result.add(
            _run_warning(
                "run.tolerance_override_unused",
                f"tolerance override {key!r} matched no check and no quantity of this comparison, so it changed "
                f"nothing" + (f" (did you mean {near[0]!r}?)" if near else ""),
                override=key,
            )
        )


__all__ = ["check", "compare", "compare_step", "finish_result", "step_context"]

"""Self-contained repro of a failing comparison: a trace directory with only the offending step(s).

The repro is an ordinary trace (``manifest.json`` with the config and versions, ``steps/``) plus
``result.json`` (the findings about those steps) and ``README.txt`` saying how to replay it::

    grpo-check compare <repro-dir>

Example::

    >>> import tempfile, torch
    >>> from grpo_check.findings import Finding, Result, Where
    >>> from grpo_check.trace.model import Trace, TraceStep
    >>> trace = Trace(manifest={"trainer": "demo"}, steps=[
    ...     TraceStep(tensors={"loss": torch.tensor(float(s))}, meta={"step": s}) for s in range(3)])
    >>> result = Result([Finding("loss.finite", "loss", "fail", where=Where(step=1))])
    >>> failing_step_indices(trace, result)
    [1]
    >>> out = write_repro(trace, None, result, tempfile.mkdtemp())
    >>> sorted(p.name for p in out.iterdir())
    ['README.txt', 'manifest.json', 'result.json', 'steps']
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from grpo_check.findings import Finding, InputError, Result, Verdict
from grpo_check.trace.io import atomic_write_text, save_trace, utc_now
from grpo_check.trace.model import Trace, TraceStep


def _matches(finding: Finding, step: TraceStep) -> bool:
    where = finding.where
    if where.step is None or step.meta.get("step") != where.step:
        return False
    if where.micro_batch is not None and step.meta.get("micro_batch", 0) != where.micro_batch:
        return False
    return not (where.rank is not None and step.meta.get("rank", 0) != where.rank)


def failing_step_indices(trace: Trace, result: Result) -> list[int]:
    """Indices into ``trace.steps`` of the steps a failing finding points at (by step, micro-batch, rank)."""
    failing = [f for f in result.findings if f.verdict is Verdict.FAIL]
    return [i for i, step in enumerate(trace.steps) if any(_matches(f, step) for f in failing)]


def write_repro(
    trace: Trace,
    step_indices: Iterable[int] | None,
    result: Result,
    out_dir: str | os.PathLike[str],
    *,
    source: str | None = None,
) -> Path:
    """Write a trace holding only ``step_indices`` (default: the failing steps) + ``result.json`` + README.

    Returns the directory. An existing repro in ``out_dir`` is replaced.
    """
    indices = failing_step_indices(trace, result) if step_indices is None else sorted(set(step_indices))
    if not indices:
        raise InputError(
            "no step to put in the repro (no failing finding names a recorded step)", field="steps"
        )
    for index in indices:
        if not 0 <= index < len(trace.steps):
            raise InputError(
                f"step index {index} out of range (trace has {len(trace.steps)} steps)", field="steps"
            )
    steps = [trace.steps[i] for i in indices]
    source = source or result.metadata.get("source") or trace.manifest.get("source")
    manifest = dict(trace.manifest)
    manifest["repro"] = {
        "of": source,
        "steps": [_step_label(s) for s in steps],
        "created": utc_now(),
    }
    out = save_trace(Trace(manifest=manifest, steps=steps), out_dir, overwrite=True)
    related = [f for f in result.findings if any(_matches(f, s) for s in steps)]
    repro_result = Result(findings=related or list(result.failures), metadata=dict(result.metadata))
    atomic_write_text(out / "result.json", repro_result.to_json() + "\n")
    atomic_write_text(out / "README.txt", _readme(out, steps, repro_result, manifest, source))
    return out


def _step_label(step: TraceStep) -> str:
    meta = step.meta
    return f"step {meta.get('step')}, micro-batch {meta.get('micro_batch', 0)}, rank {meta.get('rank', 0)}"


def _readme(out: Path, steps: list[TraceStep], result: Result, manifest: dict, source: str | None) -> str:
    versions = manifest.get("versions") or {}
    version_text = ", ".join(f"{k} {v}" for k, v in versions.items() if v) or "unknown"
    lines = [
        "grpo-check repro",
        "================",
        "",
        "This directory is a self-contained grpo-check trace holding only the step(s) where the check failed:",
        *(f"  - {_step_label(s)}" for s in steps),
        "",
        f"Recorded from: {source or 'unknown'} (trainer: {manifest.get('trainer', 'unknown')})",
        "Algorithm configuration: manifest.json, key 'config' (a GRPOSpec); raw trainer config: 'trainer_config'.",
        f"Library versions at recording time: {version_text}",
        "",
        "Replay it with:",
        "",
        f"  grpo-check compare {out}",
        "",
        "(or, after moving the directory: grpo-check compare <dir>).",
        "Render the findings below again with: grpo-check report " + str(out / "result.json"),
        "",
        "Findings that triggered this repro (result.json):",
        "",
    ]
    for finding in result.findings:
        lines += [finding.message(), ""]
    return "\n".join(lines)

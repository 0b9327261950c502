"""Bugs only in loss branches real batches rarely reach, on TRL's real ``GRPOTrainer``; found by probing.

On-policy training (``num_iterations=1``, ``steps_per_generation`` = GAS: TRL passes no old log-probs, so
every ratio is exactly 1) never pushes a ratio below 1 − ε_low or past ``delta``: a loss that drops the lower
clip bound, or ignores ``delta``, trains exactly like a correct one on these batches, and every check on the
captured steps passes. Probing runs the trainer's own loss code on synthetic micro-batches whose ratios sit in
every region, and catches both.

* ``trl-21-lower-clip-dropped``: ``_compute_loss`` clamps the ratio with ``max=1 + ε_high`` only.
* ``trl-21-delta-ignored``: ``_compute_loss`` never caps the unclipped ratio at ``delta``.
* ``ctl-trl-clip-rewritten``: a correct subclass whose loss writes the clip with ``torch.minimum`` /
  ``torch.maximum`` and the ``delta`` cap with ``torch.where``: the same branches, correct.

Each is also a factory for ``grpo-check compare --trainer``::

    grpo-check compare --trainer grpo_check.zoo.mutants_probe:build_lower_clip_mutant --steps 2
    grpo-check compare --trainer grpo_check.zoo.mutants_probe:build_clip_control --steps 2
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from grpo_check.zoo.catalog import Bug, Case, register
from grpo_check.zoo.mutants_trl import TRLRun, source_patched

__all__ = [
    "ON_POLICY",
    "build_clip_control",
    "build_delta_mutant",
    "build_lower_clip_mutant",
    "clip_control_class",
    "delta_mutant_class",
    "lower_clip_mutant_class",
]

ON_POLICY: dict[str, Any] = {"loss_type": "dapo", "epsilon_high": 0.28, "delta": 1.5, "beta": 0.04}
"""Settings of the three cases: dapo with clip-higher and a two-sided bound, on-policy (GAS = S = 1)."""

_CLIP = "coef_2 = torch.clamp(coef_1, 1 - self.epsilon_low, 1 + self.epsilon_high)"
_DELTA = "coef_1 = torch.clamp(coef_1, max=self.args.delta)"


def _patched_loss(name: str, replacements: list[tuple[str, str]]) -> Any:
    from trl import GRPOTrainer

    patched = source_patched(GRPOTrainer._compute_loss, replacements)
    return type(name, (GRPOTrainer,), {"_compute_loss": patched, "__doc__": name})


def lower_clip_mutant_class() -> Any:
    """GRPOTrainer whose clipped ratio has no lower bound (bug-catalog 21)."""
    return _patched_loss(
        "LowerClipDropped", [(_CLIP, "coef_2 = torch.clamp(coef_1, max=1 + self.epsilon_high)")]
    )


def delta_mutant_class() -> Any:
    """GRPOTrainer whose unclipped ratio is never capped at ``delta`` (bug-catalog 21)."""
    return _patched_loss("DeltaIgnored", [(_DELTA, "coef_1 = coef_1")])


def clip_control_class() -> Any:
    """GRPOTrainer whose clip and ``delta`` cap are written differently but are correct."""
    return _patched_loss(
        "ClipRewritten",
        [
            (
                _CLIP,
                "coef_2 = torch.minimum(torch.maximum(coef_1, torch.full_like(coef_1, 1 - self.epsilon_low)), "
                "torch.full_like(coef_1, 1 + self.epsilon_high))",
            ),
            (
                _DELTA,
                "coef_1 = torch.where(coef_1 > self.args.delta, torch.full_like(coef_1, self.args.delta), coef_1)",
            ),
        ],
    )


def _build(trainer_cls: Any, steps: int, workdir: str | None = None) -> Any:
    from grpo_check.demo.matrix import Cell
    from grpo_check.demo.run import build_trainer

    workdir = workdir or tempfile.mkdtemp(prefix="grpo-check-zoo-")
    cell = Cell(name="zoo-probe", overrides=dict(ON_POLICY), steps=steps)
    return build_trainer(cell, workdir, trainer_cls=trainer_cls, dataset_size=16, steps=steps)


def build_lower_clip_mutant(steps: int = 2) -> Any:
    """Factory for ``grpo-check compare --trainer``: the lower-clip mutant on the demo task."""
    return _build(lower_clip_mutant_class(), steps)


def build_delta_mutant(steps: int = 2) -> Any:
    """Factory for ``grpo-check compare --trainer``: the delta mutant on the demo task."""
    return _build(delta_mutant_class(), steps)


def build_clip_control(steps: int = 2) -> Any:
    """Factory for ``grpo-check compare --trainer``: the correct rewritten-clip control on the demo task."""
    return _build(clip_control_class(), steps)


def run_with_probing(trainer_cls: Any, *, steps: int = 2) -> TRLRun:
    """Train with ``attach(live=True)``; probe the trainer's loss code from the last captured micro-batch
    unless the attachment already probed it."""
    from grpo_check.trl import attach
    from grpo_check.trl.probe import probe_trainer

    work = Path(tempfile.mkdtemp(prefix="grpo-check-zoo-"))
    try:
        trainer = _build(trainer_cls, steps, str(work))
        attachment = attach(trainer, live=True)
        trainer.train()
        trace = attachment.close()
        result = attachment.result()
        if not any(f.check_id.startswith("probe.") for f in result.findings):
            micro = [s for s in trace.steps if s.meta.get("scope") == "micro_batch"]
            result.extend(probe_trainer(trainer, micro[-1] if micro else None))
        return TRLRun(trace=trace, result=result)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _case(id: str, title: str, bugs: tuple[Bug, ...], factory: Any, description: str) -> Case:
    return register(
        Case(
            id=id,
            title=title,
            bugs=bugs,
            pipeline="trl",
            make=lambda: run_with_probing(factory()),
            seen_in="verl PR #784; rllm #81" if bugs else "",
            description=description,
            config={**ON_POLICY, "steps": 2},
        )
    )


_case(
    "trl-21-lower-clip-dropped",
    "GRPOTrainer whose clipped ratio has no lower bound (on-policy batches never reach it)",
    (Bug("21", "loss"),),
    lower_clip_mutant_class,
    "torch.clamp(coef_1, max=1 + ε_high): tokens with ρ < 1 − ε_low and A < 0 keep their gradient; found by probing",
)
_case(
    "trl-21-delta-ignored",
    "GRPOTrainer that never caps the unclipped ratio at delta (on-policy batches never reach it)",
    (Bug("21", "loss"),),
    delta_mutant_class,
    "the two-sided bound δ is read from the config but not applied; found by probing",
)
_case(
    "ctl-trl-clip-rewritten",
    "GRPOTrainer whose clip and delta cap are rewritten with minimum/maximum/where (correct)",
    (),
    clip_control_class,
    "the same branches as the two mutants above, correct: probing must stay silent",
)

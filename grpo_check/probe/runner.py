"""Run a loss callable on every probe and hold its loss and ∂loss/∂logps to the float64 reference.

The loss callable is the trainer's own loss code, wrapped by an adapter: ``loss_fn(probe) -> (loss,
logps_leaf)``, where ``logps_leaf`` is the tensor (requiring grad) holding ``probe["logps"]`` that the loss was
computed from, and ``loss`` is the value the trainer would backpropagate for that micro-batch. The runner
reads ∂loss/∂logps with ``torch.autograd.grad`` on that leaf only (no ``.grad`` is written anywhere).

Findings: ``probe.loss`` (stage ``loss``) and ``probe.logps_grad`` (stage ``grad``), one FAIL per probe that
differs, naming the probe, the element (row, token) where the difference is largest and the branch of the
loss that element sits in, with a diagnosis when the trainer's numbers match a known wrong variant
(:mod:`grpo_check.probe.diagnose`); a single PASS per check when every probe agrees, whose details list the
probes run and the branches exercised (coverage).

Example::

    >>> from grpo_check.config import GRPOSpec
    >>> from grpo_check.probe.runner import reference_loss_fn, run_probes
    >>> spec = GRPOSpec(num_generations=4, loss_type="grpo", gradient_accumulation_steps=2)
    >>> outcome = run_probes(reference_loss_fn(spec), spec)
    >>> outcome.summary()
    'probes: 5 run, 0 failed, 14 branches exercised'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

from grpo_check.compare.tolerances import Tolerance, TolerancePolicy, as_policy
from grpo_check.config import GRPOSpec, as_spec
from grpo_check.findings import Finding, InputError, Verdict, Where
from grpo_check.probe._reference import reference_loss, reference_outcome
from grpo_check.probe.batches import ProbeBatch, build_probes
from grpo_check.probe.branches import BRANCHES, branch_masks, branches_among, branches_at
from grpo_check.probe.diagnose import Variant, consistent_choice, matching_variants

LossFn = Callable[[ProbeBatch], tuple[torch.Tensor, torch.Tensor]]

LOSS_CHECK = "probe.loss"
GRAD_CHECK = "probe.logps_grad"


@dataclasses.dataclass
class ProbeOutcome:
    """What probing found: ``findings`` (see the module docstring), the probes run, the branches they
    exercised (ids of :data:`grpo_check.probe.branches.BRANCHES`), and the probes that could not run."""

    findings: list[Finding]
    probes: list[str]
    branches: list[str]
    not_run: dict[str, str] = dataclasses.field(default_factory=dict)
    per_probe: dict[str, list[str]] = dataclasses.field(
        default_factory=dict
    )  # probe -> branches it exercised

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict is Verdict.FAIL]

    @property
    def ok(self) -> bool:
        """Every probe ran and agreed with the reference."""
        return not self.not_run and all(f.verdict is Verdict.PASS for f in self.findings)

    def summary(self) -> str:
        failed = len({f.details.get("probe") for f in self.failures})
        text = f"probes: {len(self.probes)} run, {failed} failed, {len(self.branches)} branches exercised"
        if self.not_run:
            text += f", {len(self.not_run)} could not run"
        return text


# --------------------------------------------------------------------------------------------- loss fns


def reference_loss_fn(spec: GRPOSpec, *, dtype: torch.dtype = torch.float64) -> LossFn:
    """The reference's own loss as a loss callable (in ``dtype``): what a correct trainer's loss computes."""

    def loss_fn(probe: ProbeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = probe.tensors["logps"].detach().to(dtype).clone().requires_grad_(True)
        return reference_loss(leaf, probe, spec), leaf

    return loss_fn


# ------------------------------------------------------------------------------------------- comparison


def _grad_of(loss: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    if not isinstance(leaf, torch.Tensor) or not leaf.requires_grad:
        raise InputError(
            "the loss callable must return the log-probs leaf it computed the loss from, requiring grad"
        )
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise InputError(f"the loss callable must return a scalar loss tensor, got {type(loss).__name__}")
    if not loss.requires_grad:
        return torch.zeros_like(leaf, dtype=torch.float64)
    (grad,) = torch.autograd.grad(loss.reshape(()), leaf, allow_unused=True)
    return torch.zeros_like(leaf, dtype=torch.float64) if grad is None else grad.detach().to(torch.float64)


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _allowed(tolerance: Tolerance, reference: torch.Tensor) -> torch.Tensor:
    return tolerance.atol + tolerance.rtol * reference.abs()


def _mismatch(value: torch.Tensor, reference: torch.Tensor, tolerance: Tolerance) -> torch.Tensor:
    """Elements beyond tolerance (a NaN/inf where the reference is finite always is)."""
    value, reference = value.to(torch.float64).cpu(), reference.to(torch.float64).cpu()
    bad = ~((value - reference).abs() <= _allowed(tolerance, reference))
    same_nonfinite = ~torch.isfinite(reference) & (value == reference)
    return bad & ~same_nonfinite


def _budget(tolerance: Tolerance, count: int) -> int:
    return math.floor(tolerance.outlier_fraction * count)


@dataclasses.dataclass
class _Compared:
    probe: ProbeBatch
    loss: torch.Tensor
    grad: torch.Tensor
    ref_loss: torch.Tensor
    ref_grad: torch.Tensor
    loss_tol: Tolerance
    grad_tol: Tolerance

    @property
    def loss_bad(self) -> bool:
        return bool(_mismatch(self.loss.reshape(()), self.ref_loss.reshape(()), self.loss_tol))

    @property
    def grad_bad(self) -> torch.Tensor:
        return _mismatch(self.grad, self.ref_grad, self.grad_tol)

    def matches(self, outcome: tuple[torch.Tensor, torch.Tensor]) -> bool:
        loss, grad = outcome
        if bool(_mismatch(self.loss.reshape(()), loss.reshape(()), self.loss_tol)):
            return False
        return not bool(_mismatch(self.grad, grad, self.grad_tol).any())


def _labels(ids: list[str]) -> str:
    """The most specific branch with its meaning, the others by id."""
    if not ids:
        return "no branch (padding)"
    more = f" [also {', '.join(ids[1:])}]" if len(ids) > 1 else ""
    return f"{ids[0]} ({BRANCHES[ids[0]]}){more}"


def _diagnosis_fields(variant: Variant | None) -> dict[str, Any]:
    if variant is None:
        return {}
    return {"likely_cause": variant.cause, "fix": variant.fix, "catalog_id": variant.catalog_id}


def _grad_finding(c: _Compared, masks: dict[str, torch.Tensor], variant: Variant | None) -> Finding | None:
    bad = c.grad_bad
    count, total = int(bad.sum()), bad.numel()
    if count == 0:
        return None
    verdict = Verdict.FAIL if count > _budget(c.grad_tol, total) else Verdict.WARN
    error = (c.grad.cpu() - c.ref_grad.cpu()).abs()
    allowed = _allowed(c.grad_tol, c.ref_grad.cpu())
    score = torch.where(bad, torch.nan_to_num(error / allowed, nan=math.inf), torch.zeros_like(error))
    row, token = divmod(int(score.reshape(-1).argmax()), bad.shape[1])
    at = branches_at(masks, row, token)
    among = branches_among(masks, bad)
    value, expected = float(c.grad[row, token]), float(c.ref_grad[row, token])
    explanation = (
        f"probe {c.probe.name!r} ({c.probe.purpose}): ∂loss/∂logps differs from the reference in {count} of "
        f"{total} elements ({100.0 * count / total:.1f}%); greatest difference at row {row}, token {token}: "
        f"trainer {value:.6g}, reference {expected:.6g} (|Δ| {float(error[row, token]):.3g}, allowed "
        f"{float(allowed[row, token]):.3g}); that element is in branch {_labels(at)}; the differing elements are "
        f"in: {', '.join(among) if among else 'padding only'}"
    )
    return Finding(
        check_id=GRAD_CHECK,
        stage="grad",
        verdict=verdict,
        figure=float(error[row, token]),
        tolerance=float(allowed[row, token]),
        where=Where(row=row, token=token),
        explanation=explanation,
        kind="compare",
        details={
            "probe": c.probe.name,
            "branch": at,
            "branches_differing": among,
            "mismatched": count,
            "elements": total,
            "trainer": value,
            "reference": expected,
            "tolerance": c.grad_tol.to_dict(),
            "variant": None if variant is None else variant.id,
        },
        **_diagnosis_fields(variant),
    )


def _loss_finding(c: _Compared, exercised: list[str], variant: Variant | None) -> Finding | None:
    if not c.loss_bad:
        return None
    value, expected = float(c.loss), float(c.ref_loss)
    error = abs(value - expected) if math.isfinite(value) else math.inf
    allowed = float(_allowed(c.loss_tol, c.ref_loss.reshape(()).cpu()))
    return Finding(
        check_id=LOSS_CHECK,
        stage="loss",
        verdict=Verdict.FAIL,
        figure=error,
        tolerance=allowed,
        explanation=(
            f"probe {c.probe.name!r} ({c.probe.purpose}): loss {value:.6g}, reference {expected:.6g} (|Δ| "
            f"{error:.3g}, allowed {allowed:.3g}); the probe exercises {', '.join(exercised)}"
        ),
        kind="compare",
        details={
            "probe": c.probe.name,
            "branches": exercised,
            "trainer": value,
            "reference": expected,
            "tolerance": c.loss_tol.to_dict(),
            "variant": None if variant is None else variant.id,
        },
        **_diagnosis_fields(variant),
    )


def _not_run_finding(probe: ProbeBatch, error: BaseException) -> Finding:
    return Finding(
        check_id=LOSS_CHECK,
        stage="loss",
        verdict=Verdict.INCONCLUSIVE,
        explanation=f"probe {probe.name!r} ({probe.purpose}) could not run: the loss code raised "
        f"{type(error).__name__}: {error}",
        kind="compare",
        details={"probe": probe.name},
    )


def _pass_findings(
    compared: list[_Compared], per_probe: dict[str, list[str]], branches: list[str]
) -> list[Finding]:
    probes = list(per_probe)
    coverage = {"probes": probes, "branches": branches, "per_probe": per_probe}
    out = []
    for check_id, stage, pick in (
        (
            LOSS_CHECK,
            "loss",
            lambda c: (c.loss.reshape(()).to(torch.float64).cpu(), c.ref_loss.reshape(()).cpu(), c.loss_tol),
        ),
        (GRAD_CHECK, "grad", lambda c: (c.grad.cpu(), c.ref_grad.cpu(), c.grad_tol)),
    ):
        worst, allowed_at = 0.0, None
        for c in compared:
            value, reference, tolerance = pick(c)
            error = (value - reference).abs().reshape(-1)
            if error.numel():
                index = int(error.argmax())
                if float(error[index]) >= worst:
                    worst = float(error[index])
                    allowed_at = float(_allowed(tolerance, reference.reshape(-1)[index]))
        what = "loss" if stage == "loss" else "∂loss/∂logps"
        out.append(
            Finding(
                check_id=check_id,
                stage=stage,
                verdict=Verdict.PASS,
                figure=worst,
                tolerance=allowed_at,
                explanation=f"the trainer's {what} matches the reference on {len(probes)} probes "
                f"({len(branches)} branches exercised)",
                kind="compare",
                details=dict(coverage),
            )
        )
    return out


def run_probes(
    loss_fn: LossFn,
    spec: Any,
    batch: Any = None,
    *,
    probes: list[ProbeBatch] | None = None,
    tolerances: Any = None,
    tool_mask: bool = False,
    entropy_quantile: bool = True,
) -> ProbeOutcome:
    """Run ``loss_fn`` on every probe for ``spec`` (built from ``batch``, a captured micro-batch, or from
    scratch; or the given ``probes``) and compare with the reference. See the module docstring."""
    spec = as_spec(spec)
    policy: TolerancePolicy = as_policy(tolerances)
    if probes is None:
        probes = build_probes(spec, batch, tool_mask=tool_mask, entropy_quantile=entropy_quantile)
    findings: list[Finding] = []
    compared: list[_Compared] = []
    ran: list[str] = []
    covered: set[str] = set()
    not_run: dict[str, str] = {}
    per_probe: dict[str, list[str]] = {}
    failing: list[tuple[_Compared, dict[str, torch.Tensor], list[str]]] = []
    for probe in probes:
        ref_loss, ref_grad = reference_outcome(probe, spec)
        try:
            loss, leaf = loss_fn(probe)
            grad = _grad_of(loss, leaf)
        except InputError:
            raise
        except Exception as error:  # the trainer's loss code raised on this probe
            findings.append(_not_run_finding(probe, error))
            not_run[probe.name] = f"{type(error).__name__}: {error}"
            continue
        if tuple(grad.shape) != tuple(ref_grad.shape):
            raise InputError(
                f"the loss callable's log-probs leaf has shape {tuple(grad.shape)}, the probe's log-probs "
                f"{tuple(ref_grad.shape)}"
            )
        dtype = _dtype_name(leaf)
        c = _Compared(
            probe=probe,
            loss=loss.detach().reshape(()).to(torch.float64).cpu(),
            grad=grad.cpu(),
            ref_loss=ref_loss.cpu(),
            ref_grad=ref_grad.cpu(),
            loss_tol=policy.for_check(LOSS_CHECK, "loss", dtype),
            grad_tol=policy.for_check(GRAD_CHECK, "logps_grad", dtype),
        )
        masks = branch_masks(probe, spec)
        exercised = [name for name in BRANCHES if name in masks]
        ran.append(probe.name)
        per_probe[probe.name] = exercised
        covered.update(exercised)
        compared.append(c)
        if c.loss_bad or bool(c.grad_bad.any()):
            failing.append((c, masks, exercised))
    diagnoses = consistent_choice(
        {c.probe.name: matching_variants(c.probe, spec, c.matches) for c, _, _ in failing}
    )
    for c, masks, exercised in failing:
        variant = diagnoses[c.probe.name]
        for finding in (_loss_finding(c, exercised, variant), _grad_finding(c, masks, variant)):
            if finding is not None:
                findings.append(finding)
    branches = [name for name in BRANCHES if name in covered]
    failing_checks = {f.check_id for f in findings if f.verdict in (Verdict.FAIL, Verdict.WARN)}
    passes = [f for f in _pass_findings(compared, per_probe, branches) if f.check_id not in failing_checks]
    if compared:
        findings = passes + findings
    return ProbeOutcome(
        findings=findings, probes=ran, branches=branches, not_run=not_run, per_probe=per_probe
    )

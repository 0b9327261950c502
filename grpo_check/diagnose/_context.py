"""What every signature detector sees (internal): the trainer's step, the stage reference, the findings.

Detectors are small functions ``detect(dx: Diagnosis) -> list[Finding]``; they read tensors through
:class:`Diagnosis`, never print, and name a bug-catalog entry when a signature matches.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from grpo_check._step_cache import bool_mask, cached, finite_mask, host_view, plain
from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, Verdict, Where
from grpo_check.stepref.context import StepContext, as_f64
from grpo_check.trace.model import TraceStep


@dataclasses.dataclass
class Diagnosis:
    """Inputs of the detectors plus small helpers shared by them."""

    step: TraceStep
    spec: GRPOSpec
    reference: dict[str, torch.Tensor]
    findings: list[Finding]
    ctx: StepContext
    downstream: Callable[..., dict[str, torch.Tensor]] | None = None  # (spec, **input overrides) -> tensors
    model_logps: Callable[..., torch.Tensor | None] | None = None  # (temperature) -> logps or None
    kept_mass: Callable[[], torch.Tensor | None] | None = None
    shifted_logps: Callable[[int], torch.Tensor | None] | None = None  # (shift) -> logits misaligned by shift
    # the float64 copies handed out, by (source, name): (the tensor they were made from, the copy); the
    # detectors ask for the same few tensors many times (a step does not change while it is diagnosed)
    _copies: dict[tuple[str, str], tuple[Any, Any]] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _failed: list[Finding] | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    # -- tensors (one float64 copy per tensor in the step cache :func:`~grpo_check.diagnose.diagnose` opens,
    # shared by the detectors and with the comparison: never modify in place) --------------------------------
    def trainer(self, name: str) -> torch.Tensor | None:
        value = self.step.tensors.get(name)  # (the step's dict: no TraceStep.get call per lookup)
        if value is None:
            return None
        hit = self._copies.get(("trainer", name))
        if hit is None or hit[0] is not value:
            hit = self._copies[("trainer", name)] = (value, as_f64(value))
        return hit[1]

    def recorded(self, name: str) -> torch.Tensor | None:
        """The step's tensor in its own dtype, detached (the float64 copy of a value that is not a tensor): for
        tests that hold in any float dtype (NaN, ±inf, zero), without a float64 copy."""
        value = self.step.tensors.get(name)
        if value is None or not isinstance(value, torch.Tensor):
            return None if value is None else as_f64(value)
        return plain(value)

    def ref(self, name: str) -> torch.Tensor | None:
        value = self.reference.get(name)
        if value is None:
            return None
        hit = self._copies.get(("ref", name))
        if hit is None or hit[0] is not value:
            hit = self._copies[("ref", name)] = (value, as_f64(value))
        return hit[1]

    @property
    def mask(self) -> torch.Tensor | None:
        m = self.step.tensors.get("completion_mask")
        if m is None:
            return None
        hit = self._copies.get(("mask", ""))
        if hit is None or hit[0] is not m:
            # the step's shared bool view of the mask (the comparison's token mask is the same tensor)
            hit = self._copies[("mask", "")] = (m, bool_mask(m))
        return hit[1]

    @property
    def group_index(self) -> torch.Tensor | None:
        gi = self.step.get("group_index")
        if gi is not None:
            return gi.reshape(-1).long()
        for name in ("rewards_per_func", "rewards", "advantages", "completion_ids"):
            t = self.step.get(name)
            if t is not None:
                rows = t.shape[0]
                if rows % self.spec.num_generations == 0:
                    return torch.div(torch.arange(rows), self.spec.num_generations, rounding_mode="floor")
                return None
        return None

    # -- findings ------------------------------------------------------------------------------------
    def _failed_compare(self) -> list[Finding]:
        """The compare findings that failed or warned when diagnosis began (``findings`` does not grow while
        the detectors run; a verdict only moves from FAIL/WARN to CONVENTION): most steps have none. Worked
        out on the first call (a plain attribute: no cached_property descriptor and lock per diagnosis)."""
        failed = self._failed
        if failed is None:
            failing = (Verdict.FAIL, Verdict.WARN)  # the verdict asked first: most findings pass
            failed = self._failed = [f for f in self.findings if f.verdict in failing and f.kind == "compare"]
        return failed

    def failing(self, *, stage: str | None = None, prefix: str | None = None) -> list[Finding]:
        failed = self._failed if self._failed is not None else self._failed_compare()
        if not failed:  # every comparison passed (most steps): nothing to filter
            return []
        out = []
        for f in failed:
            if f.verdict not in (Verdict.FAIL, Verdict.WARN):  # turned into a CONVENTION by a diagnosis
                continue
            if stage is not None and f.stage != stage:
                continue
            if prefix is not None and not f.check_id.startswith(prefix):
                continue
            out.append(f)
        return out

    def compared(self, check_id: str) -> Finding | None:
        for f in self.findings:
            if f.check_id == check_id and f.kind == "compare":
                return f
        return None

    def where(self, row: int | None = None, token: int | None = None, prompt: int | None = None) -> Where:
        return self.ctx.where(row=row, token=token, prompt=prompt)

    def finding(
        self,
        *,
        check_id: str,
        stage: str,
        catalog_id: str | None,
        explanation: str,
        likely_cause: str | None,
        fix: str | None,
        verdict: Verdict = Verdict.FAIL,
        figure: float | None = None,
        tolerance: float | None = None,
        where: Where | None = None,
        details: Mapping[str, Any] | None = None,
        attach_to: list[Finding] | None = None,
    ) -> Finding:
        """Build a diagnosis finding and fill likely_cause/fix/catalog_id of the compare findings it explains."""
        out = Finding(
            check_id=check_id,
            stage=stage,
            verdict=verdict,
            figure=figure,
            tolerance=tolerance,
            where=where or self.where(),
            explanation=explanation,
            likely_cause=likely_cause,
            fix=fix,
            catalog_id=catalog_id,
            kind="diagnosis",
            details=dict(details or {}),
        )
        for target in attach_to or []:
            if target.likely_cause is None:
                target.likely_cause = likely_cause
                target.fix = target.fix or fix
                target.catalog_id = target.catalog_id or catalog_id
            target.details.setdefault("diagnoses", []).append(check_id)
            if verdict is Verdict.CONVENTION and target.verdict in (Verdict.FAIL, Verdict.WARN):
                target.verdict = Verdict.CONVENTION
                target.explanation = (
                    f"{target.explanation} — classified as a convention difference: {explanation}"
                )
        return out


def _comparable(
    got: torch.Tensor | None, want: torch.Tensor | None, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``got``, ``want`` as broadcast float64 tensors and the selection where both are finite and ``mask``
    holds; ``None`` when either is missing or the shapes cannot be aligned."""
    if got is None or want is None:
        return None
    got, want = as_f64(got), as_f64(want)
    try:
        if got.shape != want.shape:
            got, want = torch.broadcast_tensors(got, want)
            sel = torch.isfinite(got) & torch.isfinite(want)
        else:  # the finiteness masks the step cache shares with the invariants
            sel = finite_mask(got) & finite_mask(want)
        if mask is not None:
            mask = mask if mask.dtype is torch.bool else mask.bool()
            sel = sel & (mask if mask.shape == sel.shape else mask.expand_as(got))
    except RuntimeError:
        return None
    return got, want, sel


# the step-cache key under which grpo_check.compare.distribution.sampler_metrics records what it found on the
# trainer's and the sampler's log-probs (its AGREEMENT; spelled out: the checks sit below the comparison)
_AGREEMENT = "sampler_agreement"

_CLOSE_MEMO: contextvars.ContextVar[dict[tuple[Any, ...], tuple[bool, tuple[Any, ...]]] | None] = (
    contextvars.ContextVar("grpo_check_diagnose_close_memo", default=None)
)


class shared_comparisons:
    """Within one ``diagnose`` call, :func:`close` on the same tensor objects is evaluated once (several
    detectors first ask whether the trainer's log-probs already match the reference's). (A class rather than
    a generator context manager: it is entered once per checked step, and this costs less.)"""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _CLOSE_MEMO.set({})

    def __exit__(self, *exc: object) -> None:
        _CLOSE_MEMO.reset(self._token)


def close(
    got: torch.Tensor | None,
    want: torch.Tensor | None,
    mask: torch.Tensor | None = None,
    *,
    rtol: float = 1e-3,
    atol: float = 1e-6,
    negated: bool = False,
) -> bool:
    """True when ``got`` ≈ ``want`` (``-want`` if ``negated``) on ``mask`` (finite elements; relative to the
    scale of ``want``). ``negated`` gives the same answer as passing ``-want``, without the negated copy."""
    memo = _CLOSE_MEMO.get()
    if memo is None:
        return _close(got, want, mask, rtol=rtol, atol=atol, negated=negated)
    key = (id(got), id(want), id(mask), rtol, atol, negated)
    hit = memo.get(key)
    if hit is None:  # the memo holds the tensors, so their ids cannot be reused while it is open
        hit = memo[key] = (_close(got, want, mask, rtol=rtol, atol=atol, negated=negated), (got, want, mask))
    return hit[0]


def _close(
    got: torch.Tensor | None,
    want: torch.Tensor | None,
    mask: torch.Tensor | None,
    *,
    rtol: float,
    atol: float,
    negated: bool = False,
) -> bool:
    if not negated and got is not None and want is not None:
        # the same two tensors on the same selection as the sampler metrics of this step: the largest |got − want|
        # and |want| they found decide it (every selected |got − want| ≤ bound ⟺ the largest is: none is NaN)
        known = cached((_AGREEMENT, (id(got), id(want), id(mask))), _unknown)
        if known is not None:  # (the entry holds the three tensors: the ids are theirs)
            tokens, largest, scale = known[0]
            return tokens > 0 and largest <= atol + rtol * max(scale, 1e-12)
    host = _host_comparable(got, want, mask)
    if host is not None:  # a small step: the same IEEE operations in numpy, at less overhead
        return _close_numpy(*host, rtol=rtol, atol=atol, negated=negated)
    aligned = _comparable(got, want, mask)
    if aligned is None:
        return False
    got, want, sel = aligned
    if not bool(sel.any()):
        return False
    scale = float(torch.where(sel, want.abs(), 0.0).max())  # no boolean-index copies: this runs per detector
    # got − (−want) is got + want exactly (IEEE subtraction adds the negation), and |−want| = |want|
    error = (got + want) if negated else (got - want)
    return bool(torch.where(sel, error.abs() <= atol + rtol * max(scale, 1e-12), True).all())


def _unknown() -> None:
    return None


def _host_comparable(
    got: torch.Tensor | None, want: torch.Tensor | None, mask: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`_comparable` as numpy views (the selection: both finite, and ``mask``) for small CPU tensors of one
    shape (and a mask of that shape, or none); ``None`` otherwise (then :func:`_comparable` decides)."""
    if got is None or want is None:
        return None
    got, want = as_f64(got), as_f64(want)
    if got.shape != want.shape or (mask is not None and mask.shape != got.shape):
        return None
    host_got, host_want = host_view(got), host_view(want)
    if host_got is None or host_want is None:
        return None
    selected = np.isfinite(host_got) & np.isfinite(host_want)
    if mask is not None:
        host_mask = host_view(mask if mask.dtype is torch.bool else mask.bool())
        if host_mask is None:
            return None
        selected &= host_mask
    return host_got, host_want, selected


def _close_numpy(
    got: np.ndarray, want: np.ndarray, sel: np.ndarray, *, rtol: float, atol: float, negated: bool
) -> bool:
    """:func:`_close`'s test on numpy views (the ufunc reductions that ndarray's any/max/all call, without
    their Python wrappers). The reductions over the selection take it as ``where=`` instead of a selected copy:
    the largest |want| from 0.0 up is the maximum over the copy with 0.0 off the selection (|x| ≥ 0), and the
    conjunction over the selection is the one over the copy with True off it."""
    if not _any_of(sel, axis=None):
        return False
    scale = float(_max_of(np.abs(want), axis=None, where=sel, initial=0.0))
    # inf − inf off the selection is NaN, as in torch: silently
    with np.errstate(invalid="ignore", over="ignore"):
        error = (got + want) if negated else (got - want)
    return bool(_all_of(np.abs(error) <= atol + rtol * max(scale, 1e-12), axis=None, where=sel))


_any_of, _all_of, _max_of = np.logical_or.reduce, np.logical_and.reduce, np.maximum.reduce


def constant_factor(
    got: torch.Tensor | None, want: torch.Tensor | None, mask: torch.Tensor | None = None, rtol: float = 1e-3
) -> float | None:
    """k such that got ≈ k · want on the mask (least squares, residual ≤ rtol·scale), else None."""
    aligned = _comparable(got, want, mask)
    if aligned is None:
        return None
    got, want, sel = aligned
    a, b = got[sel], want[sel]
    denom = float((b * b).sum())
    if a.numel() == 0 or denom == 0.0:
        return None
    k = float((a * b).sum()) / denom
    scale = float(b.abs().max()) * max(abs(k), 1e-12)
    if float((a - k * b).abs().max()) > rtol * scale + 1e-12:
        return None
    return k


def worst(error: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[int | None, int | None, float]:
    """(row, token, value) of the largest finite |error| on the mask."""
    e = as_f64(error).abs()
    sel = torch.isfinite(e)
    if mask is not None:
        with contextlib.suppress(RuntimeError):
            sel = sel & mask.bool().expand_as(e)
    e = torch.where(sel, e, torch.full_like(e, -1.0))
    if e.numel() == 0:  # an empty step: no element to point at
        return None, None, float("nan")
    flat = int(torch.argmax(e.reshape(-1)))
    value = float(e.reshape(-1)[flat])
    if e.dim() == 0:
        return None, None, value
    if e.dim() == 1:
        return flat, None, value
    return flat // e.shape[-1], flat % e.shape[-1], value

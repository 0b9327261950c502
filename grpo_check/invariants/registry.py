"""The registry of invariant checks: stable ids, declared inputs, and the runner.

A check is a small function ``(step, spec, *, tolerance=None) -> Outcome | list[Outcome]`` registered with
:func:`register`. The registry wraps it into a :class:`Check` whose ``run`` returns ``list[Finding]``:

* the inputs it declares are checked first: if none of its alternatives is fully captured the finding is
  ``NOT_CAPTURED`` (never a failure);
* an exception while evaluating (e.g. mismatched shapes) becomes ``INCONCLUSIVE`` with the error text;
* the outcome's row/token are turned into GRPO coordinates (step, prompt = group_index value, generation =
  index of the row within its group, token, token id).

Inputs are named with the canonical tensor names of :data:`grpo_check.trace.model.TENSOR_STAGE`, plus two
pseudo names: ``completion_text`` (decoded text on the step) and ``meta.<key>`` (a step-metadata key).

Example::

    >>> from grpo_check.invariants import REGISTRY, get
    >>> get("logps.nonpositive").stage
    'logps'
    >>> "advantages.group_sum_zero" in REGISTRY
    True
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch

from grpo_check._kinds import is_nonnegative_number
from grpo_check._step_cache import _current_memo, cached, inference_guard, step_cache
from grpo_check.config import GRPOSpec, spec_for_step
from grpo_check.findings import STAGES, Finding, InputError, Verdict, Where
from grpo_check.invariants._common import Outcome
from grpo_check.trace.model import TENSOR_STAGE, TraceStep

CheckFunction = Callable[..., "Outcome | list[Outcome]"]


@dataclasses.dataclass(frozen=True)
class Check:
    """One registered invariant.

    Attributes:
        id: stable id ``"<stage>.<name>"``.
        stage: pipeline stage.
        requires: alternatives of inputs; the check runs if every name of at least one alternative is present.
        catalog_ids: bug-catalog entries this check's failure points at (the first is the default).
        description: one line: what it asserts.
        tolerance: how the default tolerance is derived (text, for docs and reports).
        likely_cause: default likely cause when it fails.
        fix: default fix when it fails.
        function: the check function.
    """

    id: str
    stage: str
    requires: tuple[tuple[str, ...], ...]
    catalog_ids: tuple[str, ...]
    description: str
    tolerance: str
    likely_cause: str
    fix: str
    function: CheckFunction = dataclasses.field(repr=False, compare=False)
    _lacking_memo: dict[frozenset[str], tuple[tuple[str, ...], str] | None] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """By present names: ``None`` when the check can run, else what ``_lacking(requires, present)`` names
    and the not-captured explanation for it."""

    @property
    def name(self) -> str:
        return self.id.split(".", 1)[1]

    @functools.cached_property
    def _needs(self) -> str:
        """``requires`` as text: alternatives joined by "or", names within one by "+"."""
        return " or ".join("+".join(alternative) for alternative in self.requires)

    def missing(self, step: TraceStep) -> list[str] | None:
        """``None`` when some alternative of ``requires`` is fully present, else the names missing from the
        alternative that lacks fewest."""
        if not self.requires:
            return None
        lacking = _lacking(self.requires, _present_names(step))
        return None if lacking is None else list(lacking)

    def run(
        self, step: TraceStep, spec: GRPOSpec | None = None, *, tolerance: float | None = None
    ) -> list[Finding]:
        """Evaluate on one step; always returns at least one finding."""
        return self._run(
            step, spec_for_step(spec, step.meta), tolerance, _present_names(step), _step_where(step)
        )

    __call__ = run

    def _run(
        self,
        step: TraceStep,
        spec: GRPOSpec | None,
        tolerance: float | None,
        present: frozenset[str],
        base: Where,
    ) -> list[Finding]:
        """:meth:`run` given the step's spec (``spec_for_step`` applied), present names and coordinates
        (``run_invariants`` works them out once per step)."""
        findings: list[Finding] = []
        self._run_into(findings, step, spec, tolerance, present, base)
        return findings

    def _run_into(
        self,
        findings: list[Finding],
        step: TraceStep,
        spec: GRPOSpec | None,
        tolerance: float | None,
        present: frozenset[str],
        base: Where,
        not_captured: list[str] | None = None,
    ) -> None:
        """:meth:`_run`, appending its findings to ``findings`` (no list per check); given ``not_captured``,
        a check whose inputs are absent appends its id there instead of a ``NOT_CAPTURED`` finding."""
        memo = self._lacking_memo  # by present names (a frozenset hashes once; the requires tuple each time)
        missing = memo.get(present, _UNKNOWN)
        if missing is _UNKNOWN:
            if len(memo) >= 64:
                memo.clear()
            lacking = _lacking(self.requires, present) if self.requires else None
            missing = memo[present] = (
                None
                if lacking is None
                else (lacking, f"not captured: needs {self._needs} (missing {', '.join(lacking)})")
            )
        if missing is not None:
            if not_captured is not None:
                not_captured.append(self.id)
                return
            lacking, explanation = missing
            findings.append(
                Finding(  # positional, in Finding's field order
                    self.id,
                    self.stage,
                    Verdict.NOT_CAPTURED,
                    None,
                    None,
                    base,
                    explanation + _misnamed_hint(step, lacking),
                    None,
                    None,
                    None,
                    "invariant",
                    {"missing": list(lacking)},
                )
            )
            return
        try:
            outcome = self.function(step, spec, tolerance=tolerance)
        except _CHECK_ERRORS as error:
            outcome = _evaluation_error(error)
        if type(outcome) is Outcome:
            verdict = outcome.verdict
            if verdict is _PASS and outcome.row is None and outcome.token is None:
                # self._finding(step, outcome, base), inlined for a pass at the step's coordinates (most
                # outcomes of a correct step): no cause, fix or catalog entry
                figure, tolerance = outcome.figure, outcome.tolerance
                findings.append(
                    Finding(  # positional, in Finding's field order
                        self.id,
                        self.stage,
                        verdict,
                        None if figure is None else float(figure),
                        None if tolerance is None else float(tolerance),
                        base,
                        outcome.explanation,
                        None,
                        None,
                        None,
                        "invariant",
                        outcome.details,
                    )
                )
                return
        self._deliver(findings, step, outcome, base, not_captured)

    def _deliver(
        self,
        findings: list[Finding],
        step: TraceStep,
        outcome: Outcome | list[Outcome],
        base: Where,
        not_captured: list[str] | None,
    ) -> None:
        """Append the findings of the outcome(s) of one evaluated check (given ``not_captured``, a
        ``NOT_CAPTURED`` outcome appends the check's id there instead)."""
        if not_captured is None:
            if type(outcome) is Outcome:
                findings.append(self._finding(step, outcome, base))
            elif isinstance(outcome, list):
                findings.extend([self._finding(step, o, base) for o in outcome])
            else:
                findings.append(self._finding(step, outcome, base))
            return
        for finding in (
            [self._finding(step, o, base) for o in outcome]
            if isinstance(outcome, list)
            else (self._finding(step, outcome, base),)
        ):  # a check may find its inputs absent itself (a NOT_CAPTURED outcome): counted likewise
            if finding.verdict is Verdict.NOT_CAPTURED:
                not_captured.append(self.id)
            else:
                findings.append(finding)

    def _finding(self, step: TraceStep, outcome: Outcome, base: Where) -> Finding:
        """The registry's finding for one outcome: the check's id, stage and defaults, the outcome's
        verdict and figures, GRPO coordinates of its row and token."""
        verdict = outcome.verdict
        if verdict is Verdict.PASS or verdict is Verdict.INCONCLUSIVE:
            likely_cause = fix = catalog_id = None
        elif verdict is Verdict.CONVENTION:  # a declared difference: only what the outcome says
            likely_cause, fix, catalog_id = outcome.likely_cause, outcome.fix, outcome.catalog_id
        elif (
            verdict is Verdict.FAIL or verdict is Verdict.WARN
        ):  # the check's defaults fill what it leaves out
            likely_cause = outcome.likely_cause or self.likely_cause
            fix = outcome.fix or self.fix
            catalog_id = outcome.catalog_id or (self.catalog_ids[0] if self.catalog_ids else None)
        else:
            likely_cause = fix = catalog_id = None
        figure, tolerance, row, token = outcome.figure, outcome.tolerance, outcome.row, outcome.token
        # positional, in Finding's field order (a keyword call of a dozen arguments costs twice as much)
        return Finding(
            self.id,
            self.stage,
            verdict,
            None if figure is None else float(figure),
            None if tolerance is None else float(tolerance),
            base if row is None and token is None else where_in_step(step, row, token),
            outcome.explanation,
            likely_cause,
            fix,
            catalog_id,
            "invariant",
            outcome.details,
        )


_UNKNOWN = object()
_PASS = Verdict.PASS
# what a check raises on inputs that do not fit together: an inconclusive outcome, not a crash
_CHECK_ERRORS = (RuntimeError, ValueError, LookupError, TypeError)


def _evaluation_error(error: Exception) -> Outcome:
    """The outcome of a check that raised one of :data:`_CHECK_ERRORS` while evaluating."""
    return Outcome(
        Verdict.INCONCLUSIVE,
        f"could not evaluate ({type(error).__name__}: {error}); check tensor shapes against "
        "grpo_check/trace/model.py",
        details={"evaluation_error": type(error).__name__},
    )


@functools.lru_cache(maxsize=4096)
def _lacking(requires: tuple[tuple[str, ...], ...], present: frozenset[str]) -> tuple[str, ...] | None:
    """``Check.missing`` for one set of present names (a step's checks meet few distinct sets: memoised)."""
    best: tuple[str, ...] | None = None
    for alternative in requires:
        lacking = tuple(name for name in alternative if name not in present)
        if not lacking:
            return None
        if best is None or len(lacking) < len(best):
            best = lacking
    return best or ()


def _present_names(step: TraceStep) -> frozenset[str]:
    """What ``requires`` can name that ``step`` holds: its tensors, ``completion_text`` and ``meta.<key>``
    (``None`` values count as absent). Built once per step while a step cache is open."""
    return cached(("present_names", id(step)), lambda: _collect_present_names(step))


def _collect_present_names(step: TraceStep) -> frozenset[str]:
    # the step's names as they come (tensor names, then meta keys, then whether there is text): steps of a
    # run hold the same ones in the same order, and this tuple finds their set without building it again
    names = [name for name, tensor in step.tensors.items() if tensor is not None]
    names.append(_APART)  # (tensor names and meta keys apart: either may be any string)
    for key, value in step.meta.items():  # (a loop: a generator costs a call per name)
        if value is not None:
            names.append(key)
    names.append(step.completion_text is not None)
    listed = tuple(names)
    present = _PRESENT_BY_LISTING.get(listed)
    if present is None:
        if len(_PRESENT_BY_LISTING) >= 256:
            _PRESENT_BY_LISTING.clear()
        present = _PRESENT_BY_LISTING[listed] = _present_set(listed)
    return present


def _present_set(listed: tuple[Any, ...]) -> frozenset[str]:
    """The present names of a step listed as :func:`_collect_present_names` lists them: its tensors,
    ``meta.<key>`` and ``completion_text``, as one object per distinct set (each check's memo by present
    names then finds it by identity instead of comparing two sets element by element)."""
    split = listed.index(_APART)
    names = set(listed[:split])
    names.update(f"meta.{key}" for key in listed[split + 1 : -1])
    if listed[-1]:
        names.add("completion_text")
    present = frozenset(names)
    interned = _PRESENT_SETS.get(present)
    if interned is None:
        if len(_PRESENT_SETS) >= 256:
            _PRESENT_SETS.clear()
        interned = _PRESENT_SETS[present] = present
    return interned


_APART = object()
_PRESENT_SETS: dict[frozenset[str], frozenset[str]] = {}
_PRESENT_BY_LISTING: dict[tuple[Any, ...], frozenset[str]] = {}


def _step_where(step: TraceStep) -> Where:
    """``where_in_step(step, None, None)``: the step's coordinates alone, one object per step in a cache."""
    return cached(("where_base", id(step)), lambda: Where(*_where_base(step.meta)))


def where_in_step(step: TraceStep, row: int | None, token: int | None) -> Where:
    """GRPO coordinates of (row, token) in ``step``: prompt, generation within the group, token id."""
    meta = step.meta
    if row is None and token is None:  # Where is frozen: one object serves every finding of the step
        return cached(("where_base", id(step)), lambda: Where(*_where_base(meta)))
    prompt = generation = token_id = None
    group_tensor = step.get("group_index")
    if group_tensor is None:
        group_tensor = step.get("extra.group_index")  # adapters keep partial-group indices there
    if row is not None and group_tensor is not None:
        group_index = group_tensor.detach().reshape(-1)
        if 0 <= row < group_index.numel():
            prompt = int(group_index[row])
            generation = int((group_index[:row] == group_index[row]).sum())
    if row is not None and token is not None and step.has("completion_ids"):
        ids = step["completion_ids"]
        if ids.dim() == 2 and 0 <= row < ids.shape[0] and 0 <= token < ids.shape[1]:
            token_id = int(ids[row, token])
    base = cached(("where_base", id(step)), lambda: Where(*_where_base(meta)))
    return Where(
        step=base.step,
        micro_batch=base.micro_batch,
        rank=base.rank,
        prompt=prompt,
        generation=generation,
        row=row,
        token=token,
        token_id=token_id,
    )


def _where_base(meta: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
    return (
        _int_or_none(meta.get("step")),
        _int_or_none(meta.get("micro_batch")),
        _int_or_none(meta.get("rank")),
    )


def _int_or_none(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return int(value.item())
    return int(value)


REGISTRY: dict[str, Check] = {}
"""All registered checks by id, in registration (= pipeline) order."""


def register(
    id: str,
    *,
    requires: Iterable[Iterable[str]] | Iterable[str],
    description: str,
    tolerance: str,
    likely_cause: str,
    fix: str,
    catalog_ids: Iterable[str] = (),
) -> Callable[[CheckFunction], Check]:
    """Decorator registering a check function under a stable id ``"<stage>.<name>"``.

    ``requires`` is either one tuple of names (all needed) or a tuple of alternatives.
    """
    stage, _, name = id.partition(".")
    if stage not in STAGES or not name.isidentifier():
        raise ValueError(
            f"an invariant id is '<stage>.<name>' with stage one of {', '.join(STAGES)} and name a Python "
            f"identifier, got {id!r}"
        )
    items = list(requires)
    if items and isinstance(items[0], str):
        alternatives: tuple[tuple[str, ...], ...] = (tuple(items),)  # type: ignore[arg-type]
    else:
        alternatives = tuple(tuple(alt) for alt in items)

    def decorate(function: CheckFunction) -> Check:
        if id in REGISTRY:
            raise ValueError(f"duplicate invariant id {id!r}")
        check = Check(
            id=id,
            stage=stage,
            requires=alternatives,
            catalog_ids=tuple(catalog_ids),
            description=description,
            tolerance=tolerance,
            likely_cause=likely_cause,
            fix=fix,
            function=function,
        )
        REGISTRY[id] = check
        return check

    return decorate


def get(check_id: str) -> Check:
    """The registered check with this id (``KeyError`` listing the known ids otherwise)."""
    try:
        return REGISTRY[check_id]
    except KeyError:
        raise KeyError(f"unknown invariant {check_id!r}; known: {', '.join(REGISTRY)}") from None


def run_invariants(
    step_or_trace: Any,
    spec: GRPOSpec | None = None,
    checks: Iterable[str] | None = None,
    *,
    tolerances: dict[str, float] | None = None,
    stages: Iterable[str] | None = None,
) -> list[Finding]:
    """Run all (or the selected) invariants on a :class:`TraceStep` or every step of a :class:`Trace`.

    Args:
        step_or_trace: a ``TraceStep``, a ``Trace``, or an iterable of ``TraceStep``.
        spec: the algorithm configuration; for a ``Trace`` defaults to ``trace.spec()``. Without one, G is
            inferred from the group sizes and the other settings take ``GRPOSpec()`` defaults.
        checks: ids (or id prefixes ending in ``.``, e.g. ``"advantages."``) to run; all when ``None``.
        tolerances: per-check-id tolerance overrides.
        stages: only checks of these stages.

    Returns:
        One list of findings, in step order then registry order. ``NOT_CAPTURED`` findings mark checks
        whose tensors were not recorded; over several steps, only once per check and only for checks that
        ran on no step at all.
    """
    from grpo_check.trace.model import Trace

    if isinstance(step_or_trace, Trace):
        steps = list(step_or_trace.steps)
        if spec is None:
            spec = step_or_trace.spec()
    elif isinstance(step_or_trace, TraceStep):
        steps = [step_or_trace]
    else:
        try:
            steps = list(step_or_trace)
        except TypeError:
            steps = [step_or_trace]
        if not all(isinstance(step, TraceStep) for step in steps):
            raise InputError(
                "run_invariants takes a TraceStep, a Trace or a list of TraceSteps, got "
                f"{type(step_or_trace).__name__}"
            )
    selected = select([checks] if isinstance(checks, str) else checks, stages)
    tolerances = tolerances or {}
    if tolerances:
        _check_tolerances(tolerances)
    findings: list[Finding] = []
    for step in steps:
        _run_step_into(findings, step, spec, selected, tolerances, None)
    if len(steps) > 1:
        findings = collapse_not_captured(findings)
    return findings


def run_step_into(
    findings: list[Finding], not_captured: list[str], step: TraceStep, spec: GRPOSpec | None = None
) -> None:
    """``run_invariants(step, spec)`` on one step, appending to ``findings`` the findings of the checks that
    ran and to ``not_captured`` the ids of those whose inputs the step lacks (no ``NOT_CAPTURED`` findings
    are made: a live check counts them only)."""
    _run_step_into(findings, step, spec, list(REGISTRY.values()), None, not_captured)


def _run_step_into(
    findings: list[Finding],
    step: TraceStep,
    spec: GRPOSpec | None,
    selected: list[Check],
    tolerances: dict[str, float] | None,
    not_captured: list[str] | None,
) -> None:
    # float64 copies, masks and ratios computed once per step and shared by the checks; inference mode
    # (no autograd bookkeeping: checks only read) takes about a sixth off each small tensor operation
    with step_cache(step), inference_guard(True):
        present, base = _present_names(step), _step_where(step)
        # a coefficient the trainer moves per step (adaptive entropy)
        step_spec = spec_for_step(spec, step.meta)
        for check in selected:
            tolerance = tolerances.get(check.id) if tolerances else None
            check._run_into(findings, step, step_spec, tolerance, present, base, not_captured)


def _misnamed_hint(step: TraceStep, lacking: Iterable[str]) -> str:
    """``; the step holds 'advantage': did you mean 'advantages'?`` when a tensor under a non-canonical name
    is one or two letters from a missing one (a hand-built TraceStep; the Recorder refuses such names)."""
    memo = _current_memo()  # once per step in a cache (cached(...) inlined: once per uncaptured check)
    if memo is None:
        odd = _odd_names(step)
    else:
        key = ("odd_names", id(step))
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = (_odd_names(step), key)
        odd = hit[0]
    if not odd:
        return ""
    for name in odd:
        near = difflib.get_close_matches(name, list(lacking), n=1, cutoff=0.75)
        if near:
            return f"; the step holds {name!r}: did you mean {near[0]!r}?"
    return ""


def _odd_names(step: TraceStep) -> list[str]:
    """The step's tensor names that are neither canonical nor ``extra.*``."""
    return [name for name in step.tensors if name not in TENSOR_STAGE and not name.startswith("extra.")]


def _check_tolerances(tolerances: dict[str, float]) -> None:
    for check_id, value in tolerances.items():
        if check_id not in REGISTRY:
            near = difflib.get_close_matches(str(check_id), list(REGISTRY), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise InputError(f"tolerances: unknown invariant {check_id!r}{hint}")
        if not is_nonnegative_number(value):
            raise InputError(f"tolerances: {check_id!r} must be a number >= 0, got {value!r}")


def collapse_not_captured(findings: list[Finding]) -> list[Finding]:
    """Over several steps, a check's NOT_CAPTURED findings are noise when it ran on another step (e.g.
    advantages captured once per generation batch, gradients once per micro-batch): keep them only for
    checks that ran nowhere, once."""
    ran = {f.check_id for f in findings if f.verdict is not Verdict.NOT_CAPTURED}
    kept: list[Finding] = []
    reported: set[str] = set()
    for finding in findings:
        if finding.verdict is Verdict.NOT_CAPTURED:
            if finding.check_id in ran or finding.check_id in reported:
                continue
            reported.add(finding.check_id)
        kept.append(finding)
    return kept


def select(checks: Iterable[str] | None = None, stages: Iterable[str] | None = None) -> list[Check]:
    """Registered checks matching ids / id prefixes (``"grad."``) and stages, in registry order."""
    chosen = list(REGISTRY.values())
    if checks is not None:
        wanted = list(checks)
        for item in wanted:
            if not item.endswith(".") and item not in REGISTRY:
                get(item)  # raises with the list of known ids
        chosen = [
            c for c in chosen if any(c.id == w or (w.endswith(".") and c.id.startswith(w)) for w in wanted)
        ]
    if stages is not None:
        stage_set = {stages} if isinstance(stages, str) else set(stages)
        unknown = sorted(stage_set - set(STAGES))
        if unknown:
            raise InputError(f"unknown stage(s) {', '.join(map(repr, unknown))}; stages: {', '.join(STAGES)}")
        chosen = [c for c in chosen if c.stage in stage_set]
    return chosen

"""The zoo's registry: every mutant (a buggy pipeline) and every control (the same pipeline, correct).

A :class:`Case` says what the pipeline is, how to run it, and — for a mutant — which bug(s) it carries:
the bug-catalog entry (``reference/bug-catalog.md``, e.g. ``"S1"``, ``"6"``), the stage the bug lives in,
and the catalog ids a correct diagnosis may name. These declarations are made from the bug, not from what the
detectors happen to report: the scorecard holds grpo-check to them.

The mutant and control modules register their cases here; :mod:`grpo_check.zoo.cases` loads them all.

Example::

    >>> from grpo_check.zoo.cases import all_cases
    >>> cases = all_cases()
    >>> sum(c.is_mutant for c in cases) >= 25
    True
    >>> s1 = next(c for c in cases if c.id == "S1-logsoftmax-sign")
    >>> (s1.bugs[0].catalog_id, s1.bugs[0].stage)
    ('S1', 'logps')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from grpo_check.findings import STAGES

__all__ = ["Bug", "Case", "control", "mutant", "register", "registered"]


@dataclasses.dataclass(frozen=True)
class Bug:
    """One planted bug: its catalog entry, the stage it lives in, and other entries that name the same fault.

    ``also`` lists catalog ids that describe the same fault from another angle (e.g. a stale sampler is both
    "#1 trainer and sampler log-probs differ" and "#26 stale state after weight sync"); a diagnosis naming any
    of them counts as correct. ``keywords`` are for bugs the catalog has no number for: a diagnosis whose
    ``likely_cause`` contains one of them (case-insensitive) counts as naming the bug.
    """

    catalog_id: str | None
    stage: str
    also: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; use one of {', '.join(STAGES)}")

    @property
    def accepted_ids(self) -> tuple[str, ...]:
        return tuple(i for i in (self.catalog_id, *self.also) if i is not None)

    def label(self) -> str:
        return f"#{self.catalog_id}" if self.catalog_id else "/".join(self.keywords[:1]) or "?"


@dataclasses.dataclass(frozen=True)
class Case:
    """One zoo entry. ``bugs`` is empty for a control.

    ``make`` builds the pipeline run: a zero-argument callable returning an object with ``trace``,
    ``policy_at(step)`` and ``ref_model`` (see :class:`grpo_check.zoo.loop.LoopRun`).
    """

    id: str
    title: str
    bugs: tuple[Bug, ...]
    pipeline: str  # "loop" (hand-written loop + Recorder) or "trl" (patched TRL GRPOTrainer)
    make: Callable[[], Any]
    seen_in: str = ""
    description: str = ""
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def is_mutant(self) -> bool:
        return bool(self.bugs)

    @property
    def kind(self) -> str:
        return "mutant" if self.is_mutant else "control"

    @property
    def first_stage(self) -> str | None:
        """The earliest stage among the planted bugs: where the first divergence should be."""
        if not self.bugs:
            return None
        return min((b.stage for b in self.bugs), key=STAGES.index)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "title": self.title,
            "pipeline": self.pipeline,
            "seen_in": self.seen_in,
            "bugs": [dataclasses.asdict(b) for b in self.bugs],
            "config": self.config,
        }


_REGISTRY: dict[str, Case] = {}


def register(case: Case) -> Case:
    if case.id in _REGISTRY:
        raise ValueError(f"duplicate zoo case id {case.id!r}")
    _REGISTRY[case.id] = case
    return case


def _loop_case(
    loop_class: type,
    *,
    id: str,
    title: str,
    bugs: tuple[Bug, ...],
    config: Any,
    seen_in: str,
    description: str,
) -> Case:
    def make(loop_class=loop_class, config=config):
        return loop_class(config).run()

    return register(
        Case(
            id=id,
            title=title,
            bugs=bugs,
            pipeline=getattr(loop_class, "pipeline", "loop"),
            make=make,
            seen_in=seen_in,
            description=description or (loop_class.__doc__ or "").strip().split("\n\n")[0],
            config=_config_summary(config),
        )
    )


def _config_summary(config: Any) -> dict[str, Any]:
    """The fields of a LoopConfig that differ from the defaults (what makes this case special)."""
    if not dataclasses.is_dataclass(config):
        return {}
    default = type(config)()
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    }


def mutant(
    catalog_id: str | None,
    stage: str,
    *,
    id: str,
    title: str,
    config: Any = None,
    seen_in: str = "",
    also: tuple[str, ...] = (),
    keywords: tuple[str, ...] = (),
    extra_bugs: tuple[Bug, ...] = (),
    description: str = "",
) -> Callable[[type], type]:
    """Class decorator: register a loop subclass as a mutant carrying one bug (plus ``extra_bugs``)."""

    def decorate(loop_class: type) -> type:
        from grpo_check.zoo.loop import LoopConfig

        bug = Bug(catalog_id, stage, also=also, keywords=keywords)
        _loop_case(
            loop_class,
            id=id,
            title=title,
            bugs=(bug, *extra_bugs),
            config=config if config is not None else LoopConfig(),
            seen_in=seen_in,
            description=description,
        )
        return loop_class

    return decorate


def control(
    *, id: str, title: str, config: Any, loop_class: type | None = None, description: str = ""
) -> Case:
    """Register a correct pipeline (the base loop unless ``loop_class`` is given) as a control."""
    from grpo_check.zoo.loop import GRPOLoop

    return _loop_case(
        loop_class or GRPOLoop,
        id=id,
        title=title,
        bugs=(),
        config=config,
        seen_in="",
        description=description,
    )


def registered() -> list[Case]:
    """The cases registered so far, in registration order (:func:`grpo_check.zoo.cases.all_cases` loads every
    module that registers some)."""
    return list(_REGISTRY.values())


def __getattr__(name: str) -> Any:
    """``all_cases`` and ``select_cases`` live in :mod:`grpo_check.zoo.cases` (which loads every module that
    registers here); they stay importable from here, loaded on first use."""
    if name in ("all_cases", "select_cases"):
        import importlib

        return getattr(importlib.import_module("grpo_check.zoo.cases"), name)
    raise AttributeError(f"module 'grpo_check.zoo.catalog' has no attribute {name!r}")

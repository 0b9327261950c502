"""Probe TRL's ``GRPOTrainer`` loss code with synthetic micro-batches (no model forward, no training effect).

:func:`probe_trainer` turns the trainer into a loss callable for :mod:`grpo_check.probe`: for each probe it
builds the ``inputs`` dict TRL's loss reads, replaces the per-token log-prob helper *on the instance* by one
that returns the probe's log-probs leaf (and entropies) without running the model, calls the trainer's own
``compute_loss`` (which runs ``_compute_loss`` on TRL 1.x, and any override in a subclass), applies the scale
the trainer's ``training_step`` applies before ``backward``, and restores everything.

It does not change training: every torch RNG state is restored, no parameter is touched (∂loss/∂logps is read
with ``torch.autograd.grad`` on the leaf only, so no ``.grad`` is written), no optimizer step runs, and the
trainer state ``_compute_loss`` writes (``_metrics``, the adaptive entropy controller, the current
accumulation window, the model's train/eval flags) is put back as it was.

The TRL internals it relies on differ between release lines; each difference is one small function below
(:func:`loss_era`, :func:`trl_inputs`, :func:`backward_scale`, :func:`effective_spec`).

Example::

    from grpo_check.trl.probe import probe_trainer
    findings = probe_trainer(trainer)               # before or during training, once per configuration
    findings = probe_trainer(trainer, step)         # from a captured micro-batch (a TraceStep)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
from collections.abc import Iterator
from typing import Any

import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, InputError
from grpo_check.probe.batches import ProbeBatch, build_probes
from grpo_check.probe.runner import ProbeOutcome, run_probes
from grpo_check.trl.capture import preserved_rng
from grpo_check.trl.spec import spec_from_trl

__all__ = [
    "LossEra",
    "NotProbeable",
    "ProbeOnce",
    "backward_scale",
    "effective_spec",
    "loss_era",
    "probe_key",
    "probe_trainer",
    "probe_trainer_outcome",
    "reads_old_logps",
    "trainer_loss_fn",
    "trl_inputs",
]

_MISSING = object()
# trainer attributes ``_compute_loss`` may write (TRL 1.x adaptive entropy controller); restored after probing
_STATE_ATTRIBUTES = (
    "entropy_coef",
    "_entropy_window_stats",
    "_last_world_entropy",
    "current_gradient_accumulation_steps",
)


@dataclasses.dataclass(frozen=True)
class LossEra:
    """How one TRL release line's loss code is driven.

    ``helper``: the per-token log-prob helper the loss calls; ``helper_outputs``: what it returns
    (1: logps — 0.17 ``_get_per_token_logps``; 2: (logps, entropies) — 0.18/0.19; 3: (logps, entropies,
    aux_loss) — 1.x); ``tool_mask``: the loss multiplies ``inputs["tool_mask"]`` into its mask;
    ``num_items_in_inputs``: dapo/cispo/vespo normalise by ``inputs["num_items_in_batch"]``;
    ``old_logps_only_with_iterations``: the loss reads ``inputs["old_per_token_logps"]`` only when
    ``num_iterations > 1`` and uses ``per_token_logps.detach()`` otherwise (0.17);
    ``ref_logps_in_loss``: the loss computes the reference model's log-probs itself, with the same helper
    under ``torch.no_grad()`` (0.18), instead of reading ``inputs["ref_per_token_logps"]``.
    """

    helper: str
    helper_outputs: int
    tool_mask: bool
    num_items_in_inputs: bool
    old_logps_only_with_iterations: bool = False
    ref_logps_in_loss: bool = False


def _trl_definition(trainer: Any, name: str) -> Any:
    """The method ``name`` as TRL defines it (the first class in the MRO from a ``trl`` module)."""
    for cls in type(trainer).__mro__:
        if cls.__module__.startswith("trl.") and name in vars(cls):
            return vars(cls)[name]
    return getattr(type(trainer), name, None)


def _source(function: Any) -> str:
    try:
        return inspect.getsource(inspect.unwrap(function))
    except (OSError, TypeError):
        return ""


class NotProbeable(RuntimeError):
    """The trainer's loss does not call the per-token log-prob helper, so synthetic log-probs cannot reach it."""


_ERAS: dict[type, LossEra] = {}


def loss_era(trainer: Any) -> LossEra:
    """The :class:`LossEra` of ``trainer``'s TRL release, read from TRL's own method definitions (once per
    trainer class)."""
    cls = type(trainer)
    if cls not in _ERAS:
        _ERAS[cls] = _read_era(trainer)
    return _ERAS[cls]


def _read_era(trainer: Any) -> LossEra:
    if hasattr(trainer, "_get_per_token_logps_and_entropies"):
        helper = "_get_per_token_logps_and_entropies"
        outputs = 3 if "aux_loss" in _source(_trl_definition(trainer, helper)) else 2
    elif hasattr(trainer, "_get_per_token_logps"):
        helper, outputs = "_get_per_token_logps", 1
    else:
        raise InputError(
            f"{type(trainer).__name__} has no per-token log-prob helper (_get_per_token_logps_and_entropies or "
            "_get_per_token_logps): its loss code cannot be probed",
            field="trainer",
        )
    loss_source = _source(
        _trl_definition(trainer, "_compute_loss") or _trl_definition(trainer, "compute_loss")
    )
    return LossEra(
        helper=helper,
        helper_outputs=outputs,
        tool_mask='"tool_mask"' in loss_source,
        num_items_in_inputs='inputs["num_items_in_batch"]' in loss_source,
        old_logps_only_with_iterations="if self.num_iterations > 1 else per_token_logps.detach()"
        in loss_source,
        ref_logps_in_loss="ref_per_token_logps = self._get_per_token_logps" in loss_source,
    )


def reads_old_logps(trainer: Any, era: LossEra) -> bool:
    """Whether the loss uses the old log-probs it is given (else every ratio is 1: on-policy probes only)."""
    return not era.old_logps_only_with_iterations or int(getattr(trainer, "num_iterations", 1)) > 1


def effective_spec(trainer: Any) -> GRPOSpec:
    """The loss configuration the trainer applies now: :func:`spec_from_trl`, with the entropy bonus the
    adaptive controller currently applies (TRL 1.x: the coefficient, or 0 while the entropy is above target)."""
    spec = spec_from_trl(trainer)
    if getattr(trainer, "_entropy_bonus_enabled", False) and getattr(trainer, "use_adaptive_entropy", False):
        target = getattr(trainer.args, "entropy_target", None)
        last = getattr(trainer, "_last_world_entropy", None)
        if target is not None and last is not None and last > target:
            spec = spec.replace(entropy_coef=0.0)
    return spec


def backward_scale(trainer: Any, window: int) -> float:
    """The factor transformers' ``Trainer.training_step`` applies to what ``compute_loss`` returns before
    ``backward``: 1 when the loss is already scaled for gradient accumulation (TRL 1.x declares
    ``loss_is_scaled_for_ga = True``), else 1/K (TRL 0.x, whose loss is divided by K by the Trainer)."""
    flag = getattr(trainer, "loss_is_scaled_for_ga", None)
    if flag is None:
        # transformers < 5.19 reads these two attributes instead (TRL 1.x sets them from the flag above);
        # GRPO batches carry no labels, so the Trainer's num_items_in_batch is None
        flag = getattr(trainer, "compute_loss_func", None) is not None
    return 1.0 if flag else 1.0 / max(int(window), 1)


def trl_inputs(trainer: Any, probe: ProbeBatch, era: LossEra) -> dict[str, Any]:
    """The ``inputs`` dict TRL's loss reads, from a probe (on the trainer's device)."""
    device = trainer.accelerator.device
    t = probe.tensors

    def put(name: str) -> torch.Tensor:
        return t[name].detach().to(device)

    inputs: dict[str, Any] = {
        "prompt_ids": put("prompt_ids"),
        "prompt_mask": put("prompt_mask"),
        "completion_ids": put("completion_ids"),
        "completion_mask": put("completion_mask"),
        "advantages": put("advantages"),
        "old_per_token_logps": None,  # 0.18/0.19 index this key: None = on-policy, as TRL itself passes it
        "ref_per_token_logps": None,
    }
    for canonical, key in (
        ("old_logps", "old_per_token_logps"),
        ("ref_logps", "ref_per_token_logps"),
        ("sampler_logps", "sampling_per_token_logps"),
        ("sampler_is_ratio", "importance_sampling_ratio"),
    ):
        if canonical in t:
            inputs[key] = put(canonical)
    if (
        inputs["old_per_token_logps"] is None
        and era.old_logps_only_with_iterations
        and reads_old_logps(trainer, era)
    ):
        inputs["old_per_token_logps"] = put("logps")  # 0.17 with num_iterations > 1 always passes them: ρ = 1
    if "tool_mask" in t:
        if not era.tool_mask:
            raise InputError("this TRL release's loss takes no tool_mask; build the probes without one")
        inputs["tool_mask"] = put("tool_mask")
    if era.num_items_in_inputs:
        inputs["num_items_in_batch"] = torch.tensor(float(probe.meta["num_items_in_batch"]), device=device)
    return inputs


def _fake_helper(leaf: torch.Tensor, entropies: torch.Tensor, era: LossEra, ref: torch.Tensor | None) -> Any:
    """A per-token log-prob helper that returns the probe's leaf (and entropies) without a forward pass; where
    the loss scores the reference model itself (``era.ref_logps_in_loss``), calls without grad get ``ref``."""

    def helper(
        model: Any, input_ids: Any, attention_mask: Any, logits_to_keep: Any, *args: Any, **kwargs: Any
    ):
        helper.calls += 1
        if int(logits_to_keep) != leaf.shape[1]:
            raise RuntimeError(
                f"the loss asked for {logits_to_keep} completion positions, the probe has {leaf.shape[1]}"
            )
        if era.ref_logps_in_loss and ref is not None and not torch.is_grad_enabled():
            return ref if era.helper_outputs == 1 else (ref, None, None)[: era.helper_outputs]
        if era.helper_outputs == 1:
            return leaf
        wants_entropy = bool(kwargs.get("compute_entropy", len(args) >= 2 and bool(args[1])))
        out_entropies = entropies if wants_entropy else None
        if era.helper_outputs == 2:
            return leaf, out_entropies
        aux = torch.zeros((), device=leaf.device) if kwargs.get("compute_aux_loss") else None
        return leaf, out_entropies, aux

    helper.calls = 0  # type: ignore[attr-defined]
    return helper


def _module_flags(model: Any) -> list[tuple[Any, bool]]:
    modules = model.modules() if isinstance(model, torch.nn.Module) else []
    return [(module, module.training) for module in modules]


@contextlib.contextmanager
def _probing(trainer: Any, era: LossEra, helper: Any, window: int) -> Iterator[None]:
    """Install the fake helper and the probe's accumulation window; restore the trainer exactly after."""
    from grpo_check.compare.stages import set_training

    saved_helper = trainer.__dict__.get(era.helper, _MISSING)
    saved_state = {name: trainer.__dict__.get(name, _MISSING) for name in _STATE_ATTRIBUTES}
    saved_state = {
        k: (copy.deepcopy(v) if isinstance(v, torch.Tensor) else v) for k, v in saved_state.items()
    }
    metrics = getattr(trainer, "_metrics", None)
    saved_metrics = copy.deepcopy(metrics) if metrics is not None else None
    flags = _module_flags(trainer.model)
    try:
        setattr(trainer, era.helper, helper)
        trainer.current_gradient_accumulation_steps = window
        set_training(trainer.model, True)  # the loss takes its "train" branch (accumulation scaling)
        with preserved_rng(), torch.enable_grad():
            yield
    finally:
        if saved_helper is _MISSING:
            trainer.__dict__.pop(era.helper, None)
        else:
            setattr(trainer, era.helper, saved_helper)
        for name, value in saved_state.items():
            if value is _MISSING:
                trainer.__dict__.pop(name, None)
            else:
                setattr(trainer, name, value)
        if metrics is not None:
            for mode, values in metrics.items():  # in place: other code may hold the same dicts
                values.clear()
                values.update(saved_metrics[mode])
        for module, training in flags:
            object.__setattr__(module, "training", training)


def trainer_loss_fn(trainer: Any, era: LossEra | None = None) -> Any:
    """``trainer``'s own loss code as a :mod:`grpo_check.probe` loss callable ``(probe) -> (loss, leaf)``.

    ``loss`` is what the trainer backpropagates for that micro-batch: ``compute_loss(model, inputs)`` times
    :func:`backward_scale`.
    """
    era = era or loss_era(trainer)
    device = trainer.accelerator.device

    def loss_fn(probe: ProbeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = probe.tensors["logps"].detach().to(device).clone().requires_grad_(True)
        entropies = probe.tensors["entropies"].detach().to(device)
        window = int(probe.meta.get("gradient_accumulation_steps") or 1)
        inputs = trl_inputs(trainer, probe, era)
        ref = probe.tensors.get("ref_logps")
        ref = None if ref is None else ref.detach().to(device)
        context = getattr(trainer, "compute_loss_context_manager", contextlib.nullcontext)
        helper = _fake_helper(leaf, entropies, era, ref)
        with (
            _probing(trainer, era, helper, window),
            context(),
        ):  # as training_step calls it (autocast included)
            loss = trainer.compute_loss(trainer.model, inputs)
            loss = loss * backward_scale(trainer, window)
        if not helper.calls:
            raise NotProbeable(
                f"{type(trainer).__name__}'s loss does not take its log-probs from {era.helper}: it cannot be fed "
                "synthetic log-probs (the probe is left to the comparison of captured steps)"
            )
        return loss, leaf

    return loss_fn


def _uses_tools(trainer: Any, step: Any) -> bool:
    tensors = getattr(step, "tensors", step) if step is not None else {}
    return bool(getattr(trainer, "tools", None)) or (hasattr(tensors, "keys") and "tool_mask" in tensors)


def probe_trainer_outcome(trainer: Any, step: Any = None, *, tolerances: Any = None) -> ProbeOutcome:
    """:func:`probe_trainer` returning the whole :class:`~grpo_check.probe.runner.ProbeOutcome` (findings,
    probes run, branches exercised)."""
    era = loss_era(trainer)
    spec = effective_spec(trainer)
    processes = int(getattr(trainer.accelerator, "num_processes", 1) or 1)
    probes = build_probes(
        spec,
        step,
        tool_mask=era.tool_mask and _uses_tools(trainer, step),
        # several processes: TRL takes the entropy quantile over every rank, which one rank's reference cannot
        entropy_quantile=processes == 1,
    )
    if not reads_old_logps(trainer, era):  # this configuration's loss never sees a ratio ≠ 1
        probes = [p.replace(tensors={"old_logps": None}) for p in probes]
    return run_probes(trainer_loss_fn(trainer, era), spec, probes=probes, tolerances=tolerances)


def probe_trainer(trainer: Any, step: Any = None, *, tolerances: Any = None) -> list[Finding]:
    """Probe ``trainer``'s loss code; findings in stages ``loss`` (``probe.loss``) and ``grad``
    (``probe.logps_grad``). ``step``: a captured micro-batch (``TraceStep``) to build the probes from, or
    None (from scratch). With several processes, call it on every rank (TRL's loss gathers metrics)."""
    return probe_trainer_outcome(trainer, step, tolerances=tolerances).findings


def probe_key(trainer: Any, step: Any = None) -> str:
    """A key that changes exactly when probing could give a different answer (the loss configuration and the
    accumulation window): probe once per key."""
    spec = effective_spec(trainer)
    meta = dict(getattr(step, "meta", {}) or {})
    window = meta.get("gradient_accumulation_steps") or spec.gradient_accumulation_steps
    return json.dumps(
        {"spec": spec.to_dict(), "window": int(window), "class": type(trainer).__qualname__}, sort_keys=True
    )


class ProbeOnce:
    """Probe a trainer once per configuration: ``prober(trainer, step)`` returns :func:`probe_trainer`'s
    findings the first time a :func:`probe_key` is seen and ``[]`` after (for ``attach`` and ``compare``)."""

    def __init__(self, *, tolerances: Any = None) -> None:
        self.tolerances = tolerances
        self.seen: set[str] = set()

    def __call__(self, trainer: Any, step: Any = None) -> list[Finding]:
        key = probe_key(trainer, step)
        if key in self.seen:
            return []
        self.seen.add(key)
        return probe_trainer(trainer, step, tolerances=self.tolerances)

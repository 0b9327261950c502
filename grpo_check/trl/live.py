"""Live running of :class:`~grpo_check.trl.capture.Attachment`: accumulation windows and the live comparison.

Each captured step is compared with the float64 reference while training goes on. Micro-batches of one
gradient-accumulation window share one forward pass of the policy (the weights do not move inside a window);
the reference model scores each generation batch once. Checking never stops training and never consumes
randomness (:func:`preserved_rng`).

With ``forward_rows="subset"`` (the default) those forward passes run on a chosen subset of each window's rows
(:mod:`grpo_check.stepref.row_subset`: every prompt padding, truncated and EOS-ended rows, every completion-length
bucket, every group, every micro-batch, anomalous rows; at least a quarter of the rows), recorded in each step's
``meta["forward_rows"]``; every row keeps the other checks. ``forward_rows="all"`` runs them on every row.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

from grpo_check.findings import Finding, Verdict
from grpo_check.trace.model import TraceStep
from grpo_check.trl.recording import cpu_copy as _cpu
from grpo_check.trl.rowtag import generation_rows

log = logging.getLogger("grpo_check.trl")

NO_MODEL = object()  # policy_model sentinel: compare without the policy's forward pass
_NO_MODEL = NO_MODEL

FORWARD_ROWS = ("subset", "all")
"""The values of ``attach(..., forward_rows=...)``: which rows the reference's forward passes run on."""


def forward_rows_setting(value: object) -> str:
    """``value`` when it is one of :data:`FORWARD_ROWS`, else an :class:`InputError` in one line."""
    if value not in FORWARD_ROWS:
        from grpo_check.findings import InputError

        raise InputError(f"forward_rows must be 'subset' or 'all', got {value!r}")
    return str(value)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Save and restore every torch RNG state (CPU and CUDA) around code that must not consume randomness."""
    import torch

    cpu_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.random.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


class PlainForward:
    """The model's *class* forward, outside autocast: the reference's own float32 forward pass.

    TRL patches the instance's ``forward`` (its fused log-prob head) and accelerate wraps it in autocast under
    mixed precision; calling the class's ``forward`` bypasses both, so the reference's log-probs never go
    through the code path under test. Every other attribute (``config``, ``training``, ``eval()``, ...) is the
    model's own.
    """

    def __init__(self, model: Any) -> None:
        self._model = model

    @property
    def wrapped_module(self) -> Any:
        """The model itself (for ``grpo_check.compare.stages.set_training``)."""
        return self._model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        device_type = getattr(getattr(self._model, "device", None), "type", "cpu")
        with torch.autocast(device_type=device_type, enabled=False):
            return type(self._model).forward(self._model, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class LiveChecking:
    """Compares captured steps live: accumulation windows, the models' forward passes, metrics for the logs."""

    trainer: Any
    spec: Any
    trace: Any
    _sink: Any  # grpo_check.trace.io.TraceWriter streaming to out_dir, or None
    forward_rows: str = "subset"

    def _due(self, global_step: int) -> bool:
        return self.schedule.due(global_step)

    def _agree_interval(self, interval: int) -> int:
        """The largest interval any rank asks for: every rank checks the same steps (a forward on a sharded
        model is a collective). One process: ``interval`` itself."""
        if self.num_processes == 1:
            return interval
        import torch

        accelerator = self.trainer.accelerator
        asked = accelerator.gather(torch.tensor([interval], device=accelerator.device))
        return int(asked.max())

    def _finish_step(self, step: TraceStep, extra_findings: list[Finding] | None = None) -> None:
        if self.keep_steps or self.out_dir is not None:
            self.trace.steps.append(step)
        if self._sink is not None:  # on disk now, complete or absent: a killed run keeps what it captured
            self._sink.append_step(step)
        if not self.live:
            return
        self._probe_once(step)
        if self._batches_policy_forward(step):
            # compared when its gradient-accumulation window closes, with one policy forward for the window
            self._window.append((step, extra_findings or [], int(self.trainer.state.global_step)))
            return
        self._check_live(step, extra_findings or [])

    def _probe_once(self, step: TraceStep) -> None:
        """Probe the trainer's own loss code (:mod:`grpo_check.trl.probe`) from this captured micro-batch, once per
        configuration: synthetic micro-batches drive every branch of the configured loss through the trainer's
        loss code and are held to the reference. Training is unchanged (RNG, parameters and trainer state are
        restored); a failure is noted in the coverage, never raised."""
        if not self.probes or step.meta.get("scope") != "micro_batch":
            return
        try:
            from grpo_check.trl.probe import probe_key, probe_trainer
        except ImportError as error:  # pragma: no cover - probing ships with grpo-check
            self.coverage_notes["probes"] = f"probing is not available ({error})"
            return
        try:
            key = probe_key(self.trainer, step)
            if key in self._probed:
                return
            self._probed.add(key)
            findings = probe_trainer(self.trainer, step, tolerances=self.tolerances)
        except Exception as error:  # never stop training
            log.warning("grpo-check: probing the loss code failed: %s: %s", type(error).__name__, error)
            self.coverage_notes["probes"] = f"probing failed ({type(error).__name__}: {error})"
            return
        self.findings.extend(findings)
        self._accumulate_metrics(step, findings)

    def _choose_forward_rows(self, steps: list[TraceStep]) -> None:
        """Record in each micro-batch's meta the rows the reference's forward passes run on: one subset chosen
        over the rows of ``steps`` (the micro-batches of one window: every micro-batch keeps some rows), see
        :mod:`grpo_check.stepref.row_subset`. Nothing with ``forward_rows="all"`` (every row)."""
        from grpo_check.stepref.row_subset import META_KEY, RowSubset, row_labels, select_rows

        if self.forward_rows == "all" or not self.recompute_logps:
            return
        names = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
        steps = [
            s
            for s in steps
            if s.meta.get("scope") == "micro_batch" and META_KEY not in s.meta and s.has(*names)
        ]
        if not steps:
            return
        eos_ids = self._eos_token_ids()
        labels = []
        for part, s in enumerate(steps):
            labels += row_labels(
                s["prompt_mask"],
                s["completion_mask"],
                completion_ids=s["completion_ids"],
                eos_token_ids=eos_ids,
                group_index=s.get("group_index", s.get("extra.group_index")),
                parts=[part] * int(s["completion_ids"].shape[0]) if len(steps) > 1 else None,
                logps=s.get("logps"),
                old_logps=s.get("old_logps"),
            )
        chosen = select_rows(labels)
        reasons = dict(zip(chosen.rows, chosen.reasons, strict=True))
        start = 0
        for s in steps:
            size = int(s["completion_ids"].shape[0])
            rows = tuple(r - start for r in chosen.rows if start <= r < start + size)
            s.meta[META_KEY] = RowSubset(
                rows=rows, total=size, reasons=tuple(reasons[r + start] for r in rows), covers=chosen.covers
            ).to_meta()
            start += size

    def _check_live(self, step: TraceStep, extra_findings: list[Finding], policy_model: Any = None) -> None:
        try:
            self._choose_forward_rows([step])
            if self.background and self._submit_background(step, extra_findings, policy_model):
                return
            findings = [*self._compare_live(step, policy_model=policy_model), *extra_findings]
        except Exception as error:  # a failure of checking must never stop the user's training run
            self._live_check_failed(step, error)
            findings = list(extra_findings)
        self.findings.extend(findings)
        self._accumulate_metrics(step, findings)

    def _live_check_failed(self, step: TraceStep, error: Exception) -> None:
        where = f"step {step.meta.get('step')}, {step.meta.get('scope')}"
        log.warning("grpo-check: live check failed at %s: %s: %s", where, type(error).__name__, error)
        self._note(f"live check failed ({type(error).__name__}: {error}); training went on unchecked there")

    def _note(self, problem: str) -> None:
        if problem not in self.live_problems:
            self.live_problems.append(problem)

    def _batches_policy_forward(self, step: TraceStep) -> bool:
        """Whether this micro-batch waits for the end of its accumulation window (see :meth:`_flush_window`)."""
        return (
            self.recompute_logps
            and self._gas() > 1
            and step.meta.get("scope") == "micro_batch"
            and step.has("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
        )

    def _flush_window(self) -> None:
        """Compare the micro-batches of one gradient-accumulation window, with ONE forward pass of the policy.

        The weights do not change inside the window (the optimizer steps after its last micro-batch), so the
        policy's log-probs for every row of the window come from a single forward over the window's rows
        (their prompt and completion widths agree: TRL splits one padded generation batch); each micro-batch
        then takes its rows. A window the optimizer closed before this ran (an uneven last window) is compared
        without the policy forward: its weights are gone.
        """
        window, self._window = self._window, []
        if not window:
            return
        current = int(self.trainer.state.global_step)
        models: list[Any] | None = None
        if any(step_at != current for _, _, step_at in window):
            self._note(
                "policy log-probs not recomputed for a gradient-accumulation window the optimizer closed "
                "before it was checked (uneven last window)"
            )
            models = [_NO_MODEL] * len(window)
        else:
            try:
                self._choose_forward_rows([step for step, _, _ in window])
            except Exception as error:  # never stop training; the forward passes then run on every row
                self._live_check_failed(window[0][0], error)
        if models is None and self.background and self._window_handed_off(window):
            return
        if models is None:
            try:
                self._prefetch_ref_logps([step for step, _, _ in window])
                models = self._window_policy_logps([step for step, _, _ in window])
            except Exception as error:  # as in _check_live: never stop training; compare without the forward
                self._live_check_failed(window[0][0], error)
                models = [_NO_MODEL] * len(window)
        for (step, extra, _), model in zip(window, models, strict=True):
            self._check_live(step, extra, policy_model=model)

    def _window_policy_logps(self, steps: list[TraceStep]) -> list[Any]:
        """``KnownLogps`` per step from one policy forward over all their rows (the plain model per step when
        their widths differ)."""
        import torch

        from grpo_check.compare.stages import window_known_logps

        model = self._plain_forward(self.trainer.model)
        with preserved_rng(), torch.no_grad():
            return window_known_logps(model, steps, self.spec.temperature)

    def _compare_live(self, step: TraceStep, policy_model: Any = None) -> list[Finding]:
        import torch

        from grpo_check.trl.background import check_captured_step

        with preserved_rng(), torch.no_grad():
            model, ref_model = self._models_for(step, policy_model)
            was_training = None if model is None else model.training
            try:
                findings, not_captured = check_captured_step(
                    step,
                    self.spec,
                    model=model,
                    ref_model=ref_model,
                    tolerances=self.tolerances,
                    invariants=self.invariants,
                )
            finally:
                if model is not None and was_training is not None and model.training != was_training:
                    model.train(was_training)
        self._count_not_captured(not_captured)
        return findings

    def _models_for(self, step: TraceStep, policy_model: Any) -> tuple[Any, Any]:
        """(policy, reference model) the reference compares this step with: plain forwards of the models, or
        ``KnownLogps`` where their log-probs for these rows were already computed; ``None`` where none."""
        if not (
            self.recompute_logps and step.meta.get("scope") == "micro_batch" and step.has("completion_ids")
        ):
            return None, None
        model = self._plain_forward(self.trainer.model) if policy_model is None else policy_model
        model = None if model is _NO_MODEL else model
        ref_model = None
        if getattr(self.trainer, "ref_model", None) is not None:
            ref_model = self._ref_model_for(step, self._plain_forward(self.trainer.ref_model))
        return model, ref_model

    def _count_not_captured(self, check_ids: list[str]) -> None:
        for check_id in check_ids:
            self.skipped_invariants[check_id] = self.skipped_invariants.get(check_id, 0) + 1

    def _ref_model_for(self, step: TraceStep, ref_model: PlainForward) -> Any:
        """The reference model for one micro-batch: its log-probs for these rows, taken from one forward pass
        over this rank's whole generation batch (``KnownLogps``), or the model itself when the rows cannot be
        matched to that batch (then the micro-batch gets its own forward pass).

        The reference model is frozen, so a row scores the same in every micro-batch; TRL scores the whole
        generation batch at once too. One forward per generation batch instead of one per micro-batch.
        """

        from grpo_check.compare.stages import KnownLogps
        from grpo_check.stepref.forward import forward_subset

        info = self._generations.get(step.meta.get("generation"))
        if info is None or len(info.get("batch") or {}) < 4 or not step.has("ref_logps"):
            return ref_model
        local = self._generation_rows(info, step.meta["global_rows"], step.tensors)
        if local is None:
            return ref_model
        subset = forward_subset(step)
        wanted = local if subset is None else local[list(subset.rows)]
        scored = self._ref_logps_of(info, wanted, ref_model)
        if scored is None:
            return ref_model
        if subset is None:
            return KnownLogps(ref_model, scored[local], self.spec.temperature)
        import torch

        rows = torch.tensor(subset.rows, dtype=torch.long)
        own = torch.full((len(local), *scored.shape[1:]), float("nan"), dtype=scored.dtype)
        own[rows] = scored[wanted]  # only this step's forward rows: NaN on the others, as the policy's
        return KnownLogps(ref_model, own, self.spec.temperature)

    def _ref_logps_of(self, info: dict[str, Any], wanted: Any, ref_model: Any) -> Any:
        """The reference model's log-probs over this rank's generation batch (rows × tokens), computed at least
        on the local rows ``wanted``: the whole batch in one forward the first time when the forward passes run
        on every row or the reference model is synced during training, else the rows not scored yet (NaN on
        the rows never asked for); ``None`` when the batch tensors are missing."""
        import torch

        from grpo_check.compare.stages import model_logps

        batch = info["batch"]
        if info.get("ref_reference") is not None and info.get("ref_scored") is None:
            return info["ref_reference"]  # the whole batch
        # a reference model synced to the policy during training (sync_ref_model) changes between the windows of
        # one generation batch: its rows are all scored at the first need, with the weights TRL scored them with
        if self.forward_rows == "all" or getattr(
            getattr(self.trainer, "args", None), "sync_ref_model", False
        ):
            whole = TraceStep(tensors={name: _cpu(t) for name, t in batch.items()}, meta={})
            info["ref_reference"] = model_logps(ref_model, whole, self.spec.temperature)
            return info["ref_reference"]
        scored = info.get("ref_scored")
        if scored is None:
            scored = info["ref_scored"] = torch.zeros(int(batch["completion_ids"].shape[0]), dtype=torch.bool)
        missing = sorted({int(r) for r in wanted.tolist()} - set(torch.nonzero(scored).reshape(-1).tolist()))
        if missing:
            index = torch.tensor(missing, dtype=torch.long)
            part = TraceStep(tensors={name: _cpu(t)[index] for name, t in batch.items()}, meta={})
            logps = model_logps(ref_model, part, self.spec.temperature)
            if logps is None:
                return None
            if info.get("ref_reference") is None:
                info["ref_reference"] = torch.full(
                    (len(scored), *logps.shape[1:]), float("nan"), dtype=logps.dtype
                )
            info["ref_reference"][index] = logps
            scored[index] = True
        return info.get("ref_reference")

    def _prefetch_ref_logps(self, steps: list[TraceStep]) -> None:
        """Score the forward rows of a window's micro-batches with the reference model in one forward per
        generation batch (instead of one per micro-batch), ahead of their comparisons."""
        if self.forward_rows == "all" or getattr(self.trainer, "ref_model", None) is None:
            return
        if getattr(getattr(self.trainer, "args", None), "sync_ref_model", False):
            return  # scored whole at the first need (see _ref_logps_of)
        import torch

        from grpo_check.stepref.forward import forward_subset

        wanted: dict[Any, list[Any]] = {}
        for step in steps:
            info = self._generations.get(step.meta.get("generation"))
            subset = forward_subset(step)
            if info is None or len(info.get("batch") or {}) < 4 or not step.has("ref_logps"):
                continue
            local = self._generation_rows(info, step.meta["global_rows"], step.tensors)
            if local is not None:  # (a micro-batch whose every row was chosen has no subset: all its rows)
                rows = local if subset is None else local[list(subset.rows)]
                wanted.setdefault(step.meta.get("generation"), []).append(rows)
        ref_model = self._plain_forward(self.trainer.ref_model)
        for generation, parts in wanted.items():
            with preserved_rng(), torch.no_grad():
                self._ref_logps_of(self._generations[generation], torch.cat(parts), ref_model)

    def _generation_rows(self, info: dict[str, Any], global_rows: list[int], tensors: dict[str, Any]) -> Any:
        """See :func:`grpo_check.trl.rowtag.generation_rows` (this rank's rows)."""
        return generation_rows(info, global_rows, tensors, self.rank)

    def _plain_forward(self, wrapped: Any) -> PlainForward:
        """``PlainForward`` of the unwrapped model, unwrapped once per wrapper object (accelerate's
        ``unwrap_model`` costs about a millisecond a call, mostly probing for DeepSpeed)."""
        hit = self._plain_forwards.get(id(wrapped))
        if hit is None or hit[0] is not wrapped:  # the cache holds ``wrapped``: its id cannot be reused
            unwrapped = PlainForward(self.trainer.accelerator.unwrap_model(wrapped))
            hit = self._plain_forwards[id(wrapped)] = (wrapped, unwrapped)
        return hit[1]

    def _accumulate_metrics(self, step: TraceStep, findings: list[Finding]) -> None:
        window = self._window_metrics
        window["grpo_check/fails"] = window.get("grpo_check/fails", 0.0) + sum(f.failed for f in findings)
        window["grpo_check/warns"] = window.get("grpo_check/warns", 0.0) + sum(
            f.verdict is Verdict.WARN for f in findings
        )
        for finding in findings:
            if finding.kind != "compare" or finding.figure is None or not math.isfinite(finding.figure):
                continue
            key = {"advantages": "grpo_check/max_adv_err", "logps": "grpo_check/max_logp_err"}.get(
                finding.stage, "grpo_check/max_loss_grad_err" if finding.stage in ("loss", "grad") else None
            )
            if key is not None:
                window[key] = max(window.get(key, 0.0), abs(float(finding.figure)))

    def _flush_metrics(self) -> None:
        self._collect_background(wait=False)
        metrics = getattr(self.trainer, "_metrics", None)
        if not self.live or metrics is None or not self._window_metrics:
            self._window_metrics = {}
            return
        store = metrics.get("train", metrics)
        for key, value in self._window_metrics.items():
            store[key].append(value)
        self._window_metrics = {}

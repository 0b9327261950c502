"""Capture hooks for TRL's ``GRPOTrainer``: every micro-batch exactly as TRL used it in the loss.

The adapter only *captures*; it never computes GRPO maths. It wraps five trainer methods on the instance
(never on the class, so other trainers are untouched; :meth:`Attachment.detach` restores them):

* ``_calculate_rewards``: rewards per reward function, gathered across processes (TRL normalises rewards on
  the gathered batch), plus the local prompts and decoded completions the reward functions scored.
* ``_generate_and_score_completions``: the generation batch TRL built. A row tag (an int64 column
  ``_grpo_check_row``) is added to its output so that every row can be followed through TRL's shuffle and
  split into micro-batches. The tag is never read by TRL, consumes no randomness and changes no number.
* ``_compute_loss`` (1.x) / ``compute_loss`` (0.x): the micro-batch inputs and the loss TRL returns.
* the per-token log-prob helper, while the loss is computed: the log-probs tensor the loss used, with a
  ``register_hook`` that records ∂(backpropagated value)/∂logps (``logps_grad``), and entropies.
* ``training_step``: after backward, the captured micro-batch becomes a :class:`TraceStep`; the reference
  runs on it (``live=True``) and ``grpo_check/*`` metrics go to the trainer's logs.

Two kinds of steps are captured (``meta["scope"]``):

* ``"generation"``: one per generation batch, across all processes: ``group_index``, ``rewards_per_func``,
  ``reward_weights`` and ``advantages`` for *every* row. Advantages are normalised over whole groups (or the
  whole batch), and TRL shuffles and splits a generation batch into micro-batches (and across ranks), so the
  advantage stage is checked here, where the groups are complete.
* ``"micro_batch"``: one per micro-batch and rank, the rows exactly as the loss saw them.

Example::

    from grpo_check.trl import attach
    trainer = GRPOTrainer(...)
    attachment = attach(trainer, out_dir="traces/run1", every=1, live=True)
    trainer.train()
    result = attachment.result()      # grpo_check.findings.Result of the live comparison
    trace = attachment.close()         # writes traces/run1 and returns the Trace
"""

from __future__ import annotations

import os
from typing import Any

from grpo_check.compare.tolerances import as_policy
from grpo_check.findings import Finding, InputError, Result
from grpo_check.trace.io import TraceWriter
from grpo_check.trace.model import Trace, TraceStep
from grpo_check.trl.helper_client import HELPER_SLOTS, UNDECIDED, HelperClient
from grpo_check.trl.hooks import ATTACHED, TrainerHooks
from grpo_check.trl.live import LiveChecking, PlainForward, forward_rows_setting, preserved_rng
from grpo_check.trl.recording import StepRecording
from grpo_check.trl.rowtag import ROW_TAG, group_ids_from_prompts
from grpo_check.trl.spec import spec_from_trl
from grpo_check.trl.versions import TRLSupport, check_trainer_support

__all__ = ["ROW_TAG", "Attachment", "PlainForward", "attach", "group_ids_from_prompts", "preserved_rng"]


class Attachment(TrainerHooks, StepRecording, LiveChecking, HelperClient):
    """Live capture (and optional live comparison) on one TRL ``GRPOTrainer``. Create with :func:`attach`.

    The front of four parts, each in its module: the trainer hooks (:mod:`grpo_check.trl.hooks`), recording of
    trace steps (:mod:`grpo_check.trl.recording`, rows followed by :mod:`grpo_check.trl.rowtag`), accumulation
    windows and the live comparison (:mod:`grpo_check.trl.live`) and the background helper's client
    (:mod:`grpo_check.trl.helper_client`). It holds the state they share.
    """

    def __init__(
        self,
        trainer: Any,
        *,
        out_dir: str | os.PathLike[str] | None = None,
        every: int = 1,
        live: bool = True,
        tolerances: Any = None,
        recompute_logps: bool = True,
        keep_steps: bool = True,
        invariants: bool = True,
        background: bool = False,
        budget: float | None = None,
        probes: bool = True,
        forward_rows: str = "subset",
    ) -> None:
        from grpo_check.trl.schedule import CheckSchedule

        # validates every and budget before the trainer is looked at; ranks agree on the budget's interval
        self.schedule = CheckSchedule(every, budget, agree=self._agree_interval)
        self.forward_rows = forward_rows_setting(forward_rows)
        if getattr(trainer, ATTACHED, None) is not None:  # detach() and close() remove it
            raise InputError(
                "this trainer already has a grpo-check attachment: close() it (or detach()) before attaching again"
            )
        self.trainer = trainer
        self.support: TRLSupport = check_trainer_support(trainer)
        self.out_dir = None if out_dir is None else os.fspath(out_dir)
        if self.out_dir == "":
            raise InputError("out_dir is empty; give a directory name (or None to keep the trace in memory)")
        for name, flag in (("live", live), ("recompute_logps", recompute_logps), ("invariants", invariants),
                           ("background", background), ("probes", probes)):  # fmt: skip
            if not isinstance(flag, bool):
                raise InputError(f"{name} must be True or False, got {flag!r}")
        if self.out_dir is not None and os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            # found now, not at close(): the trace must not be lost after training
            raise InputError("out_dir is a file; the trace is written as a directory", source=self.out_dir)
        self.live = live
        self.tolerances = None if tolerances is None else as_policy(tolerances)
        self.recompute_logps = recompute_logps
        self.keep_steps = keep_steps
        self.spec = spec_from_trl(trainer)
        self.trace = Trace(manifest=self._manifest(), steps=[])
        # the trace directory is made (and found unwritable) now, before training; steps stream into it
        self._sink = None if self.out_dir is None else TraceWriter.open(self.out_dir, self.trace.manifest)
        self.findings: list[Finding] = []
        self.live_problems: list[str] = []
        self._originals: dict[str, Any] = {}
        self._plain_forwards: dict[int, tuple[Any, PlainForward]] = {}
        # micro-batches of the open gradient-accumulation window: (step, extra findings, global step)
        self._window: list[tuple[TraceStep, list[Finding], int]] = []
        self.background = background
        self._checker: Any = None  # grpo_check.trl.background.BackgroundChecker, started on first use
        # background jobs: the steps each checks, with their extra findings; jobs that send a model
        self._jobs: dict[int, list[tuple[TraceStep, list[Finding]]]] = {}
        self._model_jobs: set[int] = set()
        self._forward_refusal: str | None = UNDECIDED  # why the helper may not run the forward passes
        self._shipped: dict[str, int] = {}  # role -> the global step whose weights the helper holds
        self._forwards_verified = False  # the helper's first window was scored here too
        self._verification_job: int | None = None  # that window's job, until its reply is in
        self._helper_slot = next(HELPER_SLOTS)  # this attachment's models in the (shared) helper
        self._spec_dict: dict[str, Any] | None = None
        self._rewards_capture: dict[str, Any] | None = None
        self._generations: dict[int, dict[str, Any]] = {}
        self._generation_counter = 0
        self._micro_batch_counter = 0
        self._in_loss = False
        self._pending: dict[str, Any] | None = None
        self._window_metrics: dict[str, float] = {}
        self._slice_findings: list[Finding] = []
        self.invariants = invariants
        self.probes = probes
        self._probed: set[str] = set()  # configurations whose loss code was probed (grpo_check.trl.probe)
        self.skipped_invariants: dict[str, int] = {}
        # why a check family did not run, by family id (grpo_check.coverage), where the adapter knows
        self.coverage_notes: dict[str, str] = {}
        self._closed = False
        self._step_checking = 0.0  # seconds this optimizer step spent on capture and checking
        self._step_ended_at: float | None = None  # perf_counter at the end of the previous optimizer step
        self._install()
        if background and live and recompute_logps:
            self._prepare_helper()

    @property
    def rank(self) -> int:
        return int(self.trainer.accelerator.process_index)

    @property
    def num_processes(self) -> int:
        return int(self.trainer.accelerator.num_processes)

    def result(self) -> Result:
        """The live comparison so far as a :class:`Result` (empty when ``live=False``); waits for the
        background checks still running. With ``live=True`` it ends as every comparison does
        (:func:`grpo_check.compare.engine.finish_result`): trends, run-level warnings and the coverage. A failing
        stage that a shipped bug of the installed TRL release explains is named as such (bug, fix, PR)."""
        from grpo_check.trl.history import name_shipped_bugs

        self._flush_window()
        self._collect_background(wait=True)
        # a failing stage that a shipped bug of this release explains is named as such (bug, fix, PR)
        shipped = name_shipped_bugs(self.findings, self.support.version, self.run_settings())
        result = Result(
            findings=[*self.findings, *shipped],
            metadata={
                "source": self.trace.manifest.get("trainer"),
                "config": self.spec.to_dict(),
                "versions": self.trace.manifest.get("versions"),
                "tolerances": getattr(self.tolerances, "to_dict", lambda: self.tolerances)(),
                "live_problems": list(self.live_problems),
                "invariants_not_captured": dict(sorted(self.skipped_invariants.items())),
                "checking": self.schedule.summary(),
                "rank": self.rank,
                "num_processes": self.num_processes,
            },
        )
        if self.live:
            self._finish_result(result)
        return result

    def run_settings(self) -> dict[str, Any]:
        """The algorithm settings (:meth:`GRPOSpec.to_dict`) plus what the captured batches showed that no setting
        says: a row no reward function scored, prompts left-padded in a batch (for the shipped-bug history)."""
        observed = {
            "unscorable_rows": getattr(self, "_unscorable_rows_seen", False),
            "left_padded_prompts": getattr(self, "_left_padding_seen", False),
        }
        return {**self.spec.to_dict(), **observed}

    def _finish_result(self, result: Result) -> None:
        """Trends, run-level warnings and coverage: what the model at hand made checkable and what ran."""
        from grpo_check.compare.engine import finish_result

        policy = as_policy(self.tolerances)
        reasons: dict[str, str] = {}
        not_applicable: dict[str, str] = {}
        if not self.recompute_logps:
            reasons["forward_logps"] = "turned off (attach(recompute_logps=False))"
            reasons["ref_forward"] = reasons["forward_logps"]
        elif self.live_problems:
            reasons.setdefault("forward_logps", "; ".join(self.live_problems))
        has_ref = getattr(self.trainer, "ref_model", None) is not None
        if self.spec.beta != 0.0 and not has_ref:
            not_applicable["ref_forward"] = (
                "the trainer has no separate reference model (its reference log-probs come from the policy "
                "with the adapter disabled)"
            )
        if not self.invariants:
            not_applicable["invariants"] = "turned off (invariants=False)"
        if not self.probes:
            not_applicable["probes"] = "turned off (probes=False)"
        elif (
            not self._probed
        ):  # no captured micro-batch was checked (or coverage_notes says why probing did not run)
            reasons.setdefault("probes", "no micro-batch was checked, so the loss code was not probed")
        reasons.update(self.coverage_notes)
        finish_result(
            result,
            self.trace,
            self.spec,
            policy,
            model_at_hand=self.recompute_logps,
            ref_model_at_hand=self.recompute_logps and has_ref,
            reasons=reasons,
            not_applicable=not_applicable,
        )

    def close(self) -> Trace:
        """Detach the hooks, write the trace to ``out_dir`` (if set) and return it."""
        self._flush_window()
        self._collect_background(wait=True)
        if self._shipped and self._checker is not None:  # the helper's copies of this run's models
            forget = [f"{self._helper_slot}.{role}" for role in self._shipped]
            self._checker.submit({"forget": forget}, {}, awaited=False)
            self._shipped = {}
        self.detach()
        if self._sink is not None and not self._closed:
            self._sink.close(self.trace.manifest)  # the steps are on disk already
        self._closed = True
        return self.trace


def attach(
    trainer: Any,
    out_dir: str | os.PathLike[str] | None = None,
    every: int = 1,
    live: bool = True,
    *,
    tolerances: Any = None,
    recompute_logps: bool = True,
    invariants: bool = True,
    background: bool = False,
    budget: float | None = None,
    probes: bool = True,
    forward_rows: str = "subset",
) -> Attachment:
    """Capture every micro-batch of a TRL ``GRPOTrainer`` and (``live=True``) check it against the float64
    reference while it trains.

    Args:
        trainer: a ``trl.GRPOTrainer`` (or subclass), before ``train()`` is called.
        out_dir: where :meth:`Attachment.close` writes the trace (safetensors + JSON); ``None`` keeps it in memory.
        every: capture and check every N optimizer steps.
        live: run ``grpo_check.compare.compare_step`` on each captured step during training and add
            ``grpo_check/*`` metrics to the trainer's logs.
        tolerances: a ``grpo_check.compare.TolerancePolicy`` (default: the engine's).
        recompute_logps: also recompute the policy's log-probs with an own float64 forward pass.
        invariants: also run the single-implementation invariants (``grpo_check.invariants``) live.
        background: run the float64 comparison, diagnoses and invariants in a helper process while training
            goes on; with a free core and a small CPU model, the reference's forward passes too, on the
            helper's own copies of the models (see :mod:`grpo_check.trl.background`). Findings and
            ``grpo_check/*`` metrics then arrive a few steps late; ``result()`` and ``close()`` wait for them.
        budget: instead of ``every``, check as often as keeps checking under this fraction of the step time
            (``0.03``: training takes at most about 1.03x as long): after each checked step the next is chosen
            from what recent checks and steps took on this process (see :mod:`grpo_check.trl.schedule`).
            Step 0 is always checked. ``result().metadata["checking"]`` reports the cost either way.
        probes: probe the trainer's own loss code once per configuration (:mod:`grpo_check.trl.probe`):
            synthetic micro-batches built from the first checked micro-batch drive every branch of the
            configured loss (both clip bounds, ``delta``, masked and truncated rows, ...) through the trainer's
            loss code, compared with the reference (``live=True`` only). Also calls each reward function
            twice more on the first generation batch, in batch and in reversed row order
            (``rewards.row_independence``: a row's reward must not depend on the other rows).
        forward_rows: which rows the reference's own forward passes (policy and reference model: the
            ``logps.model``/``logps.ref_model`` checks and the forward diagnoses) run on. ``"subset"`` (default):
            a subset of each accumulation window chosen to cover every prompt padding, truncated and EOS-ended
            rows, every completion-length bucket, every group and micro-batch, and rows with anomalous
            log-probs, at least a quarter of the rows (:mod:`grpo_check.stepref.row_subset`; recorded in each
            step's ``meta["forward_rows"]`` and in the coverage). ``"all"``: every row. Every other check runs
            on every row either way.

    Checking does not change training: the hooks consume no randomness (RNG state is saved and restored
    around the reference) and the model's train/eval mode is restored.
    """
    return Attachment(
        trainer,
        out_dir=out_dir,
        every=every,
        live=live,
        tolerances=tolerances,
        recompute_logps=recompute_logps,
        invariants=invariants,
        background=background,
        budget=budget,
        probes=probes,
        forward_rows=forward_rows,
    )

"""The background helper's client side for :class:`~grpo_check.trl.capture.Attachment`.

With ``attach(..., background=True)`` captured steps (and, when the helper may run them, whole accumulation
windows with the models' weights) are handed to the helper process of :mod:`grpo_check.trl.background`; the
replies are collected into the attachment's findings. Anything the helper cannot do is checked inline.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Any

from grpo_check.findings import Finding
from grpo_check.trace.model import TraceStep
from grpo_check.trl.live import NO_MODEL as _NO_MODEL
from grpo_check.trl.live import preserved_rng

log = logging.getLogger("grpo_check.trl")

UNDECIDED = "undecided"  # Attachment._forward_refusal before the first window is handed off
_UNDECIDED = UNDECIDED
HELPER_SLOTS = itertools.count()  # each attachment's models get their own names in the (shared) helper


class HelperClient:
    """Submits steps and windows to the background helper and collects its replies."""

    trainer: Any
    spec: Any

    def _submit_background(self, step: TraceStep, extra_findings: list[Finding], policy_model: Any) -> bool:
        """Hand the step to the helper process (see :mod:`grpo_check.trl.background`) after the parts that need
        the live model: the reference's log-probs, and their comparison with the trainer's. False: check it
        inline (log-probs that already disagree, truncated sampling with sampler log-probs, a helper that
        is too far behind or has stopped)."""
        import torch

        from grpo_check.compare.stages import model_logps
        from grpo_check.trl.background import shared_checker, step_description

        if self._checker is None:
            self._checker = shared_checker()
        if not self._checker.alive:
            self._note(f"{self._checker.problem}: steps checked inline")
            return False
        with preserved_rng(), torch.no_grad():
            model, ref_model = self._models_for(step, policy_model)
            if model is not None and self.spec.truncated_sampling and step.has("sampler_logps"):
                return False  # the kept-sampling-mass signature needs the model's full logits
            known: dict[str, Any] = {}
            for name, source in (("logps", model), ("ref_logps", ref_model)):
                if source is not None:
                    logps = model_logps(source, step, self.spec.temperature)
                    if logps is None:
                        return False
                    known[name] = logps
            if not self._logps_agree(step, known):
                return False  # a log-prob mismatch: its diagnoses need the model as it is now
        header = {
            **self._job_header(),
            "step": step_description(step),
        }
        tensors = {**step.tensors, **{f"known.{name}": logps for name, logps in known.items()}}
        job = self._checker.submit(header, tensors)
        if job is None:
            return False
        self._jobs[job] = [(step, extra_findings)]
        return True

    def _job_header(self) -> dict[str, Any]:
        """What every check sent to the helper carries: the algorithm, tolerances and what to run."""
        if self._spec_dict is None:
            self._spec_dict = self.spec.to_dict()
        return {
            "spec": self._spec_dict,
            "tolerances": None if self.tolerances is None else dataclasses.asdict(self.tolerances),
            "invariants": self.invariants,
            "temperature": self.spec.temperature,
        }

    def _logps_agree(self, step: TraceStep, known: dict[str, Any]) -> bool:
        """The trainer's log-probs are within the comparison's tolerance floor of the reference's everywhere on
        the completion mask: then the helper's comparison passes too (its allowance is never below that
        floor), and needs no model for its diagnoses."""

        from grpo_check.compare.tolerances import TolerancePolicy
        from grpo_check.stepref.forward import forward_row_mask
        from grpo_check.stepref.inputs import computed_dtype as _dtype

        policy = self.tolerances or TolerancePolicy()
        for name, check_id in (("logps", "logps.model"), ("ref_logps", "logps.ref_model")):
            if name not in known or not step.has(name):
                continue
            got, want = step[name].double(), known[name].double()
            if got.shape != want.shape:
                return False
            tolerance = policy.for_check(check_id, name, _dtype(step, name))
            within = (got - want).abs() <= tolerance.atol + tolerance.rtol * want.abs()  # False for NaN
            mask = step.get("completion_mask")
            if mask is not None and mask.shape == within.shape:
                within = within | ~mask.bool()
            rows = forward_row_mask(step)  # a row-subset forward: NaN on the rows it did not run
            if rows is not None and within.dim() == 2 and rows.shape[0] == within.shape[0]:
                within = within | ~rows.unsqueeze(1)
            if not bool(within.all()):
                return False
        return True

    def _collect_background(self, *, wait: bool) -> None:
        """Record the findings of background checks that have come back (all of them when ``wait``)."""
        if not (self._jobs or self._model_jobs) or self._checker is None:
            return
        replies = self._checker.replies(set(self._jobs) | self._model_jobs, wait=wait)
        for job, reply in sorted(replies.items()):
            if job in self._model_jobs:  # a model sent to the helper: the window jobs after it need it
                self._model_jobs.discard(job)
                if "error" in reply:
                    self._refuse_helper_forwards(f"the helper could not load the model ({reply['error']})")
                continue
            entries = self._jobs.pop(job)
            if job == self._verification_job:
                self._verification_job = None
            if reply.get("forward_mismatch") is not None:
                self._refuse_helper_forwards(
                    f"the helper's copy of the model scored the first window differently from the model "
                    f"(max |Δ log-prob| {reply['forward_mismatch']:.3g})"
                )
            if "error" in reply:
                self._note(
                    f"background check failed ({reply['error']}): step checked inline, without the policy "
                    "forward (its weights have moved on)"
                )
                outcomes = [
                    ([*self._compare_live(step, policy_model=_NO_MODEL), *extra], None)
                    for step, extra in entries
                ]
            else:
                per_step = reply.get("steps", [reply])
                outcomes = [
                    (
                        [Finding.from_dict(data) for data in done["findings"]] + extra,
                        done.get("not_captured", []),
                    )
                    for (_, extra), done in zip(entries, per_step, strict=True)
                ]
            for (step, _), (findings, not_captured) in zip(entries, outcomes, strict=True):
                if not_captured:
                    self._count_not_captured(not_captured)
                self.findings.extend(findings)
                self._accumulate_metrics(step, findings)

    def _refuse_helper_forwards(self, reason: str) -> None:
        self._forward_refusal = reason
        self._note(f"forward passes moved back to the training process: {reason}")

    def _helper_forwards_refusal(self) -> str | None:
        """Why the helper may not run this run's forward passes (decided once), or ``None``."""
        if self._forward_refusal != _UNDECIDED:
            return self._forward_refusal
        from grpo_check.trl.background import helper_forward_refusal

        ref_model = getattr(self.trainer, "ref_model", None)
        refusal = (
            f"{self.num_processes} processes"
            if self.num_processes > 1
            else helper_forward_refusal(
                self._plain_forward(self.trainer.model).wrapped_module,
                None if ref_model is None else self._plain_forward(ref_model).wrapped_module,
            )
        )
        if refusal is None and getattr(self.trainer.args, "sync_ref_model", False):
            refusal = "the reference model is synced during training (sync_ref_model)"
        if refusal is None:  # a helper that competes with training for the cores: its work stays small
            import torch

            from grpo_check.trl.background import available_cores, no_free_core_warning

            if no_free_core_warning(torch.get_num_threads(), available_cores()) is not None:
                refusal = "no free core for the helper"
        if refusal is not None:
            log.info("grpo-check: forward passes stay on the training process: %s", refusal)
        self._forward_refusal = refusal
        return refusal

    def _prepare_helper(self) -> None:
        """Start the helper as training starts (and, when it will copy the models, its transformers import)."""
        try:
            from grpo_check.trl.background import shared_checker

            self._checker = shared_checker()
            self._checker.prepare(models=self._helper_forwards_refusal() is None)
        except Exception as error:  # never stop training: the first window decides again
            log.info("grpo-check: background helper not prepared: %s", error)

    def _window_handed_off(self, window: list[tuple[TraceStep, list[Finding], int]]) -> bool:
        """:meth:`_submit_window`, which must never stop training: a failure moves the forward passes back here."""
        try:
            return self._submit_window([step for step, _, _ in window], [extra for _, extra, _ in window])
        except Exception as error:
            self._refuse_helper_forwards(f"{type(error).__name__}: {error}")
            return False

    def _submit_window(self, steps: list[TraceStep], extras: list[list[Finding]]) -> bool:
        """Hand one accumulation window to the helper, forward passes included (see
        :mod:`grpo_check.trl.background`): the policy's weights go first when the helper's copy is older than
        this step. False when the helper cannot run these models, is too far behind or has stopped: the
        caller then runs the forward passes here."""
        import torch

        from grpo_check.compare.stages import model_logps
        from grpo_check.trl.background import model_message, shared_checker, step_description

        if self._verification_job is not None:  # windows wait here until the helper's copies are vouched for
            self._collect_background(wait=False)
            if self._verification_job is not None:
                return False
        if self._helper_forwards_refusal() is not None:
            return False
        if self._checker is None:
            self._checker = shared_checker()
        if not self._checker.alive:
            return False
        policy = self._plain_forward(self.trainer.model)
        ref_wrapped = getattr(self.trainer, "ref_model", None)
        ref = None if ref_wrapped is None else self._plain_forward(ref_wrapped)
        # the policy's weights as of this optimizer step; the reference model's once (it is frozen)
        for role, model, version in (
            ("policy", policy, int(self.trainer.state.global_step)),
            ("ref", ref, 0),
        ):
            if model is None or self._shipped.get(role) == version:
                continue
            job = self._checker.submit(*model_message(model.wrapped_module, f"{self._helper_slot}.{role}"))
            if job is None:
                return False
            self._model_jobs.add(job)
            self._shipped[role] = version
        expected: dict[str, Any] = {}
        if not self._forwards_verified:  # the first window is scored here too: the helper compares
            with preserved_rng(), torch.no_grad():
                self._prefetch_ref_logps(steps)
                policy_models = self._window_policy_logps(steps)
                for index, step in enumerate(steps):
                    for name, model in (
                        ("logps", policy_models[index]),
                        ("ref_logps", None if ref is None else self._ref_model_for(step, ref)),
                    ):
                        logps = None if model is None else model_logps(model, step, self.spec.temperature)
                        if logps is not None:
                            expected[f"expect/{index}/{name}"] = logps
        header = {
            **self._job_header(),
            "models": {
                "logps": f"{self._helper_slot}.policy",
                "ref_logps": None if ref is None else f"{self._helper_slot}.ref",
            },
            "window": [step_description(s) for s in steps],
        }
        tensors = {f"{index}/{name}": t for index, s in enumerate(steps) for name, t in s.tensors.items()}
        job = self._checker.submit(header, {**tensors, **expected})
        if job is None:
            return False
        if not self._forwards_verified:
            self._forwards_verified, self._verification_job = True, job
        self._jobs[job] = list(zip(steps, extras, strict=True))
        return True

"""The trainer hooks of :class:`~grpo_check.trl.capture.Attachment`: what is wrapped on the trainer instance.

Five trainer methods are wrapped on the instance (never on the class, so other trainers are untouched;
:meth:`TrainerHooks.detach` restores them): the reward computation, the method that builds a generation batch
(``_generate_and_score_completions``; ``_prepare_inputs`` on TRL 0.15; it also tags the rows, see
:mod:`grpo_check.trl.rowtag`), the loss, the per-token log-prob helper while the loss runs (on TRL 0.18 its
second call, on the reference model, too), and ``training_step`` (which hands each captured micro-batch to
the recording). Which methods those are is the release's era (:mod:`grpo_check.trl.versions`); TRL 0.14,
whose ``compute_loss`` does everything in one call, is captured from that call's locals
(:mod:`grpo_check.trl.eras`). The hooks only copy
tensors; they consume no randomness and change no number.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from grpo_check.trl.recording import cpu_copy as _cpu
from grpo_check.trl.rowtag import ROW_TAG, row_tags
from grpo_check.trl.spec import applied_entropy_coef

ATTACHED = "_grpo_check_attachment"  # the trainer attribute that holds its live attachment


class TrainerHooks:
    """Installs and removes the wrappers; each wrapper records into the attachment's pending micro-batch."""

    trainer: Any
    support: Any
    _originals: dict[str, Any]

    def _install(self) -> None:
        t = self.trainer
        if self.support.generation_method == self.support.loss_method:  # TRL 0.14: one call does it all
            hooks = [(self.support.loss_method, self._wrap_fused_loss)]
        else:  # the generation method: _generate_and_score_completions, or _prepare_inputs on TRL 0.15
            hooks = [
                (self.support.generation_method, self._wrap_generate),
                (self.support.loss_method, self._wrap_loss),
                (self.support.logps_method, self._wrap_logps),
            ]
        hooks.append(("training_step", self._wrap_training_step))
        if self.support.rewards_method:
            hooks.insert(0, (self.support.rewards_method, self._wrap_calculate_rewards))
        else:  # TRL 0.x scores inline: capture each reward function's own output instead
            self._wrap_reward_functions()
        for name, wrapper in hooks:
            original = getattr(t, name)
            self._originals[name] = original
            setattr(t, name, wrapper(original))
        setattr(t, ATTACHED, self)

    def _wrap_reward_functions(self) -> None:
        funcs = list(getattr(self.trainer, "reward_funcs", []) or [])
        self._reward_outputs: dict[int, dict[str, Any]] = {}
        self._original_reward_funcs = funcs

        def wrap(index: int, func: Any) -> Any:
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                out = func(*args, **kwargs)
                self._reward_outputs[index] = {
                    "prompts": list(kwargs.get("prompts") or []),
                    "completions": list(kwargs.get("completions") or []),
                    "values": list(out),
                }
                return out

            wrapped.__name__ = getattr(func, "__name__", f"reward_{index}")
            return wrapped

        import torch

        self.trainer.reward_funcs = [
            f if isinstance(f, torch.nn.Module) else wrap(i, f) for i, f in enumerate(funcs)
        ]

    def _rewards_from_reward_functions(self) -> dict[str, Any] | None:
        """TRL 0.x: this rank's rewards per function as the functions returned them (None -> NaN), gathered."""
        import torch

        outputs = getattr(self, "_reward_outputs", None)
        funcs = getattr(self, "_original_reward_funcs", [])
        if not outputs or len(outputs) != len(funcs):
            return None  # a reward model (nn.Module) is not captured on this line
        rows = len(outputs[0]["values"])
        local = torch.tensor(
            [
                [
                    float("nan") if outputs[i]["values"][r] is None else float(outputs[i]["values"][r])
                    for i in range(len(funcs))
                ]
                for r in range(rows)
            ],
            dtype=torch.float32,
        )
        if self.num_processes > 1:
            from accelerate.utils import gather

            local = gather(local.to(self.trainer.accelerator.device)).to("cpu")
        completions = outputs[0]["completions"]
        self._reward_outputs = {}
        return {
            "rewards_per_func": local,
            "prompts": outputs[0]["prompts"],
            "completions": [c if isinstance(c, str) else repr(c) for c in completions],
        }

    def detach(self) -> None:
        """Restore the trainer's original methods. Captured steps and findings are kept."""
        for name in self._originals:
            with contextlib.suppress(AttributeError):
                delattr(self.trainer, name)
        self._originals.clear()
        if getattr(self.trainer, ATTACHED, None) is self:
            delattr(self.trainer, ATTACHED)
        if getattr(self, "_original_reward_funcs", None) is not None:
            self.trainer.reward_funcs = self._original_reward_funcs
            self._original_reward_funcs = None

    def _wrap_calculate_rewards(self, original: Any) -> Any:
        def wrapped(
            inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any, *args: Any, **kw: Any
        ):
            rewards_per_func = original(inputs, prompts, completions, completion_ids_list, *args, **kw)
            probing = getattr(self, "probes", True) and self.trainer.model.training
            if probing and not getattr(self, "_reward_rows_probed", False):
                from grpo_check.trl.reward_probe import probe_reward_functions

                self._reward_rows_probed = True  # once per run: the reward functions' own code, not the data
                self.findings.extend(
                    probe_reward_functions(
                        self.trainer,
                        inputs,
                        prompts,
                        completions,
                        completion_ids_list,
                        rewards_per_func,
                        rank=self.rank,
                        step=int(self.trainer.state.global_step),
                    )
                )
            self._rewards_capture = {
                "rewards_per_func": _cpu(rewards_per_func),
                "prompts": list(prompts),
                "completions": [c if isinstance(c, str) else repr(c) for c in completions],
                "completion_ids": [list(map(int, ids)) for ids in completion_ids_list],
            }
            return rewards_per_func

        return wrapped

    def _wrap_generate(self, original: Any) -> Any:
        def wrapped(inputs: Any, *args: Any, **kw: Any):

            self._rewards_capture = None
            output = original(inputs, *args, **kw)
            if not self.trainer.model.training:  # evaluation: not a training batch
                return output
            self._tag_generation(inputs, output)
            return output

        return wrapped

    def _tag_generation(self, inputs: Any, output: dict[str, Any]) -> None:
        """Tag the rows of a generation batch TRL built and record it (its rewards, advantages, groups)."""
        if not self.support.rewards_method:
            self._rewards_capture = self._rewards_from_reward_functions()
        generation = self._generation_counter
        self._generation_counter += 1
        local_rows = int(output["completion_ids"].shape[0])
        offset = self.rank * local_rows
        # the tag encodes (generation, global row); it rides through TRL's shuffle and split untouched
        output[ROW_TAG] = row_tags(generation, offset, local_rows).to(output["completion_ids"].device)
        start = time.perf_counter()
        self._record_generation(generation, inputs, output, local_rows)
        self._step_checking += time.perf_counter() - start

    def _wrap_fused_loss(self, original: Any) -> Any:
        """TRL 0.14: ``compute_loss`` generates, scores and computes the loss in one call; the micro-batch is
        read from its local variables as it returns (:mod:`grpo_check.trl.eras`)."""
        from grpo_check.trl.eras import call_keeping_locals, fused_step_output

        def wrapped(model: Any, inputs: Any, *args: Any, **kw: Any):
            if not self.trainer.model.training:
                return original(model, inputs, *args, **kw)
            self._rewards_capture = None
            loss, local = call_keeping_locals(original, model, inputs, *args, **kw)
            num_generations = int(getattr(self.trainer, "num_generations", self.spec.num_generations))
            output = fused_step_output(local, num_generations)
            if output is None:
                self._note(
                    f"{type(self.trainer).__name__}.compute_loss holds no TRL 0.14 micro-batch: not captured"
                )
                return loss
            self._tag_generation(inputs, output)
            if not self._due(int(self.trainer.state.global_step)):
                self._pending = {"due": False}
                return loss
            pending: dict[str, Any] = {"inputs": output, "logps_grad": None, "loss_scale": None}
            self._pending = pending
            self._keep_logps(pending, local["per_token_logps"])
            self._keep_loss(pending, loss)
            return loss

        return wrapped

    def _keep_loss(self, pending: dict[str, Any], loss: Any) -> None:
        """Copy the loss into ``pending`` and hook the factor backward applies to it (``loss_scale``)."""
        pending["loss"] = _cpu(loss)
        if loss.requires_grad:

            def on_loss_grad(grad: Any) -> None:
                pending["loss_scale"] = float(grad.detach().to("cpu").reshape(-1)[0])

            loss.register_hook(on_loss_grad)

    def _keep_logps(self, pending: dict[str, Any], logps: Any, entropies: Any = None) -> None:
        """Copy the log-probs the loss used into ``pending`` and hook ∂(backpropagated value)/∂logps."""
        pending["logps"] = _cpu(logps)
        if entropies is not None:
            pending["entropies"] = _cpu(entropies)
        if logps.requires_grad:

            def on_logps_grad(grad: Any) -> None:
                pending["logps_grad"] = _cpu(grad)

            logps.register_hook(on_logps_grad)

    def _wrap_loss(self, original: Any) -> Any:
        def wrapped(model: Any, inputs: Any, *args: Any, **kw: Any):
            if not self.trainer.model.training or ROW_TAG not in inputs:
                return original(model, inputs, *args, **kw)
            if not self._due(int(self.trainer.state.global_step)):
                self._pending = {"due": False}  # counted as a micro-batch, nothing copied or hooked
                return original(model, inputs, *args, **kw)
            self._pending = {
                "inputs": inputs,
                "logps": None,
                "logps_grad": None,
                "loss_scale": None,
                "entropy_coef": applied_entropy_coef(self.trainer),  # read before the loss may update it
            }
            self._in_loss = True
            try:
                loss = original(model, inputs, *args, **kw)
            finally:
                self._in_loss = False
            self._keep_loss(self._pending, loss)
            return loss

        return wrapped

    def _wrap_logps(self, original: Any) -> Any:
        def wrapped(*args: Any, **kw: Any):
            out = original(*args, **kw)
            pending = self._pending
            if not self._in_loss or pending is None:
                return out
            logps, entropies = (out[0], out[1]) if isinstance(out, tuple) else (out, None)
            if pending.get("logps") is None:
                self._keep_logps(pending, logps, entropies)
            elif self._scores_reference_model(
                args, kw, pending
            ):  # TRL 0.18: the reference model, in the loss
                pending["ref_logps"] = _cpu(logps)
            return out

        return wrapped

    def _scores_reference_model(
        self, args: tuple[Any, ...], kw: dict[str, Any], pending: dict[str, Any]
    ) -> bool:
        """This log-prob call scores the reference model for a micro-batch whose inputs carry none."""
        ref_model = getattr(self.trainer, "ref_model", None)
        model = args[0] if args else kw.get("model")
        inputs = pending.get("inputs") or {}
        return (
            ref_model is not None
            and model is ref_model
            and "ref_logps" not in pending
            and inputs.get("ref_per_token_logps") is None
        )

    def _wrap_training_step(self, original: Any) -> Any:
        def wrapped(model: Any, inputs: Any, *args: Any, **kw: Any):
            if self._step_ended_at is None:  # the first step is timed from its first micro-batch
                self._step_ended_at = time.perf_counter()
            self._pending = None
            out = original(model, inputs, *args, **kw)
            pending, self._pending = self._pending, None
            if pending is not None:
                start = time.perf_counter()
                micro_batch = self._micro_batch_counter % max(self._gas(), 1)
                self._micro_batch_counter += 1
                if self._window and self._window[0][2] != int(self.trainer.state.global_step):
                    self._flush_window()  # an earlier window the optimizer closed unevenly
                self._record_micro_batch(pending, micro_batch)
                last = micro_batch == self._gas() - 1
                if last:
                    self._flush_window()
                    self._flush_metrics()
                end = time.perf_counter()
                self._step_checking += end - start
                if last:  # the optimizer step ends here: account for it (and choose the next checked step)
                    self.schedule.end_step(
                        int(self.trainer.state.global_step), end - self._step_ended_at, self._step_checking
                    )
                    self._step_ended_at, self._step_checking = end, 0.0
            return out

        return wrapped

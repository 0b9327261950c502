"""Recording of :class:`~grpo_check.trl.capture.Attachment`: captured tensors become trace steps.

Two kinds of steps are recorded (``meta["scope"]``): ``"generation"``, one per generation batch across all
processes (group index, rewards and advantages of every row), and ``"micro_batch"``, one per micro-batch and
rank, the rows exactly as the loss saw them. Capture only: nothing here computes GRPO maths.
"""

from __future__ import annotations

from typing import Any

from grpo_check.findings import Finding, Verdict
from grpo_check.trace.model import TraceStep
from grpo_check.trl.rederive_inputs import (
    EOS_SOURCES_KEY,
    eos_token_id_sources,
    policy_fingerprint,
    rederive_meta_at_generation,
)
from grpo_check.trl.rowtag import ROW_TAG, group_ids_from_prompts, scored_row_order, untag_rows
from grpo_check.trl.spec import trainer_config_dict
from grpo_check.trl.versions import library_versions


def cpu_copy(tensor: Any) -> Any:
    """A detached CPU copy of ``tensor`` (captured values never alias the trainer's)."""
    return tensor.detach().to("cpu").clone()


_cpu = cpu_copy


class StepRecording:
    """Builds :class:`TraceStep` objects from what the hooks captured (manifest, generation and micro-batch steps)."""

    trainer: Any
    spec: Any
    trace: Any

    def _manifest(self) -> dict[str, Any]:
        tok = self._tokenizer()
        return {
            "format_version": 1,
            "trainer": f"trl.GRPOTrainer ({type(self.trainer).__name__})",
            "config": self.spec.to_dict(),
            "trainer_config": trainer_config_dict(self.trainer),
            "versions": library_versions(),
            "seeds": {"seed": int(getattr(self.trainer.args, "seed", 0))},
            "notes": [
                "captured by grpo_check.trl.attach: micro-batches as TRL used them in the loss",
                f"TRL {self.support.version} ({self.support.era} era); log-probs from "
                f"{self.support.logps_method or 'the locals of compute_loss'}",
            ],
            "eos_token_ids": self._eos_token_ids(),
            EOS_SOURCES_KEY: eos_token_id_sources(self.trainer),
            "pad_token_id": None if tok is None else tok.pad_token_id,
            "compute_dtype": self._compute_dtype(),
            "model": self._model_sources(),
        }

    def _model_sources(self) -> dict[str, str | None]:
        """Where the policy and the reference model came from (``name_or_path``: a local directory or a hub id),
        so that ``grpo-check compare TRACE --model`` can say what to pass."""
        sources: dict[str, str | None] = {}
        for role, model in (
            ("policy", self.trainer.model),
            ("ref_model", getattr(self.trainer, "ref_model", None)),
        ):
            source = None
            if model is not None:
                model = self.trainer.accelerator.unwrap_model(model)
                config = getattr(model, "config", None)
                source = getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None)
            sources[role] = str(source) if source else None
        return sources

    def _compute_dtype(self) -> str:
        """The precision the trainer's forward ran in: the autocast dtype under mixed precision (TRL 1.x defaults
        to ``bf16=True``, which on CPU too means bf16 autocast), else the model's parameter dtype. The captured
        tensors are float32 either way; this says how precise their values can be."""
        mixed = str(getattr(self.trainer.accelerator, "mixed_precision", "no") or "no")
        if mixed in ("bf16", "fp16", "fp8"):
            return {"bf16": "bfloat16", "fp16": "float16", "fp8": "float8"}[mixed]
        dtype = getattr(self.trainer.model, "dtype", None)
        return str(dtype).removeprefix("torch.") if dtype is not None else "float32"

    def _decode(self, completion_ids: Any, completion_mask: Any) -> list[str] | None:
        """The tokenizer's own decode of each row's completion tokens (what the rewards should score).

        Tokens are taken up to and including the first EOS, as TRL selects them for decoding: the loss mask
        may legitimately be narrower (``mask_truncated_completions`` zeroes truncated rows, tool masks).
        Capture only: this is the tokenizer's output, recorded so ``batch.text_faithful`` can compare it
        with the text the reward functions received."""
        import torch

        tok = self._tokenizer()
        if tok is None or not hasattr(tok, "batch_decode") or completion_ids is None:
            return None
        eos_ids = self._eos_token_ids()
        if eos_ids:
            is_eos = torch.isin(completion_ids, torch.tensor(eos_ids, dtype=completion_ids.dtype))
            length = completion_ids.shape[1]
            first_eos = torch.where(
                is_eos.any(1), is_eos.int().argmax(1), torch.full_like(is_eos[:, 0], length, dtype=torch.long)
            )
            keep = torch.arange(length).unsqueeze(0) <= first_eos.unsqueeze(1)
        elif completion_mask is not None:
            keep = completion_mask.bool()
        else:
            keep = torch.ones_like(completion_ids, dtype=torch.bool)
        rows = [ids[row_keep].tolist() for ids, row_keep in zip(completion_ids, keep, strict=True)]
        return list(tok.batch_decode(rows, skip_special_tokens=True))

    def _tokenizer(self) -> Any:
        tok = getattr(self.trainer, "_tokenizer", None) or getattr(self.trainer, "processing_class", None)
        return getattr(tok, "tokenizer", tok)

    def _eos_token_ids(self) -> list[int]:
        ids = getattr(self.trainer, "eos_token_ids", None)
        if ids:
            return [int(i) for i in ids]
        tok = self._tokenizer()
        return [] if tok is None or tok.eos_token_id is None else [int(tok.eos_token_id)]

    def _gas(self) -> int:
        return int(
            getattr(self.trainer, "current_gradient_accumulation_steps", None)
            or self.trainer.args.gradient_accumulation_steps
        )

    def _scored_in_batch_order(self, captured: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
        """The captured prompts, completions and rewards in the row order of the batch the trainer returned: a
        ``_generate_and_score_completions`` override may reorder its rows after the rewards were computed."""
        scored_ids = captured.get("completion_ids")
        if self.num_processes != 1 or scored_ids is None or output.get("completion_ids") is None:
            return captured
        rewards = captured.get("rewards_per_func")
        prompts, completions = captured.get("prompts") or [], captured.get("completions") or []
        if rewards is None or len(prompts) != len(scored_ids) or len(completions) != len(scored_ids):
            return captured
        keys = [(repr(p), rewards[j].tolist()) for j, p in enumerate(prompts)]
        pad = self.trace.manifest.get("pad_token_id")
        order = scored_row_order(scored_ids, output["completion_ids"].tolist(), pad, keys)
        if order is None:
            return captured
        return {
            **captured,
            "rewards_per_func": rewards[order],
            "prompts": [prompts[j] for j in order],
            "completions": [completions[j] for j in order],
            "completion_ids": [scored_ids[j] for j in order],
        }

    def _record_generation(
        self, generation: int, inputs: Any, output: dict[str, Any], local_rows: int
    ) -> None:
        import torch

        trainer = self.trainer
        captured = self._scored_in_batch_order(self._rewards_capture or {}, output)
        prompts = captured.get("prompts") or [row.get("prompt") for row in inputs]
        all_prompts = list(prompts)
        local_advantages = output["advantages"]
        all_advantages = local_advantages
        if self.num_processes > 1:
            from accelerate.utils import gather, gather_object

            all_prompts = list(gather_object(list(prompts)))
            all_advantages = gather(local_advantages.contiguous())
        num_generations = int(getattr(trainer, "num_generations", self.spec.num_generations))
        group_index = torch.tensor(group_ids_from_prompts(all_prompts, num_generations), dtype=torch.long)
        info = {
            "group_index": group_index,
            "rewards_per_func": captured.get("rewards_per_func"),
            "completions": captured.get("completions"),
            "prompts": prompts,
            "global_step": int(trainer.state.global_step),
            "old_logps_computed": "old_per_token_logps" in output
            and output["old_per_token_logps"] is not None,
            "local_rows": local_rows,
            "num_items_in_batch": float(output["num_items_in_batch"])
            if "num_items_in_batch" in output
            else None,
        }
        info["advantages"] = _cpu(all_advantages)
        rewards = info["rewards_per_func"]
        if rewards is not None and rewards.numel() and bool(rewards.isnan().all(dim=1).any()):
            self._unscorable_rows_seen = True  # a row no reward function scored (for the shipped-bug history)
        prompt_mask = output.get("prompt_mask")
        if prompt_mask is not None and bool((prompt_mask == 0).any()):
            self._left_padding_seen = True  # prompts of different lengths in a batch (idem)
        # this rank's rows as the reference model scores them: its log-probs are computed once per generation
        # batch, on the first checked micro-batch that needs them (see _ref_model_for)
        info["batch"] = {
            name: output[name]
            for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
            if output.get(name) is not None
        }
        info["ref_reference"] = None
        # every EOS id by source, the optimizer step now and N from the loss masks (gathered: every rank calls it)
        info["rederive"] = rederive_meta_at_generation(trainer, output)
        # whether an optimizer step really changed the policy since this batch was generated (or since the start)
        info["policy_fingerprint"] = policy_fingerprint(trainer)
        if not hasattr(
            self, "_policy_fingerprint_at_start"
        ):  # the first batch is generated before any update
            self._policy_fingerprint_at_start = info["policy_fingerprint"]
        self._generations[generation] = info
        for stale in [g for g in self._generations if g < generation - 1]:
            del self._generations[stale]
        if self.rank != 0:  # the generation step is global: rank 0 records it for every rank
            return
        tensors: dict[str, Any] = {"group_index": group_index, "advantages": _cpu(all_advantages)}
        if info["rewards_per_func"] is not None:
            tensors["rewards_per_func"] = info["rewards_per_func"]
        weights = getattr(trainer, "reward_weights", None)
        if weights is not None:
            tensors["reward_weights"] = _cpu(weights)
        meta = {
            "scope": "generation",
            "generation": generation,
            "step": info["global_step"],
            "rank": self.rank,
            "num_processes": self.num_processes,
            "num_generations": num_generations,
            "num_items_in_batch": info["num_items_in_batch"],
            "reward_functions": list(getattr(trainer, "reward_func_names", []) or []),
            "scale_rewards": self.spec.scale_rewards,
            "eos_token_ids": self._eos_token_ids(),
            "pad_token_id": self.trace.manifest.get("pad_token_id"),
            **info["rederive"],
        }
        step = TraceStep(tensors=tensors, meta=meta)
        if self.num_processes == 1:
            step.completion_text = info["completions"]
            step.prompt_text = [str(p) for p in prompts]
        if self._due(info["global_step"]):
            self._finish_step(step)

    def _record_micro_batch(self, pending: dict[str, Any], micro_batch: int) -> None:
        import torch

        trainer = self.trainer
        global_step = int(trainer.state.global_step)
        if not self._due(global_step) or pending.get("due") is False:
            return
        inputs = pending["inputs"]
        generations, global_rows = untag_rows(inputs[ROW_TAG])
        generation = generations[0]
        info = self._generations.get(generation)
        tensors: dict[str, Any] = {}
        for name, key in (
            ("prompt_ids", "prompt_ids"),
            ("prompt_mask", "prompt_mask"),
            ("completion_ids", "completion_ids"),
            ("completion_mask", "completion_mask"),
            ("advantages", "advantages"),
            ("old_logps", "old_per_token_logps"),
            ("ref_logps", "ref_per_token_logps"),
            ("sampler_logps", "sampling_per_token_logps"),
            ("sampler_is_ratio", "importance_sampling_ratio"),
            ("tool_mask", "tool_mask"),
        ):
            value = inputs.get(key)
            if value is not None:
                tensors[name] = _cpu(value)
        meta: dict[str, Any] = {
            "scope": "micro_batch",
            "step": global_step,
            "micro_batch": micro_batch,
            "rank": self.rank,
            "generation": generation,
            "gradient_accumulation_steps": self._gas(),
            "steps_per_generation": int(getattr(trainer.args, "steps_per_generation", None) or self._gas()),
            "num_processes": self.num_processes,
            "num_iterations": int(getattr(trainer, "num_iterations", 1)),
            "eos_token_ids": self._eos_token_ids(),
            "pad_token_id": self.trace.manifest.get("pad_token_id"),
            "kl_estimator": "k3",
            "global_rows": global_rows,
            "compute_dtype": self._compute_dtype(),
        }
        if "num_items_in_batch" in inputs:
            meta["num_items_in_batch"] = float(inputs["num_items_in_batch"])
        spg = meta["steps_per_generation"]
        meta["iteration"] = (self._micro_batch_counter - 1) // max(spg, 1) % max(meta["num_iterations"], 1)
        meta[EOS_SOURCES_KEY] = eos_token_id_sources(trainer)
        if info is not None:
            meta.update(info["rederive"])
            now = policy_fingerprint(trainer)
            if now is not None and info.get("policy_fingerprint") is not None:
                meta["policy_changed_since_generation"] = now != info["policy_fingerprint"]
            start = getattr(self, "_policy_fingerprint_at_start", None)
            if now is not None and start is not None:
                meta["policy_changed_since_start"] = now != start
            meta["optimizer_steps_since_old_logps"] = (
                global_step - info["global_step"] if info["old_logps_computed"] else 0
            )
            index = torch.tensor(global_rows, dtype=torch.long)
            # Canonical group tensors only when this micro-batch is the whole generation batch: otherwise its
            # groups are partial (TRL shuffles and splits the batch, and spreads it over ranks), and group-level
            # checks belong to the "generation" step, which holds every row.
            whole = len(global_rows) == int(info["group_index"].numel())
            prefix = "" if whole else "extra."
            tensors[prefix + "group_index"] = info["group_index"][index]
            if info["rewards_per_func"] is not None:
                tensors[prefix + "rewards_per_func"] = info["rewards_per_func"][index]
            if "advantages" in tensors:
                self._check_slice(tensors["advantages"], info["advantages"][index], meta)
            local_rows = info["local_rows"]
            if info["completions"] is not None:
                local = [r - self.rank * local_rows for r in global_rows]
                texts = [info["completions"][i] if 0 <= i < len(info["completions"]) else None for i in local]
                prompts = [info["prompts"][i] if 0 <= i < len(info["prompts"]) else None for i in local]
                if all(t is not None for t in texts):
                    completion_text = [str(t) for t in texts]
                    if all(isinstance(t, str) for t in texts):  # plain text (not conversational messages)
                        decoded = self._decoded_rows(info, global_rows, tensors)
                        if decoded is not None:
                            meta["decoded_completion_text"] = decoded
                else:
                    completion_text = None
            else:
                completion_text, prompts = None, None
        else:
            completion_text, prompts = None, None
            meta["notes"] = ["generation info missing: group index and rewards not captured for this step"]
        weights = getattr(trainer, "reward_weights", None)
        if weights is not None:
            tensors["reward_weights"] = _cpu(weights)
        if pending.get("logps") is not None:
            tensors["logps"] = pending["logps"]
        if "ref_logps" not in tensors and pending.get("ref_logps") is not None:  # scored in the loss (0.18)
            tensors["ref_logps"] = pending["ref_logps"]
        if pending.get("entropies") is not None:
            tensors["entropies"] = pending["entropies"]
        if pending.get("logps_grad") is not None:
            tensors["logps_grad"] = pending["logps_grad"]
        # "loss" is the value backpropagated for this micro-batch (trace format): TRL 1.x backpropagates what
        # compute_loss returns (scale 1); on 0.x transformers' Trainer divides it by GAS first (scale 1/GAS).
        if pending.get("entropy_coef") is not None:  # adaptive entropy bonus: this micro-batch's coefficient
            meta["spec_overrides"] = {"entropy_coef": pending["entropy_coef"]}
        scale = pending.get("loss_scale")
        meta["backward_scale"] = scale
        meta["loss_returned"] = float(pending["loss"])
        tensors["loss"] = pending["loss"] if scale in (None, 1.0) else pending["loss"] * scale
        step = TraceStep(
            tensors=tensors,
            completion_text=completion_text,
            prompt_text=None if prompts is None else [str(p) for p in prompts],
            meta=meta,
        )
        findings_from_slice, self._slice_findings = self._slice_findings, []
        self._finish_step(step, extra_findings=findings_from_slice)

    def _check_slice(self, used: Any, generated: Any, meta: dict[str, Any]) -> None:
        """The rows the loss used carry the advantages computed for them on the gathered batch.

        Not GRPO maths: bookkeeping. It catches a wrong ``process_slice`` or a shuffle that moves advantages
        away from their completions (the rows are followed by the tag, independently of TRL's indexing).
        """

        from grpo_check.findings import Where

        used64, generated64 = used.double().reshape(-1), generated.double().reshape(-1)
        if used64.shape != generated64.shape:
            return
        error = (used64 - generated64).abs()
        worst = int(error.argmax()) if error.numel() else 0
        figure = float(error.max()) if error.numel() else 0.0
        failed = figure > 0.0
        where = Where(
            step=meta.get("step"), micro_batch=meta.get("micro_batch"), rank=meta.get("rank"), row=worst
        )
        self._slice_findings.append(
            Finding(
                check_id="trl.advantages_slice",
                stage="advantages",
                verdict=Verdict.FAIL if failed else Verdict.PASS,
                figure=figure,
                tolerance=0.0,
                where=where,
                kind="compare",
                explanation=(
                    f"advantages the loss used differ from those computed for the same rows of the gathered "
                    f"generation batch by up to {figure:.3g} (at {where.describe()})"
                    if failed
                    else "every row of the micro-batch carries the advantage computed for it on the gathered batch"
                ),
                likely_cause=(
                    "advantages sliced for the wrong process (process_slice) or shuffled apart from their "
                    "completions (bug-catalog #6)"
                    if failed
                    else None
                ),
                fix="slice the gathered advantages with process_index * local_batch_size" if failed else None,
            )
        )

    def _decoded_rows(
        self, info: dict[str, Any] | None, global_rows: list[int], tensors: dict[str, Any]
    ) -> Any:
        """The tokenizer's decode of the micro-batch's completions: taken from one decode of this rank's whole
        generation batch when the rows match it, else decoded here."""
        local = None if info is None else self._generation_rows(info, global_rows, tensors)
        if local is None:
            return self._decode(tensors.get("completion_ids"), tensors.get("completion_mask"))
        if "decoded" not in info:
            batch = info["batch"]
            mask = batch.get("completion_mask")
            info["decoded"] = self._decode(
                _cpu(batch["completion_ids"]), None if mask is None else _cpu(mask)
            )
        decoded = info["decoded"]
        return None if decoded is None else [decoded[i] for i in local.tolist()]

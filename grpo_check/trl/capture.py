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

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import time
from collections.abc import Iterator
from typing import Any

from grpo_check.compare.tolerances import as_policy
from grpo_check.findings import Finding, InputError, Result, Verdict
from grpo_check.trace.model import Trace, TraceStep
from grpo_check.trl.spec import spec_from_trl, trainer_config_dict
from grpo_check.trl.versions import TRLSupport, check_trainer_support, library_versions

log = logging.getLogger("grpo_check.trl")

_NO_MODEL = object()  # policy_model sentinel: compare without the policy's forward pass
_UNDECIDED = "undecided"  # Attachment._forward_refusal before the first window is handed off
_HELPER_SLOTS = itertools.count()

ROW_TAG = "_grpo_check_row"
"""Column added to TRL's generation batch: each row's index in the global generation batch."""


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


def _cpu(tensor: Any) -> Any:
    return tensor.detach().to("cpu").clone()


def group_ids_from_prompts(prompts: list[Any], num_generations: int) -> list[int]:
    """Group id of each row: rows with the same prompt, in blocks of ``num_generations`` occurrences.

    Rows are grouped by prompt *identity*, not by position, so a trainer that interleaves generations
    differently from what its advantage code assumes is still grouped correctly. A prompt that appears in
    more than G rows (a duplicate prompt in the dataset) opens a new group every G occurrences.

    >>> group_ids_from_prompts(["a", "a", "b", "b", "a", "a"], 2)
    [0, 0, 1, 1, 2, 2]
    """
    seen: dict[tuple[str, int], int] = {}
    counts: dict[str, int] = {}
    out: list[int] = []
    for prompt in prompts:
        key = repr(prompt)
        occurrence = counts.get(key, 0)
        counts[key] = occurrence + 1
        block = (key, occurrence // max(num_generations, 1))
        if block not in seen:
            seen[block] = len(seen)
        out.append(seen[block])
    return out


_ATTACHED = "_grpo_check_attachment"  # the trainer attribute that holds its live attachment


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


class Attachment:
    """Live capture (and optional live comparison) on one TRL ``GRPOTrainer``. Create with :func:`attach`."""

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
    ) -> None:
        from grpo_check.trl.schedule import CheckSchedule

        # validates every and budget before the trainer is looked at; ranks agree on the budget's interval
        self.schedule = CheckSchedule(every, budget, agree=self._agree_interval)
        if getattr(trainer, _ATTACHED, None) is not None:  # detach() and close() remove it
            raise InputError(
                "this trainer already has a grpo-check attachment: close() it (or detach()) before attaching again"
            )
        self.trainer = trainer
        self.support: TRLSupport = check_trainer_support(trainer)
        self.out_dir = None if out_dir is None else os.fspath(out_dir)
        if self.out_dir == "":
            raise InputError("out_dir is empty; give a directory name (or None to keep the trace in memory)")
        for name, flag in (("live", live), ("recompute_logps", recompute_logps), ("invariants", invariants),
                           ("background", background)):  # fmt: skip
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
        self._forward_refusal: str | None = _UNDECIDED  # why the helper may not run the forward passes
        self._shipped: dict[str, int] = {}  # role -> the global step whose weights the helper holds
        self._forwards_verified = False  # the helper's first window was scored here too
        self._verification_job: int | None = None  # that window's job, until its reply is in
        self._helper_slot = next(_HELPER_SLOTS)  # this attachment's models in the (shared) helper
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
        self.skipped_invariants: dict[str, int] = {}
        self._closed = False
        self._step_checking = 0.0  # seconds this optimizer step spent on capture and checking
        self._step_ended_at: float | None = None  # perf_counter at the end of the previous optimizer step
        self._install()
        if background and live and recompute_logps:
            self._prepare_helper()

    # ------------------------------------------------------------------ setup
    @property
    def rank(self) -> int:
        return int(self.trainer.accelerator.process_index)

    @property
    def num_processes(self) -> int:
        return int(self.trainer.accelerator.num_processes)

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
                f"TRL line {self.support.line}; log-probs from {self.support.logps_method}",
            ],
            "eos_token_ids": self._eos_token_ids(),
            "pad_token_id": None if tok is None else tok.pad_token_id,
            "compute_dtype": self._compute_dtype(),
        }

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

    def _install(self) -> None:
        t = self.trainer
        hooks = [
            ("_generate_and_score_completions", self._wrap_generate),
            (self.support.loss_method, self._wrap_loss),
            (self.support.logps_method, self._wrap_logps),
            ("training_step", self._wrap_training_step),
        ]
        if self.support.rewards_method:
            hooks.insert(0, (self.support.rewards_method, self._wrap_calculate_rewards))
        else:  # TRL 0.x scores inline: capture each reward function's own output instead
            self._wrap_reward_functions()
        for name, wrapper in hooks:
            original = getattr(t, name)
            self._originals[name] = original
            setattr(t, name, wrapper(original))
        setattr(t, _ATTACHED, self)

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
        if getattr(self.trainer, _ATTACHED, None) is self:
            delattr(self.trainer, _ATTACHED)
        if getattr(self, "_original_reward_funcs", None) is not None:
            self.trainer.reward_funcs = self._original_reward_funcs
            self._original_reward_funcs = None

    # ------------------------------------------------------------------ hooks
    def _wrap_calculate_rewards(self, original: Any) -> Any:
        def wrapped(
            inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any, *args: Any, **kw: Any
        ):
            rewards_per_func = original(inputs, prompts, completions, completion_ids_list, *args, **kw)
            self._rewards_capture = {
                "rewards_per_func": _cpu(rewards_per_func),
                "prompts": list(prompts),
                "completions": [c if isinstance(c, str) else repr(c) for c in completions],
            }
            return rewards_per_func

        return wrapped

    def _wrap_generate(self, original: Any) -> Any:
        def wrapped(inputs: Any, *args: Any, **kw: Any):
            import torch

            self._rewards_capture = None
            output = original(inputs, *args, **kw)
            if not self.trainer.model.training:  # evaluation: not a training batch
                return output
            if not self.support.rewards_method:
                self._rewards_capture = self._rewards_from_reward_functions()
            generation = self._generation_counter
            self._generation_counter += 1
            local_rows = int(output["completion_ids"].shape[0])
            offset = self.rank * local_rows
            global_rows = torch.arange(offset, offset + local_rows, dtype=torch.long)
            # the tag encodes (generation, global row); it rides through TRL's shuffle and split untouched
            tag = global_rows + generation * (1 << 32)
            output[ROW_TAG] = tag.to(output["completion_ids"].device)
            start = time.perf_counter()
            self._record_generation(generation, inputs, output, local_rows)
            self._step_checking += time.perf_counter() - start
            return output

        return wrapped

    def _record_generation(
        self, generation: int, inputs: Any, output: dict[str, Any], local_rows: int
    ) -> None:
        import torch

        trainer = self.trainer
        captured = self._rewards_capture or {}
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
        # this rank's rows as the reference model scores them: its log-probs are computed once per generation
        # batch, on the first checked micro-batch that needs them (see _ref_model_for)
        info["batch"] = {
            name: output[name]
            for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
            if output.get(name) is not None
        }
        info["ref_reference"] = None
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
        }
        step = TraceStep(tensors=tensors, meta=meta)
        if self.num_processes == 1:
            step.completion_text = info["completions"]
            step.prompt_text = [str(p) for p in prompts]
        if self._due(info["global_step"]):
            self._finish_step(step)

    def _wrap_loss(self, original: Any) -> Any:
        def wrapped(model: Any, inputs: Any, *args: Any, **kw: Any):
            if not self.trainer.model.training or ROW_TAG not in inputs:
                return original(model, inputs, *args, **kw)
            if not self._due(int(self.trainer.state.global_step)):
                self._pending = {"due": False}  # counted as a micro-batch, nothing copied or hooked
                return original(model, inputs, *args, **kw)
            self._pending = {"inputs": inputs, "logps": None, "logps_grad": None, "loss_scale": None}
            self._in_loss = True
            try:
                loss = original(model, inputs, *args, **kw)
            finally:
                self._in_loss = False
            pending = self._pending
            pending["loss"] = _cpu(loss)
            if loss.requires_grad:

                def on_loss_grad(grad: Any) -> None:
                    pending["loss_scale"] = float(grad.detach().to("cpu").reshape(-1)[0])

                loss.register_hook(on_loss_grad)
            return loss

        return wrapped

    def _wrap_logps(self, original: Any) -> Any:
        def wrapped(*args: Any, **kw: Any):
            out = original(*args, **kw)
            if not self._in_loss or self._pending is None or self._pending.get("logps") is not None:
                return out
            logps, entropies = (out[0], out[1]) if isinstance(out, tuple) else (out, None)
            pending = self._pending
            pending["logps"] = _cpu(logps)
            if entropies is not None:
                pending["entropies"] = _cpu(entropies)
            if logps.requires_grad:

                def on_logps_grad(grad: Any) -> None:
                    pending["logps_grad"] = _cpu(grad)

                logps.register_hook(on_logps_grad)
            return out

        return wrapped

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

    # ------------------------------------------------------------------ micro-batch assembly
    def _gas(self) -> int:
        return int(
            getattr(self.trainer, "current_gradient_accumulation_steps", None)
            or self.trainer.args.gradient_accumulation_steps
        )

    def _record_micro_batch(self, pending: dict[str, Any], micro_batch: int) -> None:
        import torch

        trainer = self.trainer
        global_step = int(trainer.state.global_step)
        if not self._due(global_step) or pending.get("due") is False:
            return
        inputs = pending["inputs"]
        tag = inputs[ROW_TAG].detach().to("cpu")
        generations = (tag >> 32).tolist()
        global_rows = (tag & ((1 << 32) - 1)).tolist()
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
        if info is not None:
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
        if pending.get("entropies") is not None:
            tensors["entropies"] = pending["entropies"]
        if pending.get("logps_grad") is not None:
            tensors["logps_grad"] = pending["logps_grad"]
        # "loss" is the value backpropagated for this micro-batch (trace format): TRL 1.x backpropagates what
        # compute_loss returns (scale 1); on 0.x transformers' Trainer divides it by GAS first (scale 1/GAS).
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

    # ------------------------------------------------------------------ live comparison
    def _finish_step(self, step: TraceStep, extra_findings: list[Finding] | None = None) -> None:
        if self.keep_steps or self.out_dir is not None:
            self.trace.steps.append(step)
        if not self.live:
            return
        if self._batches_policy_forward(step):
            # compared when its gradient-accumulation window closes, with one policy forward for the window
            self._window.append((step, extra_findings or [], int(self.trainer.state.global_step)))
            return
        self._check_live(step, extra_findings or [])

    def _check_live(self, step: TraceStep, extra_findings: list[Finding], policy_model: Any = None) -> None:
        try:
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

    # ------------------------------------------------------------------ background checking
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

        from grpo_check.compare.stages import _dtype
        from grpo_check.compare.tolerances import TolerancePolicy

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
        if any(step_at != current for _, _, step_at in window):
            self._note(
                "policy log-probs not recomputed for a gradient-accumulation window the optimizer closed "
                "before it was checked (uneven last window)"
            )
            models: list[Any] = [_NO_MODEL] * len(window)
        elif self.background and self._window_handed_off(window):
            return
        else:
            try:
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

        from grpo_check.compare.stages import KnownLogps, model_logps

        info = self._generations.get(step.meta.get("generation"))
        if info is None or len(info.get("batch") or {}) < 4 or not step.has("ref_logps"):
            return ref_model
        local = self._generation_rows(info, step.meta["global_rows"], step.tensors)
        if local is None:
            return ref_model
        batch = info["batch"]
        if info["ref_reference"] is None:
            whole = TraceStep(tensors={name: _cpu(t) for name, t in batch.items()}, meta={})
            info["ref_reference"] = model_logps(ref_model, whole, self.spec.temperature)
        if info["ref_reference"] is None:
            return ref_model
        return KnownLogps(ref_model, info["ref_reference"][local], self.spec.temperature)

    def _generation_rows(self, info: dict[str, Any], global_rows: list[int], tensors: dict[str, Any]) -> Any:
        """This rank's rows of the generation batch that a micro-batch holds (a LongTensor of local indices), or
        ``None`` unless they provably are those rows: same widths and the same completion tokens."""
        import torch

        batch = info.get("batch") or {}
        ids, mine = batch.get("completion_ids"), tensors.get("completion_ids")
        if ids is None or mine is None or ids.shape[1] != mine.shape[1]:
            return None
        prompt_ids, my_prompt_ids = batch.get("prompt_ids"), tensors.get("prompt_ids")
        if (
            prompt_ids is not None
            and my_prompt_ids is not None
            and prompt_ids.shape[1] != my_prompt_ids.shape[1]
        ):
            return None
        local = torch.tensor(global_rows, dtype=torch.long) - self.rank * info["local_rows"]
        if not len(local) or int(local.min()) < 0 or int(local.max()) >= ids.shape[0]:
            return None
        if not torch.equal(ids[local.to(ids.device)].to("cpu"), mine):
            return None
        return local

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

    # ------------------------------------------------------------------ results
    def result(self) -> Result:
        """The live comparison so far as a :class:`Result` (empty when ``live=False``); waits for the
        background checks still running."""
        self._flush_window()
        self._collect_background(wait=True)
        return Result(
            findings=list(self.findings),
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

    def close(self) -> Trace:
        """Detach the hooks, write the trace to ``out_dir`` (if set) and return it."""
        self._flush_window()
        self._collect_background(wait=True)
        if self._shipped and self._checker is not None:  # the helper's copies of this run's models
            forget = [f"{self._helper_slot}.{role}" for role in self._shipped]
            self._checker.submit({"forget": forget}, {}, awaited=False)
            self._shipped = {}
        self.detach()
        if self.out_dir is not None and not self._closed:
            from grpo_check.trace.io import save_trace

            save_trace(self.trace, self.out_dir)
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
    )

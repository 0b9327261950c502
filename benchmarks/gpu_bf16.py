"""Checking a bf16 policy of about 0.5B parameters on a GPU: findings and overhead, as JSON.

A Qwen2 with the shape of Qwen2-0.5B (hidden 896, 24 layers, MLP 4,864, 14 heads, 2 key/value heads, a
151,936-token vocabulary, embeddings tied: 494M parameters), random weights from a seed, in bf16, trained by
TRL's real ``GRPOTrainer`` on the demo's task and configuration (the first cell of the fast matrix: k3 KL
against a reloaded reference, temperature 0.7, top-p 0.9, gradient accumulation 2, 4 steps per generation).
The tokenizer is :func:`grpo_check.bench.policy.build_tokenizer` at that vocabulary size. Nothing is
downloaded.

Three runs of ``--steps`` optimizer steps each, one after the other, the same seed: without grpo-check (the
step time to compare with), checked every step inline, and checked every step in the background
(``attach(..., background=True)``: the comparison, diagnoses and invariants in a helper process, started
before the run; on a GPU the forward passes stay on the training process). It prints one JSON object: per run the mean step time
(the first 2 steps dropped), its ratio to the unchecked run, the finding counts and every FAIL and WARN
(check, verdict, first line). What is expected: 0 FAIL and 0 WARN, i.e. the tolerance policy holds under the
GPU's bf16 kernels. Exit code 0 when no run has a FAIL or a WARN, 1 otherwise.

The ratios come from a single run each, not from interleaved rounds (``grpo-check bench`` does that): read
them as indications of the cost, not as figures with an interval.

Usage::

    python benchmarks/gpu_bf16.py -o reports/bench/gpu-bf16.json          # CUDA, 50 steps per run
    python benchmarks/gpu_bf16.py --device cpu --tiny --steps 2          # smoke test: a tiny bf16 Qwen2 on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WARMUP_STEPS = 2

# Qwen2-0.5B's shape
FULL = {
    "vocab_size": 151_936,
    "hidden_size": 896,
    "intermediate_size": 4_864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
}
# a smoke test's: seconds on a CPU
TINY = {
    "vocab_size": 2_000,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def save_policy(out_dir: Path, shape: dict[str, int], *, seed: int = 0) -> tuple[str, Any, int]:
    """A bf16 ``Qwen2ForCausalLM`` of ``shape`` with random weights from ``seed``, and its tokenizer, saved
    under ``out_dir``. Returns (path, tokenizer, parameters)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from grpo_check.bench.policy import build_tokenizer, parameter_count
    from grpo_check.demo.model import policy_config_fields, seeded_model

    tokenizer = build_tokenizer(vocab_size=shape["vocab_size"])
    config = Qwen2Config(
        **shape,
        max_position_embeddings=512,
        **policy_config_fields(tokenizer),
    )
    model = seeded_model(Qwen2ForCausalLM, config, tokenizer, seed=seed).to(torch.bfloat16)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir), tokenizer, parameter_count(model)


def build_trainer(
    model_dir: str, tokenizer: Any, work: Path, *, steps: int, device: str, completion: int
) -> Any:
    """TRL's ``GRPOTrainer`` on the demo's first fast cell, the policy loaded in bf16 and trained with bf16."""
    import copy

    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    from grpo_check.demo.matrix import cells
    from grpo_check.demo.run import QUIET_CPU_TRAINING
    from grpo_check.demo.task import correctness_reward, format_reward, make_dataset

    cell = cells("fast")[0]
    kwargs = {**cell.config_kwargs(), "bf16": True, "max_completion_length": completion}
    config = GRPOConfig(
        output_dir=str(work / "trl-output"),
        max_steps=steps,
        seed=0,
        **{**QUIET_CPU_TRAINING, "use_cpu": device == "cpu"},
        model_init_kwargs={"dtype": "bfloat16"},
        **kwargs,
    )
    trainer = GRPOTrainer(
        model=model_dir,
        reward_funcs=[correctness_reward, format_reward],
        args=config,
        train_dataset=make_dataset(256, seed=0),
        processing_class=copy.deepcopy(tokenizer),
    )
    trainer.remove_callback(PrinterCallback)  # stdout carries the JSON only
    trainer.remove_callback(ProgressCallback)
    return trainer


def fail_and_warn(findings: list[Any]) -> list[dict[str, Any]]:
    """The FAIL and WARN findings: check, verdict, stage and the explanation's first line."""
    from grpo_check.findings import Verdict

    return [
        {
            "check": f.check_id,
            "verdict": f.verdict.value,
            "stage": f.stage,
            "message": (f.explanation.splitlines() or [""])[0],
        }
        for f in findings
        if f.verdict in (Verdict.FAIL, Verdict.WARN)
    ]


def timed_run(make_trainer, *, mode: str) -> dict[str, Any]:
    """Train once (``mode``: off, inline or background); mean step time after the warm-up and the findings."""
    from transformers import TrainerCallback

    from grpo_check.trl import attach

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _synchronize()
            times.append(time.perf_counter() - self._start)

    work = Path(tempfile.mkdtemp(prefix="grpo-check-gpu-"))
    try:
        trainer = make_trainer(work)
        attachment = (
            None if mode == "off" else attach(trainer, every=1, live=True, background=mode == "background")
        )
        trainer.add_callback(StepTimer())
        trainer.train()
        close_wait = 0.0
        record: dict[str, Any] = {}
        if attachment is not None:
            start = time.perf_counter()
            attachment.close()  # waits for the background checks still running
            close_wait = time.perf_counter() - start
            result = attachment.result()
            record["counts"] = result.counts()
            record["fail_warn"] = fail_and_warn(result.findings)
        timed = times[WARMUP_STEPS:] or times
        # the wait for unfinished background checks is part of the cost, spread over the timed steps
        record["mean_step_s"] = (sum(timed) + close_wait) / max(len(timed), 1)
        record["median_step_s"] = statistics.median(timed) if timed else None
        record["steps"] = len(times)
        record["close_wait_s"] = close_wait
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="where TRL trains (default cuda)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny Qwen2 (2 layers, hidden 64, 2k tokens): a smoke test"
    )
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps per run (default 50)")
    parser.add_argument(
        "--completion-length",
        type=int,
        default=None,
        help="max_completion_length (default 32; 6 with --tiny)",
    )
    parser.add_argument("--output", "-o", type=Path, default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_bf16.py: no CUDA device; use --device cpu --tiny for a smoke test on the CPU",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from grpo_check.trl.background import shared_checker

    shape = TINY if args.tiny else FULL
    completion = args.completion_length or (6 if args.tiny else 32)
    with tempfile.TemporaryDirectory(prefix="grpo-check-gpu-policy-") as folder:
        model_dir, tokenizer, parameters = save_policy(Path(folder) / "policy", shape)

        def make(work: Path) -> Any:
            return build_trainer(
                model_dir, tokenizer, work, steps=args.steps, device=args.device, completion=completion
            )

        runs = {mode: timed_run(make, mode=mode) for mode in ("off", "inline")}
        start = time.perf_counter()
        shared_checker().warm(models=True)  # the helper's start-up (imports) is not a training step
        helper_start_s = time.perf_counter() - start
        runs["background"] = timed_run(make, mode="background")
        runs["background"]["helper_start_s"] = helper_start_s
    off = runs["off"]["mean_step_s"]
    for mode in ("inline", "background"):
        runs[mode]["ratio"] = runs[mode]["mean_step_s"] / off
    fail = sum(runs[m]["counts"].get("fail", 0) for m in ("inline", "background"))
    warn = sum(runs[m]["counts"].get("warn", 0) for m in ("inline", "background"))
    payload = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "policy": {
            "architecture": "Qwen2ForCausalLM",
            "dtype": "bfloat16",
            "parameters": parameters,
            **shape,
        },
        "max_completion_length": completion,
        "steps": args.steps,
        "warmup_steps_dropped": WARMUP_STEPS,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "fail": fail,
        "warn": warn,
        "runs": runs,
    }
    text = json.dumps(payload, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    return 0 if fail == 0 and warn == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

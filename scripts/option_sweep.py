"""Sweep TRL ``GRPOConfig`` options that change the maths, in combination, on an unpatched TRL, through the
full check (what ``grpo-check compare --trainer`` runs), and require 0 FAIL and 0 WARN.

Each configuration is drawn by a seeded sampler from the option space below, built into a real
``GRPOTrainer`` on a tiny policy made from code (the demo's model, tokenizer and task; some draws use a
tokenizer whose pad token is its EOS token, or a generation config with a second EOS id), trained a few
optimizer steps with the full check attached, and its findings counted. A configuration TRL itself refuses
at construction is skipped and counted as such.

Usage::

    python scripts/option_sweep.py --seed 0 --count 20 --steps 2
    python scripts/option_sweep.py --seed 0 --count 3 --format json -o reports/sweep.json

Exit codes: 0 every configuration clean, 1 a false alarm (a FAIL or WARN on unpatched TRL), 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import sys
import tempfile
import time
from collections import Counter
from typing import Any

#: option → the values drawn for it (the first is TRL's default where it has one).
OPTION_SPACE: dict[str, list[Any]] = {
    "loss_type": ["dapo", "grpo", "bnpo", "dr_grpo", "cispo", "sapo", "vespo", "luspo"],
    "importance_sampling_level": ["token", "sequence"],
    "beta": [0.0, 0.04],
    "use_bias_correction_kl": [True, False],
    "epsilon": [0.2, 0.1],
    "epsilon_high": [None, 0.28],
    "delta": [None, 1.5],
    "sapo_temperature_pos": [1.0, 0.8],
    "sapo_temperature_neg": [1.05, 1.2],
    "vespo_k_pos": [2.0, 1.5],
    "vespo_lambda_neg": [2.0, 2.5],
    "num_iterations": [1, 2],
    "gradient_accumulation_steps": [1, 2, 3],
    "steps_per_generation": [None, 1, 2, 4],
    "scale_rewards": ["group", "batch", "none"],
    "reward_weights": [None, [1.0, 0.5]],
    "multi_objective_aggregation": ["sum_then_normalize", "normalize_then_sum"],
    "mask_truncated_completions": [False, True],
    "top_entropy_quantile": [1.0, 0.5],
    "entropy_coef": [0.0, 0.01],
    "use_adaptive_entropy": [False, True],
    "off_policy_mask_threshold": [None, 0.5],
    "temperature": [1.0, 0.7, 1.3],
    "top_p": [1.0, 0.9],
    "top_k": [0, 12],
    "min_p": [None, 0.05],
    "repetition_penalty": [1.0, 1.1],
    "sync_ref_model": [False, True],
    "max_completion_length": [6, 3],
    "pad_is_eos": [False, True],
    "second_eos": [False, True],
}

#: options the sweep does not draw, with the reason (the docs list them).
NOT_SWEPT = {
    "tools": "tool calling needs a chat-template model; tool masks are checked by the re-derivations' unit tests",
    "use_vllm": "vLLM does not run on a CPU-only machine",
    "generation_batch_size": "drawn through steps_per_generation (TRL derives one from the other)",
}


def draw_configuration(rng: random.Random) -> dict[str, Any]:
    """One configuration: every option drawn independently, then the few pairings TRL needs made to agree."""
    drawn = {name: rng.choice(values) for name, values in OPTION_SPACE.items()}
    if drawn["loss_type"] == "luspo":
        drawn["importance_sampling_level"] = "sequence"  # TRL warns otherwise
    if drawn["loss_type"] in ("bnpo", "dr_grpo", "dapo", "cispo", "vespo"):
        drawn["importance_sampling_level"] = "token"  # sequence level is refused for these
    if drawn["beta"] == 0.0:
        drawn["sync_ref_model"] = False  # needs a reference model
    return drawn


def _reward_length(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    return [float(len(c)) / 8.0 for c in completions]


def build_trainer(drawn: dict[str, Any], *, steps: int, seed: int) -> Any:
    """A real GRPOTrainer on the demo's tiny policy with the drawn options."""
    from trl import GRPOConfig, GRPOTrainer

    from grpo_check.demo.model import build_tokenizer, save_policy
    from grpo_check.demo.task import correctness_reward, make_dataset

    workdir = tempfile.mkdtemp(prefix="grpo-check-sweep-")
    path = save_policy(f"{workdir}/policy", seed=seed, pad_is_eos=drawn["pad_is_eos"])
    tokenizer = build_tokenizer(pad_is_eos=drawn["pad_is_eos"])
    if drawn["second_eos"]:  # the model's generation config ends completions at a second id too
        from transformers import GenerationConfig

        generation = GenerationConfig.from_pretrained(path)
        generation.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("=")]
        generation.save_pretrained(path)
    options = {k: v for k, v in drawn.items() if k not in ("pad_is_eos", "second_eos")}
    gas = options.pop("gradient_accumulation_steps")
    spg = options.pop("steps_per_generation")
    config = GRPOConfig(
        output_dir=f"{workdir}/out",
        max_steps=steps,
        per_device_train_batch_size=4,
        num_generations=4,
        gradient_accumulation_steps=gas,
        steps_per_generation=spg,
        learning_rate=5e-3,
        ref_model_sync_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=seed,
        disable_tqdm=True,
        **options,
    )
    return GRPOTrainer(
        model=path,
        reward_funcs=[correctness_reward, _reward_length],
        args=config,
        train_dataset=make_dataset(64, seed=seed),
        processing_class=tokenizer,
    )


def run_configuration(drawn: dict[str, Any], *, steps: int, seed: int) -> dict[str, Any]:
    """Train one drawn configuration with the full check; what it found (counts and the failing checks)."""
    from grpo_check.findings import Verdict
    from grpo_check.trl.runner import train_checked

    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            trainer = build_trainer(drawn, steps=steps, seed=seed)
    except (ValueError, NotImplementedError) as exc:
        return {"status": "refused_by_trl", "reason": str(exc).splitlines()[0][:200]}
    with contextlib.redirect_stdout(io.StringIO()):
        run = train_checked(trainer)
    verdicts = Counter(f.verdict for f in run.result.findings)
    alarms = [
        f"{f.verdict.value} {f.check_id}: {f.explanation[:160]}"
        for f in run.result.findings
        if f.verdict in (Verdict.FAIL, Verdict.WARN)
    ]
    return {
        "status": "clean" if not alarms and run.outcome.status == "completed" else "alarm",
        "outcome": run.outcome.status,
        "outcome_line": run.outcome.line,
        "fail": verdicts[Verdict.FAIL],
        "warn": verdicts[Verdict.WARN],
        "pass": verdicts[Verdict.PASS],
        "alarms": sorted(set(alarms))[:20],
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler (and of each trainer)")
    parser.add_argument("--count", type=int, default=10, help="configurations to draw")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per configuration")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("-o", "--output", help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    if args.count < 1 or args.steps < 1:
        parser.error("--count and --steps must be >= 1")
    rng = random.Random(args.seed)
    rows = []
    for index in range(args.count):
        drawn = draw_configuration(rng)
        row = {"index": index, "options": drawn, **run_configuration(drawn, steps=args.steps, seed=args.seed)}
        rows.append(row)
        if args.format == "text":
            line = f"[{index + 1}/{args.count}] {row['status']}"
            if row["status"] != "refused_by_trl":
                line += f" ({row['fail']} fail, {row['warn']} warn, {row['seconds']} s)"
            print(line, file=sys.stderr)
            for alarm in row.get("alarms", []):
                print(f"    {alarm}", file=sys.stderr)
    summary = Counter(row["status"] for row in rows)
    document = {
        "seed": args.seed,
        "steps": args.steps,
        "summary": dict(summary),
        "runs": rows,
        "not_swept": NOT_SWEPT,
    }
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=1, default=str)
    if args.format == "json":
        print(json.dumps(document, indent=1, default=str))
    else:
        print(
            f"{summary['clean']} clean, {summary['alarm']} with alarms, {summary['refused_by_trl']} refused by TRL"
        )
    return 1 if summary["alarm"] else 0


if __name__ == "__main__":
    sys.exit(main())

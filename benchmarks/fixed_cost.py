"""Cost of checking one captured step against its size: the fixed part and the part per token.

Times ``grpo_check.trl.background.check_captured_step`` (what the TRL adapter runs per checked micro-batch,
minus the forward passes: comparison, diagnoses and invariants, sharing one step cache) on correct
synthetic steps (dapo, β = 0.04, G = 8) from a live-demo-sized micro-batch (8 rows × 6 tokens) to 1M
tokens, and reads ``seconds ≈ fixed + per_token × tokens`` off them: the fixed part as the time of the
smallest step, the part per token as the slope between the two largest. The fixed part is what a step
pays whatever its size: it decides the 10k-token throughput figure and the demo's every-step overhead. Each size is timed ``--repeats`` times, the minimum is kept (the least disturbed run on a
shared machine).

Usage::

    .venv/bin/python benchmarks/fixed_cost.py                # torch's default threads
    .venv/bin/python benchmarks/fixed_cost.py --threads 1
    .venv/bin/python benchmarks/fixed_cost.py --sizes 2 --json     # the two smallest sizes, as JSON

``benchmarks/ab_check_cost.py`` runs this script alternately on two commits to compare them.
"""

from __future__ import annotations

import argparse
import json
import time

# (prompts, completion length): 8 rows x 6 tokens is a micro-batch of the demo; then 8k, 100k, 1M tokens
_SIZES = ((1, 6), (2, 500), (25, 500), (250, 500))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per size (1M tokens: a fifth)")
    parser.add_argument("--sizes", type=int, default=len(_SIZES), help="time only the first N sizes")
    parser.add_argument("--json", action="store_true", help="print {tokens: seconds} as one JSON line")
    args = parser.parse_args(argv)

    import torch

    from grpo_check.compare.synthetic import make_step
    from grpo_check.config import GRPOSpec
    from grpo_check.trl.background import check_captured_step

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.json:
        print(f"check_captured_step, {torch.get_num_threads()} torch thread(s), minimum of the timed runs")
    points: list[tuple[int, float]] = []
    for prompts, length in _SIZES[: max(1, args.sizes)]:
        spec = GRPOSpec(num_generations=8, loss_type="dapo", beta=0.04, max_completion_length=length)
        step = make_step(spec, n_prompts=prompts, completion_length=length, vocab_size=50)
        tokens = int(step["completion_mask"].numel())
        repeats = max(2, args.repeats // 5) if tokens >= 500_000 else args.repeats
        check_captured_step(
            step, spec, model=None, ref_model=None, tolerances=None, invariants=True
        )  # warm-up
        # its own loop, not grpo_check.bench.core.least_time: ab_check_cost.py runs this script against older
        # commits' grpo_check
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            check_captured_step(step, spec, model=None, ref_model=None, tolerances=None, invariants=True)
            best = min(best, time.perf_counter() - start)
        points.append((tokens, best))
        if not args.json:
            print(f"  {tokens:>9,} tokens: {best * 1e3:8.2f} ms  {tokens / best:>12,.0f} tokens/s")
    if args.json:
        print(json.dumps({str(tokens): seconds for tokens, seconds in points}))
        return
    if len(points) < len(_SIZES):
        return
    (small_tokens, small_s), (_, _), (mid_tokens, mid_s), (large_tokens, large_s) = points
    per_token = (large_s - mid_s) / (large_tokens - mid_tokens)
    print(
        f"fixed part ≈ the {small_tokens}-token step: {small_s * 1e3:.2f} ms; per token ≈ the slope from "
        f"{mid_tokens:,} to {large_tokens:,} tokens: {per_token * 1e9:.0f} ns"
    )
    print(f"the 10k-token target (2M tokens/s) allows {10_000 / 2e6 * 1e3:.0f} ms per 10k-token step in all")


if __name__ == "__main__":
    main()

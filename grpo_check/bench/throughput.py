"""Check throughput and the check engine's fixed cost.

Throughput is tokens per second of the full invariant + compare suite on one captured step; the fixed cost
is the time the same suite takes on a micro-batch of the demo's size (8 rows × 6 tokens), where almost all
of it is per-operation dispatch and Python whatever the step's size. The step is a correct float32 step built by :func:`grpo_check.compare.synthetic.make_step` (rewards,
advantages, log-probs, ratio, KL, loss and ∂loss/∂logps all recorded), so every check has its inputs. The
work measured is what the TRL adapter does per checked micro-batch, minus the model forward pass:
``grpo_check.trl.background.check_captured_step``: ``compare_step`` (stage-isolated reference, end-to-end
reference, diagnoses), then ``run_invariants``, sharing the step's float64 copies.
"""

from __future__ import annotations

from grpo_check.bench.core import BenchFigure, least_time, median_time

TARGET_TOKENS_PER_S = 5_000_000
TARGETED_SIZES = (100_000, 1_000_000)
"""The sizes the throughput target applies to; below them a step's time is mostly the fixed cost (its own
figure, :func:`measure_fixed_cost`), and the 10k figure is reported without a target."""
SIZES = (10_000, 100_000, 1_000_000)
TARGET_FIXED_COST_S = 1e-3
DEMO_MICRO_BATCH = (
    1,
    6,
)  # (prompts, completion length): 1 group of 8 rows × 6 tokens, the demo's micro-batch
_GENERATIONS = 8
_COMPLETION_LENGTH = 500  # about this many tokens per row


def step_shape(size: int, generations: int = _GENERATIONS) -> tuple[int, int]:
    """(prompts, completion length) of a step of ``size`` tokens: whole groups of ``generations`` rows of about
    ``_COMPLETION_LENGTH`` tokens, the length adjusted so that the step holds ``size`` tokens exactly where
    they divide (10k: 2 prompts × 8 × 625; 100k: 25 × 8 × 500; 1M: 250 × 8 × 500).

    >>> step_shape(10_000), step_shape(100_000), step_shape(1_000_000)
    ((2, 625), (25, 500), (250, 500))
    """
    prompts = max(1, round(size / (generations * _COMPLETION_LENGTH)))
    return prompts, max(1, size // (prompts * generations))


def _suite(step, spec):
    """What the TRL adapter runs per captured step (inline or in the background helper), minus the forwards."""
    from grpo_check.trl.background import check_captured_step

    findings, _ = check_captured_step(
        step, spec, model=None, ref_model=None, tolerances=None, invariants=True
    )
    return findings


def measure_throughput(sizes: tuple[int, ...] = SIZES, repeats: int = 5) -> list[BenchFigure]:
    """One figure per size, plus a linearity figure (time per token at the largest ÷ at the middle size)."""
    import torch

    from grpo_check.compare.synthetic import make_step
    from grpo_check.config import GRPOSpec

    figures: list[BenchFigure] = []
    per_token: dict[int, float] = {}
    for size in sizes:
        n_prompts, length = step_shape(size)
        spec = GRPOSpec(
            num_generations=_GENERATIONS, loss_type="dapo", beta=0.04, max_completion_length=length
        )
        step = make_step(spec, n_prompts=n_prompts, completion_length=length, vocab_size=50)
        tokens = int(step["completion_mask"].numel())
        failures = [f for f in _suite(step, spec) if f.failed]
        seconds = median_time(lambda step=step, spec=spec: _suite(step, spec), repeats=repeats, warmup=1)
        rate = tokens / seconds
        per_token[size] = seconds / tokens
        targeted = size in TARGETED_SIZES
        figures.append(
            BenchFigure(
                name=f"throughput_{size // 1000}k",
                value=rate,
                unit="tokens/s",
                target=f">= {TARGET_TOKENS_PER_S:,}" if targeted else "none: mostly the fixed cost (below)",
                ok=rate >= TARGET_TOKENS_PER_S if targeted else None,
                details={
                    "tokens": tokens,
                    "rows": n_prompts * _GENERATIONS,
                    "completion_length": length,
                    "seconds": seconds,
                    "threads": torch.get_num_threads(),
                    "failures_on_correct_step": len(failures),
                },
            )
        )
    if len(sizes) >= 2:
        small, large = sorted(sizes)[-2], sorted(sizes)[-1]
        growth = per_token[large] / per_token[small]
        figures.append(
            BenchFigure(
                name="throughput_linearity",
                value=growth,
                unit=f"time/token at {large:,} ÷ at {small:,}",
                target="<= 1.5 (linear cost)",
                ok=growth <= 1.5,
            )
        )
    return figures


def measure_fixed_cost(repeats: int = 40) -> BenchFigure:
    """The check engine's fixed cost: the least time of ``repeats`` calls of the suite on a correct demo-sized
    micro-batch (dapo, β = 0.04, 8 rows × 6 tokens). The minimum, not the median: the cost is a few
    milliseconds, and on a shared machine any longer call was disturbed."""
    import torch

    from grpo_check.compare.synthetic import make_step
    from grpo_check.config import GRPOSpec

    prompts, length = DEMO_MICRO_BATCH
    spec = GRPOSpec(num_generations=_GENERATIONS, loss_type="dapo", beta=0.04, max_completion_length=length)
    step = make_step(spec, n_prompts=prompts, completion_length=length, vocab_size=50)
    failures = [f for f in _suite(step, spec) if f.failed]  # also the warm-up
    best = least_time(lambda: _suite(step, spec), repeats=repeats, warmup=0)
    return BenchFigure(
        name="fixed_cost_demo_micro_batch",
        value=best * 1e3,
        unit="ms per checked micro-batch",
        target=f"<= {TARGET_FIXED_COST_S * 1e3:g}",
        ok=best <= TARGET_FIXED_COST_S,
        details={
            "tokens": int(step["completion_mask"].numel()),
            "rows": prompts * _GENERATIONS,
            "repeats": repeats,
            "threads": torch.get_num_threads(),
            "failures_on_correct_step": len(failures),
        },
    )

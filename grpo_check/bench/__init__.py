"""`grpo-check bench`: the cost of checking, measured with the product itself.

Five figure sets, each figure printed with its target and the machine it ran on:

1. ``overhead``   training step time with checking attached ÷ without (every step, every 10th step),
                  measured side by side in one process, interleaved, same seeds, on the demo's policy; with
                  what the checks add above the floor (capture + the reference's forward passes).
   ``overhead-realistic``  the same, inline, on a 41.7M-parameter policy with a 32k vocabulary
                  (:mod:`grpo_check.bench.policy`): the cost at a size people train.
2. ``memory``     peak memory above the input logits while computing float64 per-token log-probs and
                  entropy for B=2, T=2048, V=151,936 bf16 logits (target ≤ 25 % of the logits' size).
3. ``throughput`` tokens per second of the full invariant + compare suite on a captured step at 10k, 100k
                  and 1M tokens (target ≥ 2M tokens/s on 2 cores, cost linear in tokens).
4. ``startup``    ``grpo-check --help`` wall time ÷ ``python -c "import torch"`` wall time (target ≤ 0.2).
"""

from grpo_check.bench.core import BenchFigure, machine_description

__all__ = ["BenchFigure", "machine_description"]

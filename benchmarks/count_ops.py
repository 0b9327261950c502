"""Count the torch operations that checking one demo micro-batch runs, per part of the check engine.

Runs ``grpo_check.trl.background.check_captured_step`` once (after a warm-up) on a correct synthetic
demo-sized step (8 rows × 6 tokens, dapo, β = 0.04, G = 8) under a ``TorchFunctionMode`` that counts every
torch call (functions, methods, ``Tensor`` properties excluded), and attributes each call to the part of the
engine it came from: the innermost ``grpo_check`` module on the Python stack (``invariants.ratio``,
``compare.stage_findings``, ``reference.loss``, ``diagnose.objective``...). With ``--dispatch`` it also
counts the ATen operators reached (a ``TorchDispatchMode``: what the autograd pass and composite functions
decompose into). It also prints how many Python function calls one check makes (cProfile).

An operation costs a few microseconds of dispatch whatever the tensor's size, so on a micro-batch the
count is what the fixed cost follows; unlike a timing it does not move with the machine's load.

Usage::

    .venv/bin/python benchmarks/count_ops.py                  # ops per part, then the most called ops
    .venv/bin/python benchmarks/count_ops.py --dispatch --top 30
    .venv/bin/python benchmarks/count_ops.py --prompts 25 --length 500   # a 100k-token step
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import sys
from typing import Any


def _part_of_caller() -> str:
    """The innermost ``grpo_check`` module on the stack, without the package prefix."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("grpo_check.") and not name.startswith("grpo_check._step_cache"):
            return name.removeprefix("grpo_check.")
        frame = frame.f_back
    return "(outside grpo_check)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=1, help="prompts (G = 8 rows each; default 1)")
    parser.add_argument("--length", type=int, default=6, help="completion length (default 6)")
    parser.add_argument("--top", type=int, default=15, help="most called ops to list (0: none)")
    parser.add_argument("--dispatch", action="store_true", help="also count ATen operators per part")
    args = parser.parse_args(argv)

    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    from grpo_check.compare.synthetic import make_step
    from grpo_check.config import GRPOSpec
    from grpo_check.trl.background import check_captured_step

    by_part: collections.Counter[str] = collections.Counter()
    by_op: collections.Counter[str] = collections.Counter()
    aten_by_part: collections.Counter[str] = collections.Counter()

    class _CountCalls(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
            if not name.endswith("__get__"):  # property reads (.shape, .dtype, .grad) are no operations
                by_part[_part_of_caller()] += 1
                by_op[name] += 1
            return func(*args, **(kwargs or {}))

    class _CountAten(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            aten_by_part[_part_of_caller()] += 1
            return func(*args, **(kwargs or {}))

    spec = GRPOSpec(num_generations=8, loss_type="dapo", beta=0.04, max_completion_length=args.length)
    step = make_step(spec, n_prompts=args.prompts, completion_length=args.length, vocab_size=50)

    def check() -> list[Any]:
        findings, _ = check_captured_step(
            step, spec, model=None, ref_model=None, tolerances=None, invariants=True
        )
        return findings

    check()  # warm-up: first-call imports and lazy initialisation are not the steady state
    with _CountCalls():
        findings = check()
    profiler = cProfile.Profile()  # Python function calls (C functions included), the other fixed cost
    profiler.runcall(check)
    python_calls = pstats.Stats(profiler).total_calls
    if args.dispatch:
        with _CountAten():
            check()
    tokens = int(step["completion_mask"].numel())
    print(f"check_captured_step on a correct {tokens}-token step: {len(findings)} findings")
    print(f"{python_calls:>6} Python function calls (cProfile, C functions included)")
    print(
        f"{sum(by_part.values()):>6} torch calls in all"
        + (f", {sum(aten_by_part.values())} ATen operators" if args.dispatch else "")
    )
    for part, count in by_part.most_common():
        aten = f"  {aten_by_part.get(part, 0):>6} ATen" if args.dispatch else ""
        print(f"{count:>6}  {part}{aten}")
    if args.top:
        print(f"--- the {args.top} most called")
        for name, count in by_op.most_common(args.top):
            print(f"{count:>6}  {name}")


if __name__ == "__main__":
    main()

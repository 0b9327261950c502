"""Compare the cost of checking a step between two commits, run alternately on the same machine.

Checks out ``--before`` (default ``HEAD``) into a temporary git worktree and runs
``benchmarks/fixed_cost.py --json`` alternately against that tree and this checkout, ``--runs`` times each,
so that drifts in machine load hit both sides alike. Each run reports, per step size, the minimum of
``--repeats`` calls of ``check_captured_step``; the script prints, per size, the median of those minima for
each side and the change. The step sizes are the first ``--sizes`` of ``fixed_cost.py`` (48 tokens: a demo
micro-batch; 8,000 tokens). Uncommitted changes count as "after".

Usage::

    .venv/bin/python benchmarks/ab_check_cost.py --before 7e9c6ce
    .venv/bin/python benchmarks/ab_check_cost.py --before HEAD~3 --runs 7 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def _run(source: Path, args: argparse.Namespace) -> dict[str, float]:
    """One ``fixed_cost.py --json`` run with ``grpo_check`` imported from ``source``."""
    command = [
        sys.executable,
        str(_ROOT / "benchmarks" / "fixed_cost.py"),
        "--json",
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
        "--sizes",
        str(args.sizes),
    ]
    env = {**os.environ, "PYTHONPATH": str(source)}  # ahead of the editable install of this checkout
    out = subprocess.run(command, env=env, cwd=source, capture_output=True, text=True, check=True).stdout
    return {tokens: float(seconds) for tokens, seconds in json.loads(out.strip().splitlines()[-1]).items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="HEAD", help="commit to compare this checkout with")
    parser.add_argument("--runs", type=int, default=5, help="alternating runs per side")
    parser.add_argument("--repeats", type=int, default=40, help="timed calls per size and run (minimum kept)")
    parser.add_argument("--sizes", type=int, default=2, help="first N step sizes of fixed_cost.py")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="grpo-check-ab-") as scratch:
        before_tree = Path(scratch) / "before"
        subprocess.run(
            ["git", "-C", str(_ROOT), "worktree", "add", "--detach", str(before_tree), args.before],
            check=True,
            capture_output=True,
        )
        try:
            minima: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
            for index in range(args.runs):
                for side, source in (("before", before_tree), ("after", _ROOT)):
                    minima[side].append(_run(source, args))
                print(f"run {index + 1}/{args.runs} done", file=sys.stderr)
        finally:
            subprocess.run(
                ["git", "-C", str(_ROOT), "worktree", "remove", "--force", str(before_tree)],
                check=False,
                capture_output=True,
            )
    print(f"check_captured_step, {args.threads} thread(s): median over {args.runs} alternating runs of the")
    print(f"minimum of {args.repeats} calls; before = {args.before}, after = this checkout")
    for tokens in minima["before"][0]:
        before = statistics.median(run[tokens] for run in minima["before"])
        after = statistics.median(run[tokens] for run in minima["after"])
        change = (after - before) / before
        print(f"  {int(tokens):>9,} tokens: {before * 1e3:7.2f} ms -> {after * 1e3:7.2f} ms  ({change:+.1%})")


if __name__ == "__main__":
    main()

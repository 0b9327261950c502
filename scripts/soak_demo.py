"""Train every configuration of the demo matrix for many steps, checked on every step, and list any FAIL or
WARN: a hunt for false positives that the demo's few steps never reach.

Usage::

    .venv/bin/python scripts/soak_demo.py --steps 40 --seed 2
    .venv/bin/python scripts/soak_demo.py --steps 60 --seed 0 --only bnpo-batch-gas4-spg2-T1.3
    .venv/bin/python scripts/soak_demo.py --steps 30 --bf16     # TRL's default mixed precision (bf16 autocast)
    .venv/bin/python scripts/soak_demo.py --steps 12 --processes 2   # two ranks (torchrun, gloo, CPU)

Exit code 1 when a configuration gave a FAIL or WARN (each is printed), else 0.
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per configuration")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", action="append", help="configuration name (repeatable; default: all)")
    parser.add_argument("--bf16", action="store_true", help="train under bf16 autocast (TRL's default)")
    parser.add_argument("--processes", type=int, default=1, help="ranks (torchrun on CPU; float32 only)")
    args = parser.parse_args(argv)
    if args.bf16 and args.processes > 1:
        parser.error("--bf16 runs in this process only: the ranks of --processes train the matrix as it is")

    import dataclasses

    from grpo_check.demo.matrix import MATRIX
    from grpo_check.demo.run import run_cell, run_cell_multiprocess
    from grpo_check.findings import Verdict

    dirty = 0
    for cell in MATRIX:
        if args.only and cell.name not in args.only:
            continue
        if args.bf16:  # the demo trains in float32 to hold TRL to float32 tolerances; users mostly do not
            cell = dataclasses.replace(cell, overrides={**cell.overrides, "bf16": True})
        start = time.perf_counter()
        if args.processes > 1:
            run = run_cell_multiprocess(cell, processes=args.processes, seed=args.seed, steps=args.steps)
        else:
            run = run_cell(cell, seed=args.seed, steps=args.steps)
        result = run.result
        bad = [f for f in result.findings if f.verdict in (Verdict.FAIL, Verdict.WARN)]
        dirty += bool(bad)
        print(
            f"{cell.name:40s} {args.steps} steps, seed {args.seed}{', bf16' if args.bf16 else ''}"
            f"{f', {args.processes} ranks' if args.processes > 1 else ''}: {len(result.findings):6d} findings, "
            f"{len(bad)} FAIL/WARN ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        for finding in bad:
            print("   ", finding.message().replace("\n", "\n    "), flush=True)
    return 1 if dirty else 0


if __name__ == "__main__":
    raise SystemExit(main())

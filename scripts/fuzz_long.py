"""The long fuzz run: every fuzz target of tests/fuzz, batch after batch with fresh seeds, for a time budget.

Each batch runs in a child process under an address-space cap (default 6 GiB) and a wall-clock timeout;
each input under a per-input alarm (20 s). Prints, per target and in total: inputs tried, clean errors,
accepted, tracebacks, hangs, and the peak resident memory of any child.

    nice -n 10 python scripts/fuzz_long.py --minutes 10
    python scripts/fuzz_long.py --minutes 2 --targets trace,config --json fuzz.json

Exit code 0 when no input crashed or hung, 1 otherwise (the first tracebacks are printed).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "fuzz")]

import fuzz_harness as h  # noqa: E402
import fuzz_targets  # noqa: E402

KEYS = ("tried", "clean", "accepted", "tracebacks", "hangs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="time budget (default 10)")
    parser.add_argument("--targets", default=",".join(fuzz_targets.TARGETS), help="comma-separated targets")
    parser.add_argument("--batch", type=int, default=100, help="inputs per child process (default 100)")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="first seed (default: the clock)")
    parser.add_argument("--memory-gib", type=float, default=6.0, help="address-space cap per child")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = sorted(set(targets) - set(fuzz_targets.TARGETS))
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(fuzz_targets.TARGETS)}")
    deadline = time.monotonic() + args.minutes * 60
    totals = {t: dict.fromkeys(KEYS, 0) for t in targets}
    examples: list[str] = []
    peak = 0.0
    seed = args.seed
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    while time.monotonic() < deadline:
        for target in targets:
            if time.monotonic() >= deadline:
                break
            figures = h.run_bounded(
                target, examples=args.batch, seed=seed, timeout=900, memory=int(args.memory_gib * (1 << 30))
            )
            seed += 1
            for key in KEYS:
                totals[target][key] += figures[key]
            examples += figures["examples"][: max(0, 10 - len(examples))]
            peak = max(peak, figures["peak_rss_mib"])
            done = {key: sum(t[key] for t in totals.values()) for key in KEYS}
            print(
                f"[{time.strftime('%H:%M:%S')}] {target:9s} +{figures['tried']:4d}  total {done}", flush=True
            )
    total = {key: sum(t[key] for t in totals.values()) for key in KEYS}
    print()
    print(f"{'target':10s}" + "".join(f"{key:>12s}" for key in KEYS))
    for target, row in totals.items():
        print(f"{target:10s}" + "".join(f"{row[key]:12d}" for key in KEYS))
    print(f"{'total':10s}" + "".join(f"{total[key]:12d}" for key in KEYS))
    print(
        f"peak memory of a child: {peak:.0f} MiB (cap {args.memory_gib:g} GiB); started {started}; first seed {args.seed}"
    )
    print(f"machine: {platform.node()} {platform.machine()}, python {platform.python_version()}")
    for example in examples:
        print("\n---\n" + example)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "started": started,
                    "minutes": args.minutes,
                    "first_seed": args.seed,
                    "targets": totals,
                    "total": total,
                    "peak_rss_mib": peak,
                    "examples": examples,
                },
                indent=2,
            )
            + "\n"
        )
    return 0 if total["tracebacks"] == 0 and total["hangs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

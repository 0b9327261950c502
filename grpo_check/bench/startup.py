"""Start-up cost: ``grpo-check --help`` ÷ ``python -c "import torch"`` (both cold subprocesses)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from grpo_check.bench.core import BenchFigure

TARGET_RATIO = 0.2


def _wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure_startup(repeats: int = 5) -> BenchFigure:
    """Interleave the two commands ``repeats`` times and take the ratio of medians."""
    help_cmd = [sys.executable, "-m", "grpo_check", "--help"]
    torch_cmd = [sys.executable, "-c", "import torch"]
    _wall(help_cmd), _wall(torch_cmd)  # warm the file cache for both
    help_times, torch_times = [], []
    for _ in range(repeats):
        help_times.append(_wall(help_cmd))
        torch_times.append(_wall(torch_cmd))
    help_s, torch_s = statistics.median(help_times), statistics.median(torch_times)
    ratio = help_s / torch_s
    return BenchFigure(
        name="startup",
        value=ratio,
        unit="x import torch",
        target=f"<= {TARGET_RATIO}",
        ok=ratio <= TARGET_RATIO,
        details={"help_s": help_s, "import_torch_s": torch_s, "repeats": repeats},
    )

"""Measure the reports of a long run: 1,000 steps x 8 micro-batches (the figures quoted in docs/reports.md).

The Result is built from real comparisons: one correct synthetic step and the same step with its advantages
scaled by 1.5 (a normalisation bug) are compared with the reference once each (comparison, invariants,
diagnoses); their findings are then
repeated for every (step, micro-batch) of the run, the bug present from step ``--bug-from`` on (each copy
gets its own coordinates; its explanation keeps the template's text). Prints the
size of each report file, the time to render it and, with ``--browser``, the time headless Chromium takes to
open the HTML report (load event).

Run: python scripts/measure_report_scale.py --steps 1000 --micro-batches 8 --browser
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import tempfile
import time
from datetime import date
from pathlib import Path


def long_run_result(steps: int, micro_batches: int, bug_from: int):
    from grpo_check.compare import compare
    from grpo_check.compare.synthetic import make_step
    from grpo_check.config import GRPOSpec
    from grpo_check.findings import Result
    from grpo_check.trace.model import Trace

    spec = GRPOSpec(num_generations=4, loss_type="grpo", beta=0.04, max_completion_length=16)
    good = make_step(spec, n_prompts=2, completion_length=16)
    bad = make_step(spec, n_prompts=2, completion_length=16)
    bad.tensors["advantages"] = bad["advantages"] * 1.5
    manifest = {"trainer": "synthetic", "config": spec.to_dict(), "format_version": 1}
    templates = {
        broken: [
            f for f in compare(Trace(manifest=manifest, steps=[one])).findings if f.where.step is not None
        ]
        for broken, one in ((False, good), (True, bad))
    }
    findings = []
    for step in range(steps):
        for micro_batch in range(micro_batches):
            for finding in templates[step >= bug_from]:
                where = dataclasses.replace(finding.where, step=step, micro_batch=micro_batch, rank=0)
                findings.append(dataclasses.replace(finding, where=where))
    return Result(findings, metadata={"source": f"synthetic: {steps} steps x {micro_batches} micro-batches"})


def open_in_chromium(page: Path) -> float:
    """Seconds from navigation to the load event of ``page`` in headless Chromium (Playwright)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        tab = browser.new_page()
        start = time.perf_counter()
        tab.goto(page.resolve().as_uri(), wait_until="load")
        seconds = time.perf_counter() - start
        browser.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--micro-batches", type=int, default=8)
    parser.add_argument("--bug-from", type=int, default=990)
    parser.add_argument("--browser", action="store_true", help="also time opening report.html in Chromium")
    args = parser.parse_args()

    from grpo_check.report import FILE_NAMES, render

    result = long_run_result(args.steps, args.micro_batches, args.bug_from)
    counts = result.counts()
    print(
        f"{args.steps} steps x {args.micro_batches} micro-batches: {len(result.findings):,} findings {counts}"
    )
    out = Path(tempfile.mkdtemp(prefix="grpo-check-scale-"))
    for fmt in ("md", "html", "junit", "text", "json"):
        start = time.perf_counter()
        text = render(result, fmt)
        seconds = time.perf_counter() - start
        path = out / FILE_NAMES[fmt]
        path.write_text(text, encoding="utf-8")
        print(f"  {path.name:12} {path.stat().st_size / 1024:>10,.0f} KiB   rendered in {seconds:6.2f} s")
    if args.browser:
        print(
            f"  report.html opened (load event) in headless Chromium in {open_in_chromium(out / 'report.html'):.2f} s"
        )
    print(f"  {date.today().isoformat()}, {platform.platform()}, Python {platform.python_version()}")
    print(f"  files: {out}")


if __name__ == "__main__":
    main()

"""Run the history cases: each on its buggy and its fixing TRL release, in per-release environments.

``python -m grpo_check.zoo.history.run --case ID --output FILE`` is the part that runs *inside* a release's
environment (the installed TRL is the release under test): the portable trainer with the case's settings,
checked live for two optimizer steps; the outcome goes to ``FILE`` as JSON. :func:`run_history` drives it
from the outside and :class:`HistoryCard` scores it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grpo_check.zoo.history import HistoryCase, select_history


@dataclasses.dataclass
class ReleaseRun:
    """One case on one release: what failed, where the first divergence is, which shipped bugs were named."""

    release: str
    failing: list[str] = dataclasses.field(default_factory=list)
    first_stage: str | None = None
    named: list[str] = dataclasses.field(default_factory=list)
    error: str = ""
    seconds: float = 0.0


@dataclasses.dataclass
class HistoryOutcome:
    case: HistoryCase
    buggy: ReleaseRun
    fixed: ReleaseRun

    @property
    def detected(self) -> bool:
        return not self.buggy.error and bool(self.buggy.failing)

    @property
    def localised(self) -> bool:
        return self.detected and self.buggy.first_stage in self.case.bug.stages

    @property
    def diagnosed(self) -> bool:
        return self.detected and self.case.bug.id in self.buggy.named

    @property
    def fixed_clean(self) -> bool:
        return not self.fixed.error and not self.fixed.failing

    @property
    def scored(self) -> bool:
        return self.detected and self.localised and self.diagnosed and self.fixed_clean


@dataclasses.dataclass
class HistoryCard:
    outcomes: list[HistoryOutcome]

    def all_scored(self) -> bool:
        return bool(self.outcomes) and all(outcome.scored for outcome in self.outcomes)

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for o in self.outcomes:
            bug = o.case.bug
            out.append(
                {
                    "bug": bug.title,
                    "id": bug.id,
                    "releases affected": f"{bug.first}–{bug.last}",
                    "fixed in": f"{bug.fixed_in} (PR #{bug.pr})",
                    "run on": f"{o.buggy.release} / {o.fixed.release}",
                    "found (stage, check)": (
                        f"{o.buggy.first_stage}, {', '.join(sorted(set(o.buggy.failing))[:3])}"
                        if o.detected
                        else (o.buggy.error or "not found")
                    ),
                    "named": "yes" if o.diagnosed else "no",
                    "fixing release clean": "yes"
                    if o.fixed_clean
                    else (o.fixed.error or "no: " + ", ".join(sorted(set(o.fixed.failing))[:4])),
                }
            )
        return out

    def render(self, output_format: str = "text") -> str:
        rows = self.rows()
        if output_format == "json":
            return json.dumps({"cases": rows, "all_scored": self.all_scored()}, indent=2)
        if not rows:
            return "no history case selected"
        keys = list(rows[0])
        if output_format == "md":
            lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(str(r[k]).replace("|", "/") for k in keys) + " |" for r in rows]
            return "\n".join(lines)
        lines = []
        for r in rows:
            lines.append(f"{r['id']}: {r['bug']}")
            lines.extend(f"  {k}: {r[k]}" for k in keys[2:])
        scored = sum(o.scored for o in self.outcomes)
        lines.append(f"history: {scored}/{len(self.outcomes)} shipped bugs found on their release, named, "
                     "and clean on the fixing release")  # fmt: skip
        return "\n".join(lines)


def _release_run(release: str, outcome_file: Path, code: int, tail: str, seconds: float) -> ReleaseRun:
    if outcome_file.exists():
        data = json.loads(outcome_file.read_text())
        return ReleaseRun(
            release=release, seconds=seconds, **{k: data[k] for k in ("failing", "first_stage", "named")}
        )
    lines = [line for line in tail.strip().splitlines() if line.strip()]
    return ReleaseRun(release=release, error=f"exit {code}: {lines[-1] if lines else ''}", seconds=seconds)


def run_history(
    cases: list[HistoryCase],
    *,
    cache: Path | None = None,
    timeout: float = 1800.0,
    progress: Callable[[str], None] | None = None,
) -> HistoryCard:
    """Run every case on its buggy and fixing release (building or reusing the environments under ``cache``)."""
    from grpo_check.zoo.history.envs import (
        DEFAULT_CACHE,
        EnvironmentError_,
        child_environment,
        env_with_release,
        run_logged,
    )

    cache = cache or DEFAULT_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    outcomes = []
    with open(cache / "history.log", "a") as log:
        for case in cases:
            runs = []
            for release in (case.buggy, case.fixed):
                if progress:
                    progress(f"{case.id} on TRL {release} ...")
                start = time.perf_counter()
                try:
                    python = env_with_release(release, cache, log=log, timeout=timeout)
                except EnvironmentError_ as exc:
                    runs.append(ReleaseRun(release=release, error=str(exc)))
                    continue
                with tempfile.TemporaryDirectory() as work:
                    outcome_file = Path(work) / "outcome.json"
                    cmd = [str(python), "-m", "grpo_check.zoo.history.run", "--case", case.id,
                           "--output", str(outcome_file)]  # fmt: skip
                    code, tail = run_logged(cmd, log=log, timeout=timeout, env=child_environment())
                    runs.append(_release_run(release, outcome_file, code, tail, time.perf_counter() - start))
            outcomes.append(HistoryOutcome(case, runs[0], runs[1]))
    return HistoryCard(outcomes)


def run_case_here(case: HistoryCase, steps: int = 2) -> dict[str, Any]:
    """The case on the installed TRL, checked live: failing check ids, first divergence stage, named bugs."""
    from grpo_check.demo.portable import run_live

    result = run_live(steps=steps, overrides=case.settings)
    failing = [f for f in result.findings if f.failed]
    first = result.first_divergence()
    return {
        "failing": [f.check_id for f in failing],
        "first_stage": None if first is None else first.stage,
        "named": sorted(
            {
                (f.details or {}).get("shipped_bug")
                for f in failing
                if f.check_id.startswith("trl.shipped_bug.")
            }
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one history case on the installed TRL (checked live).")
    parser.add_argument("--case", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    chosen = [case for case in select_history([args.case]) if case.id == args.case]
    if not chosen:
        print(f"no history case {args.case!r}", file=sys.stderr)
        return 2
    Path(args.output).write_text(json.dumps(run_case_here(chosen[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

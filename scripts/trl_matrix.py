#!/usr/bin/env python3
"""Run grpo-check's TRL adapter on every TRL release line, 0.14 to 1.16, and write the support table.

For each release, in a virtual environment of its own pin set (CPU torch 2.13.0 first, then the
transformers/accelerate/datasets that release runs with, then grpo-check with --no-deps and its light
dependencies), this script

1. runs the adapter's release-agnostic contract tests (tests/trl/test_trl_contract.py), and
2. runs a demo configuration: ``python -m grpo_check.demo.portable --steps 2``, TRL's real GRPOTrainer on
   the tiny policy with the settings the release has, checked live (the reference's own forward passes too),

and writes the table (release, transformers used, result, seconds) as Markdown and JSON.

Releases that share a pin set share one environment (``<cache>/venv-<pins>``); each release is installed
into it in turn (pip resolves against local caches, so a switch takes seconds). Runs are sequential.

Examples::

    python scripts/trl_matrix.py --list                       # the releases and their pins
    python scripts/trl_matrix.py                              # every release line (about an hour on 2 cores)
    python scripts/trl_matrix.py --releases 0.14.0,0.22.2     # some releases
    python scripts/trl_matrix.py --releases ci                # the three CI runs
    python scripts/trl_matrix.py --md docs/trl-versions.md    # rewrite the table in the docs page

Exit code: 0 when every release that can train on this machine passed, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's grpo_check

from grpo_check.zoo.history.envs import (
    LIGHT_DEPS,
    TORCH,
    EnvironmentError_,
    child_environment,
    ensure_env,
    installed,
    pins_for,
    run_logged,
)

# one release per minor line (the line's last patch release)
RELEASES = [
    "0.14.0",
    "0.15.2",
    "0.16.1",
    "0.17.0",
    "0.18.2",
    "0.19.1",
    "0.20.0",
    "0.21.0",
    "0.22.2",
    "0.23.1",
    "0.24.0",
    "0.25.1",
    "0.26.2",
    "0.27.2",
    "0.28.0",
    "0.29.1",
    "1.0.0",
    "1.1.0",
    "1.2.0",
    "1.3.0",
    "1.4.0",
    "1.5.1",
    "1.6.0",
    "1.7.1",
    "1.8.0",
    "1.9.2",
    "1.10.0",
    "1.11.0",
    "1.12.0",
    "1.13.0",
    "1.14.2",
    "1.15.0",
    "1.16.0",
]
CI_RELEASES = ("0.14.0", "0.22.2", "1.16.0")

# releases that cannot train on a CPU-only torch: recorded as such, not run
CANNOT_TRAIN_ON_CPU = {
    "1.15.0": "cannot train on a CPU-only torch: its fused log-prob head calls a Triton kernel",
}


@dataclasses.dataclass
class Row:
    release: str
    transformers: str = ""
    result: str = ""
    contract: str = ""
    demo: str = ""
    seconds: float = 0.0
    detail: str = ""


def _summary(tail: str) -> str:
    """pytest's closing line, or the last line of the output."""
    lines = [line.strip("= ") for line in tail.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"\d+ (passed|failed|error)", line):
            return line
    return lines[-1] if lines else ""


def demo_outcome(code: int, result_json: Path) -> tuple[str, bool]:
    """The demo's cell and whether it passed: clean, or failing only where a shipped bug of the release is
    named (the run found the bug it should find); any other failure is a FAIL."""
    if code == 0:
        return "clean", True
    if code != 1 or not result_json.exists():
        return f"exit {code}", False
    findings = json.loads(result_json.read_text()).get("findings", [])
    failing = [f for f in findings if f.get("verdict") == "fail"]
    unexplained = [f for f in failing if not (f.get("details") or {}).get("shipped_bug")]
    named = sorted(
        f"{f['details']['shipped_bug']} (fixed in {f['details']['fixed_in']}, PR #{f['details']['pr']})"
        for f in failing
        if f.get("check_id", "").startswith("trl.shipped_bug.")
    )
    if unexplained or not named:
        return f"FAIL: {len(unexplained)} unexplained failing findings", False
    return "shipped bug found: " + "; ".join(sorted(set(named))), True


QUICK = "not background and not does_not_change"  # --quick: the contract tests that train once each


def run_release(release: str, cache: Path, *, demo: bool, timeout: float, log, quick: bool = False) -> Row:
    row = Row(release)
    start = time.perf_counter()
    pins = pins_for(release)
    try:
        python = ensure_env(pins, cache, log=log, timeout=timeout)
        code, tail = run_logged(
            [str(python), "-m", "pip", "install", "-q", f"trl=={release}", TORCH, *pins.requirements],
            timeout=timeout,
            log=log,
        )
        if code:
            raise EnvironmentError_(f"pip install trl=={release} failed: {_summary(tail)}")
    except EnvironmentError_ as exc:
        row.result, row.detail = "install failed", str(exc)
        row.seconds = time.perf_counter() - start
        return row
    row.transformers = installed(python, "transformers")
    if release in CANNOT_TRAIN_ON_CPU:
        row.result, row.detail = "not run", CANNOT_TRAIN_ON_CPU[release]
        row.seconds = time.perf_counter() - start
        return row
    env = child_environment()
    code, tail = run_logged(
        [
            str(python),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/trl/test_trl_contract.py",
            *(["-k", QUICK] if quick else []),
        ],
        env=env,
        timeout=timeout,
        log=log,
    )
    row.contract = ("pass" if code == 0 else "FAIL") + (" (quick)" if quick else "") + ": " + _summary(tail)
    ok = code == 0
    if demo:
        out = cache / "demo" / release
        shutil.rmtree(out, ignore_errors=True)  # a run that dies must not be read from an older result.json
        code, tail = run_logged(
            [str(python), "-m", "grpo_check.demo.portable", "--steps", "2", "--output", str(out)],
            log=log, timeout=timeout, env=env,
        )  # fmt: skip
        row.demo, demo_ok = demo_outcome(code, out / "result.json")
        ok = ok and demo_ok
        if not demo_ok:
            row.detail = _summary(tail)
    row.result = "pass" if ok else "FAIL"
    row.seconds = time.perf_counter() - start
    return row


def markdown(rows: list[Row], command: str) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Generated {date} by `{command}` on {platform.machine()} Linux, 2 CPU cores, CPU-only torch "
        f"2.13.0, Python {platform.python_version()}.",
        "",
        "| TRL | transformers | result | contract tests | demo (live, 2 steps) | seconds | note |",
        "|---|---|---|---|---|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.release} | {row.transformers or '-'} | {row.result} | {row.contract or '-'} | "
            f"{row.demo or '-'} | {row.seconds:.0f} | {row.detail.replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- trl-matrix:begin -->", "<!-- trl-matrix:end -->"


def write_markdown(path: Path, table: str) -> None:
    """Replace the table between the markers in ``path`` (or write ``path`` as the table alone)."""
    block = f"{BEGIN}\n{table}{END}"
    if path.exists() and BEGIN in path.read_text():
        text = path.read_text()
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def merge_json(path: Path, rows: list[Row]) -> list[Row]:
    """Rows already in ``path`` for releases not run now, plus ``rows``, in release order."""
    known: dict[str, Row] = {}
    if path.exists():
        for data in json.loads(path.read_text()).get("releases", []):
            known[data["release"]] = Row(**data)
    for row in rows:
        known[row.release] = row

    def order(release: str) -> tuple[int, ...]:
        return tuple(int(p) for p in release.split("."))

    return [known[r] for r in sorted(known, key=order)]


def parse_releases(text: str) -> list[str]:
    if text == "all":
        return list(RELEASES)
    if text == "ci":
        return list(CI_RELEASES)
    chosen = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in chosen if not re.fullmatch(r"\d+\.\d+\.\d+", r)]
    if bad or not chosen:
        raise ValueError(f"trl_matrix: expected all, ci or releases like 0.14.0,1.16.0; got {text!r}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )  # fmt: skip
    parser.add_argument(
        "--releases", default="all", help="all (default), ci, or a comma list like 0.14.0,1.16.0"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("GRPO_CHECK_TRL_CACHE", Path.home() / ".cache" / "grpo-check" / "trl")),
        help="where the environments, logs and demo reports go (default ~/.cache/grpo-check/trl)",
    )
    parser.add_argument(
        "--md", type=Path, help="Markdown file whose table (between trl-matrix markers) to rewrite"
    )
    parser.add_argument(
        "--json", type=Path, help="JSON file to merge the rows into (releases not run are kept)"
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per command (default 1200)")
    parser.add_argument("--no-demo", action="store_true", help="contract tests only")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="no demo, and only the contract tests that train once (not the background and no-change ones)",
    )
    parser.add_argument("--list", action="store_true", help="print the releases and their pins, and exit")
    parser.add_argument(
        "--print-pins", metavar="RELEASE", help="print what RELEASE is installed with (one line), and exit"
    )
    args = parser.parse_args(argv)
    try:
        releases = parse_releases(args.print_pins or args.releases)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.print_pins:
        print(" ".join([TORCH, *pins_for(releases[0]).requirements, *LIGHT_DEPS]))
        return 0
    if args.list:
        for release in releases:
            pins = pins_for(release)
            note = CANNOT_TRAIN_ON_CPU.get(release, "")
            print(f"{release:8} {pins.name:7} {' '.join(pins.requirements)}  {note}".rstrip())
        return 0
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    with open(args.cache_dir / "matrix.log", "a") as log:
        for release in releases:
            print(f"TRL {release} ...", flush=True)
            row = run_release(
                release,
                args.cache_dir,
                demo=not (args.no_demo or args.quick),
                timeout=args.timeout,
                log=log,
                quick=args.quick,
            )
            print(f"TRL {release}: {row.result} ({row.contract} / demo {row.demo or '-'}) {row.seconds:.0f}s "
                  f"{row.detail}".rstrip(), flush=True)  # fmt: skip
            rows.append(row)
            if args.json:  # written after every release: a long run that stops keeps what it did
                table = merge_json(args.json, [row])
                args.json.write_text(
                    json.dumps({"releases": [dataclasses.asdict(r) for r in table]}, indent=2) + "\n"
                )
    table_rows = merge_json(args.json, []) if args.json else rows
    whole = sorted(releases) == sorted(RELEASES)  # every line, in whatever order
    command = "python scripts/trl_matrix.py" + ("" if whole else f" --releases {args.releases}")
    text = markdown(table_rows, command)
    if args.md:
        write_markdown(args.md, text)
    print(text)
    return 0 if all(r.result in ("pass", "not run") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Run the blind set (tests/blind/*.py factories) through ``grpo-check compare --trainer`` and summarise.

Usage: python scripts/blind_run.py [OUT_DIR] [CASE ...]   (one process: the libraries import once)
Each case's reports land in OUT_DIR/<case>; the summary (case, exit code, failing stages, first findings)
is printed and written to OUT_DIR/summary.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def summarise(out: Path) -> dict:
    data = json.loads((out / "result.json").read_text())
    bad = [f for f in data["findings"] if f["verdict"] in ("fail", "warn")]
    stages = sorted({f"{f['stage']}:{f['verdict']}" for f in bad})
    first = [f"{f['verdict']} {f['stage']} {f['check_id']}: {f['explanation'][:160]}" for f in bad[:6]]
    return {"stages": stages, "first": first, "counts": data.get("counts")}


def main() -> int:
    from typer.testing import CliRunner

    from grpo_check.cli import app

    out_root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/blind")
    names = sys.argv[2:] or sorted(p.stem for p in (ROOT / "tests/blind").glob("[bc][ut][gl]_*.py"))
    runner = CliRunner()
    rows = []
    for name in names:
        out = out_root / name
        start = time.time()
        res = runner.invoke(
            app,
            ["compare", "--trainer", f"tests/blind/{name}.py:build_trainer", "--steps", "2", "-o", str(out),
             "--format", "json"],
        )  # fmt: skip
        row = {"case": name, "exit": res.exit_code, "seconds": round(time.time() - start, 1)}
        headline = [ln for ln in res.output.splitlines() if ln.startswith("grpo-check:")]
        row["headline"] = headline[0] if headline else res.output.strip().splitlines()[-1:]
        if (out / "result.json").is_file():
            row.update(summarise(out))
        if res.exception is not None and res.exit_code not in (0, 1, 4):
            row["exception"] = repr(res.exception)
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
    (out_root / "summary.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

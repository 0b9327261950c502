"""Assemble README.md from the sections in docs/readme/ (edit the sections, then run this script)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = [
    "00-intro.md",
    "trl-and-demo.md",
    "compare.md",
    "traces-and-reports.md",
    "invariants.md",
    "testing.md",
    "audit.md",
    "zoo.md",
    "bench.md",
    "reference.md",
    "99-development.md",
]


def main() -> None:
    sections = [(ROOT / "docs" / "readme" / name).read_text(encoding="utf-8").strip() for name in ORDER]
    (ROOT / "README.md").write_text("\n\n".join(sections) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

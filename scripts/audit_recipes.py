"""Collect real GRPO recipe files from local git mirrors of public repositories, and audit every one.

    python scripts/audit_recipes.py collect MIRROR_GIT_DIR... [--out DIR]
    python scripts/audit_recipes.py figures [--out DIR] [--trl-version 1.16] [--markdown]

``collect`` walks every version of every ``*.yaml``/``*.yml``/``*.json`` file in each repository's history
(``git rev-list --all --objects``), keeps the ones that set ``num_generations`` (a GRPOConfig field no other
TRL trainer has), drops exact duplicates across repositories, and writes them under ``DIR`` with a
``MANIFEST.json`` naming each file's repository, path, blob id and the repository's licence. Only
repositories whose LICENSE is Apache-2.0, MIT or BSD are collected. The recipes are third-party data: they
are not part of grpo-check's sources; ``tests/audit/test_audit_recipes.py`` audits them when ``DIR`` exists.

``figures`` audits every collected file and prints the figures docs/audit.md publishes: files audited fully,
files refused, findings by rule.

Default ``DIR``: ``$GRPO_CHECK_RECIPES``, else ``~/.cache/grpo-check/audit-recipes``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

SUFFIXES = (".yaml", ".yml", ".json")
GRPO_KEY = re.compile(rb"""^\s*["']?num_generations["']?\s*:""", re.MULTILINE)


def default_dir() -> Path:
    return Path(
        os.environ.get("GRPO_CHECK_RECIPES") or Path.home() / ".cache" / "grpo-check" / "audit-recipes"
    )


def licence_of(git_dir: Path) -> str | None:
    """SPDX id of the repository's LICENSE at HEAD when it is permissive (Apache-2.0, MIT, BSD), else None."""
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE"):
        text = _git(git_dir, "show", f"HEAD:{name}", check=False)
        if not text:
            continue
        head = text[:3000].decode("utf-8", "replace")
        if "Apache License" in head and "Version 2.0" in head:
            return "Apache-2.0"
        if head.lstrip().startswith("MIT License") or "Permission is hereby granted, free of charge" in head:
            return "MIT"
        if "Redistribution and use in source and binary forms" in head:
            return "BSD-3-Clause" if "Neither the name" in head else "BSD-2-Clause"
    return None


def _git(git_dir: Path, *args: str, check: bool = True, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(["git", "--git-dir", str(git_dir), *args], input=stdin, capture_output=True)
    if check and done.returncode != 0:
        raise RuntimeError(done.stderr.decode(errors="replace"))
    return done.stdout


def repo_name(git_dir: Path) -> str:
    """owner/name from a mirror path such as /work/.mirror/huggingface+open-r1/repo."""
    folder = git_dir.parent.name if git_dir.name in ("repo", ".git") else git_dir.name
    return folder.replace("+", "/", 1)


def blobs(git_dir: Path) -> list[tuple[str, str]]:
    """(blob id, path) of every config-file version in the history, one path per blob."""
    listing = _git(git_dir, "rev-list", "--all", "--objects", check=False).decode("utf-8", "replace")
    found: dict[str, str] = {}
    for line in listing.splitlines():
        parts = line.split(" ", 1)
        if len(parts) == 2 and parts[1].lower().endswith(SUFFIXES):
            found.setdefault(parts[0], parts[1])
    return sorted(found.items(), key=lambda item: (item[1], item[0]))


def collect(git_dirs: list[Path], out: Path) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    manifest: list[dict[str, str]] = []
    seen: set[str] = set()
    counts: dict[str, int] = {}
    for git_dir in git_dirs:
        name = repo_name(git_dir)
        licence = licence_of(git_dir)
        if licence is None:
            print(f"skip {name}: no permissive LICENSE at HEAD", file=sys.stderr)
            continue
        kept = 0
        for blob, path in blobs(git_dir):
            content = _git(git_dir, "cat-file", "blob", blob, check=False)
            if not content or len(content) > 200_000 or not GRPO_KEY.search(content):
                continue
            digest = hashlib.sha256(content).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            slug = name.replace("/", "__")
            target = Path(slug) / f"{blob[:10]}-{Path(path).name}"
            (out / target).parent.mkdir(parents=True, exist_ok=True)
            (out / target).write_bytes(content)
            manifest.append(
                {"file": target.as_posix(), "repo": name, "path": path, "blob": blob, "licence": licence}
            )
            kept += 1
        counts[name] = kept
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return counts


def notice(directory: Path) -> str:
    """tests/audit/recipes/NOTICE.md: every source repository of the corpus, its licence and file count."""
    entries = load_manifest(directory)
    counts = collections.Counter((e["repo"], e["licence"]) for e in entries)
    rows = "\n".join(
        f"| `{repo}` | {licence} | {n} | https://github.com/{repo} |"
        for (repo, licence), n in sorted(counts.items())
    )
    return f"""# Recipe corpus: sources and licences

`tests/audit/test_audit_recipes.py::test_every_real_recipe_is_audited_fully` audits GRPO recipe files
written by other projects. They are third-party data and are not part of grpo-check's sources: they are
collected from local clones of the repositories below by `scripts/audit_recipes.py collect` (every version of
every YAML/JSON file in each repository's history that sets `num_generations`, exact duplicates dropped) into
`$GRPO_CHECK_RECIPES` (default `~/.cache/grpo-check/audit-recipes`), with a `MANIFEST.json` naming each file's
repository, path, git blob id and licence. Only repositories whose LICENSE is Apache-2.0, MIT or BSD are
collected; each file remains under its repository's licence and copyright.

| repository | licence | recipe versions | source |
|---|---|---|---|
{rows}

Total: {len(entries)} files from {len(counts)} repositories.
"""


def load_manifest(directory: Path) -> list[dict[str, str]]:
    return json.loads((directory / "MANIFEST.json").read_text(encoding="utf-8"))


KEY_RULES = ("GA403", "GA404", "GA411", "GA417", "GA418")  # keys GRPOConfig does not take


def _against_trl(directory: Path, entries: list[dict[str, str]], trl_version: str) -> dict[str, object]:
    """Construct the installed TRL's GRPOConfig from each recipe and compare with the audit, on one process
    (this machine's world size; a recipe's own num_processes is overridden to match).

    Two comparisons: (1) the recipe's GRPOConfig keys as written (script, model, project and launcher keys go to
    other dataclasses, as TRL's CLI routes them) — TRL refuses ⇔ the audit has an error; (2) the same without the
    keys the audit reports as not taken by GRPOConfig (GA403/GA404/GA411/GA417/GA418), so that the value rules
    are compared too — TRL refuses ⇔ the audit has an error other than those."""
    import warnings

    import trl

    from grpo_check.audit import audit
    from grpo_check.audit.loader import LAUNCHER_KEYS, load_file
    from grpo_check.audit.versions import EXTENSION_KEYS, SCRIPT_KEYS

    routed_elsewhere = set(SCRIPT_KEYS) | set(EXTENSION_KEYS) | set(LAUNCHER_KEYS)

    def refusal(kwargs: dict) -> str | None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                # this machine's facts override the recipe's: no GPU (bf16 off, use_cpu), no logging services
                trl.GRPOConfig(
                    **{"output_dir": "unused", **kwargs, "report_to": "none", "use_cpu": True, "bf16": False}
                )
            except Exception as exc:  # any refusal counts
                return f"{type(exc).__name__}: {str(exc)[:120]}"
        return None

    counts: dict[str, collections.Counter[str]] = {
        "as written": collections.Counter(),
        "keys dropped": collections.Counter(),
    }
    disagreements: list[str] = []
    for entry in entries:
        result = audit(directory / entry["file"], trl_version=trl_version, num_processes=1)
        errors = {f.check_id for f in result if f.details.get("severity") == "error"}
        dropped = {f.details["fields"][0] for f in result if f.check_id in KEY_RULES}
        kwargs = {
            k: v for k, v in load_file(directory / entry["file"]).values.items() if k not in routed_elsewhere
        }
        for label, keys_out, judged in (
            ("as written", set(), errors),
            ("keys dropped", dropped, errors - set(KEY_RULES)),
        ):
            refused = refusal({k: v for k, v in kwargs.items() if k not in keys_out})
            counts[label][
                f"TRL {'refuses' if refused else 'accepts'} / audit {'error' if judged else 'no error'}"
            ] += 1
            if bool(refused) != bool(judged):
                disagreements.append(
                    f"{label}: {entry['file']}: TRL {refused or 'accepts'}; audit errors {sorted(judged)}"
                )
    return {"counts": {k: dict(v) for k, v in counts.items()}, "disagreements": disagreements}


def figures(
    directory: Path, trl_version: str, num_processes: int | None = None, against_trl: bool = False
) -> dict[str, object]:
    """Audit every collected recipe: files audited fully, refused (with the reason), findings by rule."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from grpo_check.audit import audit
    from grpo_check.findings import InputError

    by_rule: collections.Counter[str] = collections.Counter()
    files_with: collections.Counter[str] = collections.Counter()
    refused: list[tuple[str, str]] = []
    entries = load_manifest(directory)
    audited = 0
    for entry in entries:
        try:
            result = audit(directory / entry["file"], trl_version=trl_version, num_processes=num_processes)
        except InputError as exc:
            refused.append((entry["file"], str(exc)))
            continue
        audited += 1
        ids = [f.check_id for f in result]
        by_rule.update(ids)
        files_with.update(set(ids))
    return {
        "against_trl": _against_trl(directory, entries, trl_version) if against_trl else None,
        "files": len(entries),
        "repositories": len({e["repo"] for e in entries}),
        "audited_fully": audited,
        "refused": refused,
        "findings_by_rule": dict(sorted(by_rule.items())),
        "files_by_rule": dict(sorted(files_with.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("git_dirs", nargs="+", type=Path)
    c.add_argument("--out", type=Path, default=None)
    c.add_argument("--notice", type=Path, default=None, help="also write the NOTICE file here")
    f = sub.add_parser("figures")
    f.add_argument("--out", type=Path, default=None)
    f.add_argument("--trl-version", default="1.16")
    f.add_argument("--num-processes", type=int, default=None)
    f.add_argument(
        "--against-trl", action="store_true", help="also construct the installed GRPOConfig per recipe"
    )
    f.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    out = args.out or default_dir()
    if args.command == "collect":
        counts = collect(args.git_dirs, out)
        for name, kept in counts.items():
            print(f"{name}: {kept} recipe versions")
        print(f"{sum(counts.values())} files in {out}")
        if args.notice is not None:
            args.notice.write_text(notice(out), encoding="utf-8")
        return 0
    result = figures(out, args.trl_version, args.num_processes, args.against_trl)
    if not args.markdown:
        print(json.dumps(result, indent=1))
        return 0
    from grpo_check.audit.rules import RULES

    print(
        f"{result['files']} recipe files from {result['repositories']} repositories; "
        f"{result['audited_fully']} audited fully, {len(result['refused'])} refused.\n"
    )
    print("| rule | severity | title | files | findings |\n|---|---|---|---|---|")
    for rule_id, count in sorted(
        result["findings_by_rule"].items(), key=lambda kv: (-result["files_by_rule"][kv[0]], kv[0])
    ):
        current = RULES[rule_id]
        print(
            f"| `{rule_id}` | {current.severity} | {current.title} | {result['files_by_rule'][rule_id]} | {count} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

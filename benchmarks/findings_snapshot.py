"""Snapshot what checking says about a fixed set of steps, to show a speed-up changed no verdict or figure.

Runs ``grpo_check.trl.background.check_captured_step`` (what the TRL adapter runs per captured step, minus
the forward passes) on a fixed, diverse set of steps and writes every finding, all fields in full (repr of
each figure, so a change in the last digit shows), as JSON:

* the steps of a short live demo run (generation and micro-batch steps, captured from TRL);
* correct synthetic steps (``grpo_check.compare.synthetic.make_step``) for six loss types × β ∈ {0, 0.04}
  × KL estimator k1/k3;
* each of those broken seven ways: negated gradient, negated advantages, an infinite log-prob, positive
  log-probs, ``ref_logps`` equal to the policy's, a hole in the completion mask, a doubled loss.

``--against FILE`` compares with an earlier snapshot and prints the first differences; exit code 1 when
anything differs. Typical use around an optimisation::

    .venv/bin/python benchmarks/findings_snapshot.py -o /tmp/before.json        # on the old commit
    .venv/bin/python benchmarks/findings_snapshot.py --against /tmp/before.json # on the new one

``--forward`` checks the demo steps with the reference's own forward passes too, exactly as the live run
handed them over (the policy's and the reference model's log-probs), so that a change to those passes shows.
``--ignore-counts`` (with ``--against``) compares the findings of the forward family (``logps.model``,
``logps.ref_model``, ``logps.old_model``) on their check, verdict, stage, catalog id, cause, fix and step
coordinates only: what legitimately changes when the forward passes run on fewer rows (row and element
counts, the largest error over the rows compared and where it is, the explanation that states them) is left
out. Every other finding is still compared in every field. The step meta that records the rows
(``forward_rows``) is not part of a snapshot.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo")


def _set(name: str, make: Callable[[Any], Any]) -> Callable[[Any], None]:
    def mutate(step: Any) -> None:
        if step.has(name):
            step.tensors[name] = make(step)

    return mutate


def _with_value(name: str, row: int, token: int, value: float) -> Callable[[Any], None]:
    def make(step: Any) -> Any:
        changed = step[name].clone()
        changed[row, token] = value
        return changed

    return _set(name, make)


_BREAKS: dict[str, Callable[[Any], None]] = {
    "negated_grad": _set("logps_grad", lambda s: -s["logps_grad"]),
    "negated_advantages": _set("advantages", lambda s: -s["advantages"]),
    "infinite_logp": _with_value("logps", 1, 2, float("inf")),
    "positive_logps": _set("logps", lambda s: s["logps"].abs()),
    "ref_is_policy": _set("ref_logps", lambda s: s["logps"].clone()),
    "mask_hole": _with_value("completion_mask", 0, 1, 0),
    "doubled_loss": _set("loss", lambda s: s["loss"] * 2),
}


def _demo_steps() -> list[tuple[Any, Any, dict[str, Any]]]:
    """The steps a 3-step live demo run checks, with their specs and the models the run handed over (captured,
    not checked, here)."""
    from grpo_check.bench.overhead import _timed_run, check_captured_step_replaced, demo_trainer_factory

    captured: list[tuple[Any, Any, dict[str, Any]]] = []

    def keep(real: Callable[..., Any]) -> Callable[..., Any]:
        def check(step: Any, spec: Any, **kwargs: Any) -> Any:
            models = {"model": kwargs.get("model"), "ref_model": kwargs.get("ref_model")}
            captured.append((step, spec, models))
            return [], []

        return check

    with check_captured_step_replaced(keep):
        _timed_run(demo_trainer_factory(0), 1, 3)
    return captured


_NO_MODELS: dict[str, Any] = {"model": None, "ref_model": None}


def _cases(
    demo: bool, loss_types: tuple[str, ...], forward: bool = False
) -> Iterator[tuple[str, Any, Any, dict[str, Any]]]:
    from grpo_check.compare.synthetic import make_step
    from grpo_check.config import GRPOSpec

    if demo:
        for index, (step, spec, models) in enumerate(_demo_steps()):
            yield f"demo/{index}/{step.meta.get('scope')}", step, spec, _NO_MODELS
            if forward and any(model is not None for model in models.values()):
                yield f"demo-forward/{index}/{step.meta.get('scope')}", step, spec, models
    for loss_type in loss_types:
        for beta in (0.0, 0.04):
            for estimator in ("k3", "k1"):
                spec = GRPOSpec(
                    num_generations=4,
                    loss_type=loss_type,
                    beta=beta,
                    max_completion_length=7,
                    kl_estimator=estimator,
                )
                step = make_step(spec, n_prompts=3, completion_length=7, vocab_size=20, seed=1)
                name = f"{loss_type}/beta={beta}/{estimator}"
                yield name, step, spec, _NO_MODELS
                for broken_name, mutate in _BREAKS.items():
                    broken = copy.deepcopy(step)
                    mutate(broken)
                    yield f"{name}/{broken_name}", broken, spec, _NO_MODELS


def _finding_record(finding: Any) -> dict[str, str]:
    return {field.name: repr(getattr(finding, field.name)) for field in dataclasses.fields(finding)}


def snapshot(
    demo: bool = True, loss_types: tuple[str, ...] = _LOSS_TYPES, forward: bool = False
) -> dict[str, Any]:
    """{case: {"findings": [...], "not_captured": [...]}} (or {"error": ...}) for every case."""
    import torch

    from grpo_check.trl.background import check_captured_step

    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    for name, step, spec, models in _cases(demo, loss_types, forward):
        try:
            with torch.no_grad():
                findings, not_captured = check_captured_step(
                    step, spec, tolerances=None, invariants=True, **models
                )
        except Exception as error:  # a crash is part of what the snapshot records
            out[name] = {"error": repr(error)}
            continue
        out[name] = {"findings": [_finding_record(f) for f in findings], "not_captured": not_captured}
    return out


# the findings of the reference's own forward passes, and the fields of theirs that do not depend on how many
# rows those passes ran on (--ignore-counts)
FORWARD_CHECKS = frozenset({"logps.model", "logps.ref_model", "logps.old_model"})
_FORWARD_REPRS = frozenset(repr(check_id) for check_id in FORWARD_CHECKS)
_KEPT_WITHOUT_COUNTS = ("check_id", "stage", "verdict", "kind", "catalog_id", "likely_cause", "fix")


def without_counts(snap: dict[str, Any]) -> dict[str, Any]:
    """``snap`` with the forward-family findings reduced to the fields that do not depend on the number of rows
    the forward passes ran on (plus the step coordinates of ``where``)."""
    out: dict[str, Any] = {}
    for name, case in snap.items():
        if "findings" not in case:
            out[name] = case
            continue
        findings = []
        for finding in case["findings"]:
            if finding["check_id"] in _FORWARD_REPRS:  # a record holds the repr() of each field
                kept = {key: finding[key] for key in _KEPT_WITHOUT_COUNTS}
                kept["where"] = _step_coordinates(finding["where"])
                finding = kept
            findings.append(finding)
        out[name] = {**case, "findings": findings}
    return out


def _step_coordinates(where: str) -> str:
    """``Where(step=0, micro_batch=1, rank=0, prompt=..., row=...)`` -> its step, micro-batch and rank only."""
    import re

    return ", ".join(re.findall(r"(?:step|micro_batch|rank)=[^,)]*", where))


def differences(before: dict[str, Any], after: dict[str, Any], limit: int = 5) -> list[str]:
    """Human-readable lines for the first ``limit`` cases that differ (and a count of all of them)."""
    lines: list[str] = []
    changed = [name for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]
    for name in changed[:limit]:
        old, new = before.get(name), after.get(name)
        if old is None or new is None:
            lines.append(f"{name}: only in the {'new' if old is None else 'old'} snapshot")
            continue
        old_findings, new_findings = old.get("findings", []), new.get("findings", [])
        if len(old_findings) != len(new_findings) or "error" in old or "error" in new:
            lines.append(
                f"{name}: {len(old_findings)} findings -> {len(new_findings)} ({old.get('error') or new.get('error') or ''})"
            )
            continue
        for old_finding, new_finding in zip(old_findings, new_findings, strict=True):
            fields = [key for key in old_finding if old_finding[key] != new_finding.get(key)]
            if fields:
                field = fields[0]
                lines.append(
                    f"{name}: {old_finding['check_id']} {field}: {old_finding[field]} -> {new_finding[field]}"
                )
                break
        else:
            lines.append(f"{name}: not_captured {old.get('not_captured')} -> {new.get('not_captured')}")
    if changed:
        lines.append(f"{len(changed)} of {len(set(before) | set(after))} case(s) differ")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", help="write the snapshot (JSON) here")
    parser.add_argument("--against", help="compare with this earlier snapshot; exit 1 if anything differs")
    parser.add_argument("--no-demo", action="store_true", help="synthetic steps only (no TRL run)")
    parser.add_argument(
        "--forward", action="store_true", help="also check the demo steps with the reference's forward passes"
    )
    parser.add_argument(
        "--ignore-counts",
        action="store_true",
        help="with --against: compare the forward-family findings without their row counts and figures",
    )
    args = parser.parse_args(argv)
    if args.output and not Path(args.output).resolve().parent.is_dir():
        parser.error(f"-o {args.output}: no such directory")
    before = None
    if args.against:  # read first: a wrong path fails before the steps are checked, not after
        try:
            with open(args.against, encoding="utf-8") as handle:
                before = json.load(handle)
        except (OSError, ValueError) as error:
            parser.error(f"--against {args.against}: {error}")
    current = snapshot(demo=not args.no_demo, forward=args.forward)
    findings = sum(len(case.get("findings", [])) for case in current.values())
    print(f"{len(current)} steps checked, {findings} findings", file=sys.stderr)
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as handle:
                json.dump(current, handle, indent=1, sort_keys=True)
        except OSError as error:
            print(f"findings_snapshot.py: cannot write {args.output}: {error}", file=sys.stderr)
            return 2
    if before is not None:
        if args.ignore_counts:
            before, current = without_counts(before), without_counts(current)
        lines = differences(before, current)
        print("\n".join(lines) if lines else f"identical to {args.against}")
        return 1 if lines else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

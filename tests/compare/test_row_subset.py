"""The row subset the reference's forward passes run on (grpo_check.stepref.row_subset), and the forward-pass
comparisons restricted to it: every kind of row covered, deterministic, never empty, real row indices; a
log-prob bug on a row outside the subset is still caught through the row of its kind that is inside."""

from __future__ import annotations

import math

import pytest
import torch

from grpo_check.compare.synthetic import make_step
from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.stepref.row_subset import (
    FRACTION,
    META_KEY,
    RowSubset,
    all_rows,
    row_labels,
    select_rows,
)


def _batch(pads: list[int], lengths: list[int], width: int = 6, prompt: int = 5) -> dict[str, torch.Tensor]:
    prompt_mask = torch.ones(len(pads), prompt, dtype=torch.long)
    for row, pad in enumerate(pads):
        prompt_mask[row, :pad] = 0
    completion_mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        completion_mask[row, :length] = 1
    return {"prompt_mask": prompt_mask, "completion_mask": completion_mask}


def _kinds(labels, rows, kind):
    return {value for row in rows for k, value in labels[row] if k == kind}


def test_every_kind_of_row_is_covered():
    # 16 rows, 4 groups of 4; paddings 0..3, lengths 1..6 (6 = truncated at the width), rows 9 and 13 rare
    pads = [0, 1, 2, 0, 1, 0, 0, 1, 2, 3, 0, 1, 0, 0, 2, 1]
    lengths = [6, 3, 2, 6, 4, 5, 6, 3, 2, 1, 6, 3, 4, 6, 2, 3]
    batch = _batch(pads, lengths)
    groups = torch.arange(16) // 4
    labels = row_labels(batch["prompt_mask"], batch["completion_mask"], group_index=groups)
    subset = select_rows(labels)
    every = range(16)
    for kind in ("padding", "end", "length", "group"):
        assert _kinds(labels, subset.rows, kind) == _kinds(labels, every, kind), kind
    assert 9 in subset.rows  # the only row with 3 pad tokens (and the only length-1 row)
    assert len(subset.rows) >= math.ceil(16 * FRACTION) and len(subset.rows) < 16
    assert subset.covers == (
        "every prompt padding",
        "truncated and EOS-ended rows",
        "every completion-length bucket",
        "every group",
    )
    reasons = dict(zip(subset.rows, subset.reasons, strict=True))
    assert "prompt padding 3" in reasons[9]
    assert all(reason for reason in subset.reasons)  # every chosen row says why


def test_eos_ids_tell_an_eos_ended_row_of_full_width_from_a_truncated_one():
    batch = _batch([0, 0, 0], [4, 4, 2], width=4)
    ids = torch.tensor([[5, 6, 7, 2], [5, 6, 7, 8], [5, 2, 0, 0]])
    with_eos = row_labels(
        batch["prompt_mask"], batch["completion_mask"], completion_ids=ids, eos_token_ids=[2]
    )
    assert (
        ("end", "eos") in with_eos[0]
        and ("end", "truncated") in with_eos[1]
        and ("end", "eos") in with_eos[2]
    )
    without = row_labels(batch["prompt_mask"], batch["completion_mask"])
    assert ("end", "truncated") in without[0]  # full width, no EOS id known: counted as truncated


def test_the_choice_is_deterministic_and_never_empty():
    batch = _batch([1, 0, 2, 0, 1, 0, 0, 2], [3, 6, 2, 6, 1, 5, 6, 4])
    labels = row_labels(batch["prompt_mask"], batch["completion_mask"], group_index=torch.arange(8) // 4)
    assert select_rows(labels) == select_rows(list(labels))
    one = _batch([0], [6])
    single = select_rows(row_labels(one["prompt_mask"], one["completion_mask"]))
    assert single.rows == (0,) and single.is_all
    assert select_rows([]).rows == ()
    alike = _batch([0] * 12, [6] * 12)  # one kind only: the quarter, spread over the batch
    spread = select_rows(row_labels(alike["prompt_mask"], alike["completion_mask"]))
    assert spread.rows == (0, 4, 8)


def test_every_micro_batch_of_a_window_keeps_rows():
    batch = _batch([0] * 16, [6] * 16)
    labels = row_labels(batch["prompt_mask"], batch["completion_mask"], parts=[row // 4 for row in range(16)])
    subset = select_rows(labels)
    assert {row // 4 for row in subset.rows} == {0, 1, 2, 3}


def test_rows_without_completion_tokens_are_chosen_only_where_nothing_else_covers_their_micro_batch():
    # micro-batch 0: rows 0-1 fully masked (truncated rows a trainer masks out), rows 2-3 with tokens;
    # micro-batch 1: every row masked
    batch = _batch([0] * 8, [0, 0, 3, 6, 0, 0, 0, 0])
    labels = row_labels(batch["prompt_mask"], batch["completion_mask"], parts=[0] * 4 + [1] * 4)
    assert labels[0] == frozenset({("part", 0)})
    subset = select_rows(labels)
    assert {2, 3} <= set(subset.rows) and not {0, 1} & set(subset.rows)
    assert any(row >= 4 for row in subset.rows)  # micro-batch 1 keeps a row, though it compares nothing
    alone = _batch([0] * 4, [0, 0, 0, 0])
    assert select_rows(row_labels(alone["prompt_mask"], alone["completion_mask"])).rows == (0,)


def test_rows_with_anomalous_trainer_logps_are_chosen():
    batch = _batch([0] * 12, [6] * 12)
    logps = -torch.rand(12, 6) - 0.1
    logps[7, 2] = 0.5  # positive: a sign flip or a broken helper
    logps[10, 1] = float("nan")
    old = logps.clone()
    old[3, 4] += 0.2  # the largest |logps − old_logps|
    labels = row_labels(batch["prompt_mask"], batch["completion_mask"], logps=logps, old_logps=old)
    subset = select_rows(labels)
    assert {3, 7, 10} <= set(subset.rows)
    reasons = dict(zip(subset.rows, subset.reasons, strict=True))
    assert "non-finite or positive log-prob" in reasons[7] + reasons[10]
    assert "largest |logps − old_logps|" in reasons[3]


def test_meta_round_trip_and_malformed_meta_means_every_row():
    subset = select_rows(row_labels(*_batch([0, 1, 0, 0], [6, 6, 3, 6]).values()))
    assert RowSubset.from_meta(subset.to_meta()) == subset
    assert RowSubset.from_meta({"rows": [0, 9], "of": 4}) is None
    assert RowSubset.from_meta(None) is None
    assert all_rows(3).is_all and all_rows(3).describe() == "3 of 3 rows"
    with pytest.raises(ValueError, match="fraction"):
        select_rows([], fraction=2.0)


# ----------------------------------------------------------------------------- the comparisons on a subset
class _Policy(torch.nn.Module):
    """A deterministic toy causal LM whose log-probs depend on the positions (so padding matters)."""

    def __init__(self, vocab: int = 20) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = torch.nn.Embedding(vocab, 8)
        self.position = torch.nn.Embedding(64, 8)
        self.head = torch.nn.Linear(8, vocab)
        self.calls: list[int] = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
        self.calls.append(int(input_ids.shape[0]))
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        hidden = self.embed(input_ids) + self.position(position_ids.clamp(min=0))
        hidden = torch.cumsum(hidden, dim=1) / torch.arange(1, input_ids.shape[1] + 1).view(1, -1, 1)
        return type("Out", (), {"logits": self.head(hidden)})()


def _step_with_model_logps(spec: GRPOSpec, model: _Policy, pads: list[int]):
    from grpo_check.stepref.forward import model_logps

    step = make_step(spec, n_prompts=3, completion_length=5, vocab_size=20, seed=2)
    rows = step["completion_ids"].shape[0]
    prompt = torch.randint(1, 20, (rows, 4), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(rows, 4, dtype=torch.long)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    step.tensors["prompt_ids"], step.tensors["prompt_mask"] = prompt * mask, mask
    with torch.no_grad():
        step.tensors["logps"] = model_logps(model, step, spec.temperature).float()
    return step


def _subset_meta(step, rows: tuple[int, ...]) -> None:
    total = int(step["completion_ids"].shape[0])
    step.meta[META_KEY] = RowSubset(
        rows=rows, total=total, reasons=(("test",),) * len(rows), covers=()
    ).to_meta()


def _logps_model(findings):
    return next(f for f in findings if f.check_id == "logps.model")


def test_a_bug_on_rows_of_a_kind_is_caught_through_the_subset_row_of_that_kind_with_real_row_indices():
    """Left-padded rows scored with plain 0..L-1 positions (bug-catalog #14): the padded rows outside the
    subset are never run, the padded row inside it fails, and the finding names its real row index."""
    from grpo_check.compare import compare_step
    from grpo_check.stepref.forward import model_logps

    spec = GRPOSpec(num_generations=4, loss_type="grpo", temperature=0.7, max_completion_length=5)
    model = _Policy()
    pads = [0, 0, 2, 0, 0, 1, 0, 0, 0, 0, 2, 0]
    step = _step_with_model_logps(spec, model, pads)
    with torch.no_grad():
        wrong = model_logps(model, step, spec.temperature, positions="arange").float()
    padded = [row for row, pad in enumerate(pads) if pad]
    step.tensors["logps"][padded] = wrong[padded]
    labels = row_labels(step["prompt_mask"], step["completion_mask"], group_index=step["group_index"])
    subset = select_rows(labels)
    assert set(padded) - set(subset.rows) and set(padded) & set(subset.rows)  # some padded rows left out
    step.meta[META_KEY] = subset.to_meta()
    model.calls.clear()
    finding = _logps_model(compare_step(step, spec, model=model))
    assert finding.verdict is Verdict.FAIL
    assert finding.where.row in set(padded) & set(subset.rows)  # a real row index, of a padded row run
    assert finding.details["forward_rows"] == {
        "rows": len(subset.rows),
        "of": 12,
        "covers": list(subset.covers),
    }
    assert f"on {len(subset.rows)} of 12 rows" in finding.explanation
    assert model.calls[0] == len(subset.rows)  # the forward ran on the subset's rows only


def test_rows_outside_the_subset_are_not_compared_and_every_row_is_compared_without_one():
    from grpo_check.compare import compare_step

    spec = GRPOSpec(num_generations=4, loss_type="grpo", temperature=0.7, max_completion_length=5)
    model = _Policy()
    step = _step_with_model_logps(spec, model, [0] * 12)
    step.tensors["logps"][11] -= 0.5  # a bug on row 11 only, a row of no special kind
    _subset_meta(step, (0, 4, 8))
    clean = _logps_model(compare_step(step, spec, model=model))
    assert clean.verdict is Verdict.PASS and clean.details["forward_rows"]["rows"] == 3
    # invariants and the maths on the trainer's own tensors still see every row: the loss stage uses row 11
    del step.meta[META_KEY]
    model.calls.clear()
    full = _logps_model(compare_step(step, spec, model=model))
    assert full.verdict is Verdict.FAIL and full.where.row == 11
    assert full.details["forward_rows"] == {"rows": 12, "of": 12, "covers": []}
    assert model.calls[0] == 12


def test_the_end_to_end_pass_uses_the_trainers_logps_on_rows_the_forward_did_not_run():
    """The reference's own log-probs hold NaN on rows outside the subset; the end-to-end pass takes the
    trainer's there, so it stays finite and points at the subset row that really differs."""
    from grpo_check.compare import compare_step
    from grpo_check.stepref.forward import KnownLogps

    spec = GRPOSpec(num_generations=4, loss_type="grpo", beta=0.0, max_completion_length=7)
    step = make_step(spec, n_prompts=3, completion_length=7, vocab_size=20, seed=1)
    _subset_meta(step, (1, 5, 9))
    own = torch.full(step["logps"].shape, float("nan"), dtype=torch.float64)
    own[[1, 5, 9]] = step["logps"][[1, 5, 9]].double()
    own[5] += 0.3  # the trainer's row 5 differs from the reference's forward
    findings = compare_step(step, spec, model=KnownLogps(None, own, spec.temperature))
    forward = _logps_model(findings)
    assert forward.verdict is Verdict.FAIL and forward.where.row == 5
    e2e = next(f for f in findings if f.check_id == "e2e.per_token_loss")
    assert e2e.verdict is Verdict.FAIL and e2e.where.row == 5
    assert "nonfinite_elements" not in e2e.details
    assert next(f for f in findings if f.check_id == "loss.per_token").verdict is Verdict.PASS


def test_coverage_says_how_many_rows_the_forward_ran_on():
    from grpo_check.coverage import coverage_lines, coverage_of, merge_coverage
    from grpo_check.findings import Finding

    rows = {"rows": 4, "of": 16, "covers": ["every prompt padding", "every group"]}
    found = [
        Finding("logps.model", "logps", Verdict.PASS, kind="compare", details={"forward_rows": rows}),
        Finding("logps.model", "logps", Verdict.PASS, kind="compare", details={"forward_rows": rows}),
    ]
    cov = coverage_of(found, beta=0.0, model_at_hand=True)
    family = next(f for f in cov["families"] if f["id"] == "forward_logps")
    assert family["rows"] == {"checked": 8, "of": 32, "covers": ["every prompt padding", "every group"]}
    line = next(line for line in coverage_lines(cov) if "forward log-probs" in line)
    assert line == (
        "ran      forward log-probs (2 checks; forward on 8 of 32 rows, covering every prompt padding, every group)"
    )
    merged = merge_coverage([cov, cov])
    assert next(f for f in merged["families"] if f["id"] == "forward_logps")["rows"]["of"] == 64
    full = [
        Finding(
            "logps.model",
            "logps",
            Verdict.PASS,
            kind="compare",
            details={"forward_rows": {"rows": 8, "of": 8}},
        )
    ]
    line = next(
        line
        for line in coverage_lines(coverage_of(full, beta=0.0, model_at_hand=True))
        if "forward log" in line
    )
    assert line.endswith("(1 check; forward on every row (8))")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["compare", "--trainer", "x.py:f", "--forward-rows", "some"],
            "--forward-rows must be subset or all",
        ),
        (["compare", "some-trace", "--forward-rows", "all"], "--forward-rows applies to --trainer"),
        (["demo", "--forward-rows", "some"], "--forward-rows must be subset or all"),
    ],
)
def test_a_bad_forward_rows_option_is_one_line_and_exit_2(args, message):
    from typer.testing import CliRunner

    from grpo_check.cli import app

    run = CliRunner().invoke(app, args)
    assert run.exit_code == 2, run.output
    assert message in run.output and "Traceback" not in run.output


@pytest.mark.parametrize("command", ["compare", "demo"])
def test_help_names_the_forward_rows_option(command):
    from typer.testing import CliRunner

    from grpo_check.cli import app

    run = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert run.exit_code == 0 and "--forward-rows" in run.output

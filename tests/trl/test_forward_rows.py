"""The reference's forward passes on a row subset, end to end through TRL's real GRPOTrainer and
``train_checked``: the default is the subset, ``forward_rows="all"`` restores every row, a log-prob bug on
rows of one kind is caught through the chosen row of that kind, and the coverage says how many rows ran."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

from grpo_check.demo.matrix import Cell
from grpo_check.findings import InputError, Verdict

pytestmark = pytest.mark.slow

# GAS 1 (each micro-batch its own window), beta > 0 (the reference model's forward too), T != 1
CELL = Cell("rows", {"loss_type": "grpo", "beta": 0.04, "temperature": 0.7}, steps=3)


def _padded_rows_shifted_trainer():
    """Log-probs of rows with a left-padded prompt off by 0.3 nats (a padding / position-ids bug, #14)."""
    from trl import GRPOTrainer

    class PaddedRowsShifted(GRPOTrainer):
        def _get_per_token_logps_and_entropies(
            self, model, input_ids, attention_mask, logits_to_keep, *a, **k
        ):
            logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *a, **k
            )
            padded = (attention_mask[:, : input_ids.shape[1] - logits_to_keep] == 0).any(1)
            return logps - 0.3 * padded.unsqueeze(1).to(logps.dtype), entropies, aux

    return PaddedRowsShifted


def _run(tmp_path, forward_rows=None, trainer_cls=None):
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl.runner import train_checked

    trainer = build_trainer(CELL, tmp_path, seed=0, trainer_cls=trainer_cls)
    kwargs = {} if forward_rows is None else {"forward_rows": forward_rows}
    return train_checked(trainer, **kwargs)


def _micro(run):
    return [s for s in run.trace.steps if s.meta["scope"] == "micro_batch"]


def test_the_default_runs_the_forwards_on_a_covering_subset_and_all_restores_every_row(tmp_path):
    from grpo_check.coverage import coverage_lines

    default = _run(tmp_path / "default")
    micro = _micro(default)
    assert micro and all("forward_rows" in s.meta for s in micro)
    for step in micro:
        chosen = step.meta["forward_rows"]
        assert 0 < len(chosen["rows"]) < chosen["of"] == step["completion_ids"].shape[0]
        assert len(chosen["reasons"]) == len(chosen["rows"]) and all(chosen["reasons"])
        pads = (step["prompt_mask"] == 0).sum(1).tolist()
        assert {pads[r] for r in chosen["rows"]} == set(pads)  # every prompt padding
        groups = step.get("group_index", step.get("extra.group_index")).tolist()
        assert {groups[r] for r in chosen["rows"]} == set(groups)  # every group
    assert not [f for f in default.result.findings if f.verdict in (Verdict.FAIL, Verdict.WARN)]
    lines = coverage_lines(default.result.metadata["coverage"])
    forward = next(line for line in lines if "forward log-probs" in line)
    ref = next(line for line in lines if "reference-model forward" in line)
    checked = sum(len(s.meta["forward_rows"]["rows"]) for s in micro)
    total = sum(s.meta["forward_rows"]["of"] for s in micro)
    assert f"forward on {checked} of {total} rows, covering every prompt padding" in forward
    assert "every group" in forward and f"{checked} of {total} rows" in ref

    every = _run(tmp_path / "all", forward_rows="all")
    assert all("forward_rows" not in s.meta for s in _micro(every))
    forward = next(
        line for line in coverage_lines(every.result.metadata["coverage"]) if "forward log-pr" in line
    )
    assert forward.endswith(f"forward on every row ({total}))")


def test_a_bug_on_the_left_padded_rows_is_caught_through_the_chosen_padded_rows(tmp_path):
    run = _run(tmp_path, trainer_cls=_padded_rows_shifted_trainer())
    micro = _micro(run)
    left_out = 0
    for step in micro:
        padded = {row for row, pad in enumerate((step["prompt_mask"] == 0).sum(1).tolist()) if pad}
        chosen = set(step.meta["forward_rows"]["rows"])
        left_out += len(padded - chosen)
        finding = next(
            f
            for f in run.result.findings
            if f.check_id == "logps.model"
            and (f.where.step, f.where.micro_batch) == (step.meta["step"], step.meta["micro_batch"])
        )
        if padded:  # every prompt padding is in the subset: a padded row is run, and fails
            assert finding.verdict is Verdict.FAIL
            assert finding.where.row in padded & chosen  # a real row index of the micro-batch
        else:
            assert finding.verdict is Verdict.PASS
    assert left_out, "every padded row was chosen: the test would not show that one row of the kind suffices"
    assert run.result.first_divergence().stage == "logps"


def test_forward_rows_takes_subset_or_all_only(tmp_path):
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl import attach

    trainer = build_trainer(CELL, tmp_path, seed=0)
    with pytest.raises(InputError, match="forward_rows must be 'subset' or 'all', got 'some'"):
        attach(trainer, forward_rows="some")


def test_a_reference_model_synced_during_training_is_scored_with_the_weights_trl_used(tmp_path):
    """sync_ref_model moves the reference model between the windows of one generation batch: its chosen rows
    are scored at the first need, as TRL scored them, so a correct run raises no alarm."""
    cell = Cell(
        "sync",
        {
            "loss_type": "grpo",
            "beta": 0.04,
            "sync_ref_model": True,
            "ref_model_sync_steps": 1,
            "ref_model_mixup_alpha": 1.0,
            "gradient_accumulation_steps": 2,
            "steps_per_generation": 4,
        },
        steps=2,
    )
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl.runner import train_checked

    run = train_checked(build_trainer(cell, tmp_path, seed=0))
    assert all("forward_rows" in s.meta for s in _micro(run))
    bad = [f.message() for f in run.result.findings if f.verdict in (Verdict.FAIL, Verdict.WARN)]
    assert not bad, bad
    assert any(f.check_id == "logps.ref_model" and f.verdict is Verdict.PASS for f in run.result.findings)

"""``attach(trainer, budget=...)`` on TRL's real GRPOTrainer: which steps get checked, and the cost reported."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")


def _train(tmp_path, steps: int, **attach_kwargs):
    from grpo_check.demo.matrix import cells
    from grpo_check.demo.run import run_cell

    run = run_cell(cells("fast")[0], workdir=tmp_path, seed=0, steps=steps, **attach_kwargs)
    checked = sorted({s.meta["step"] for s in run.trace.steps if s.meta.get("scope") == "micro_batch"})
    return run.result, checked


@pytest.mark.slow
def test_a_tight_budget_checks_step_0_the_warm_check_and_then_rarely(tmp_path):
    # a budget no check can fit: step 0, then the second check within FIRST_INTERVAL steps (the first also paid
    # one-time costs), then at most one check per 1000 steps
    result, checked = _train(tmp_path, 14, budget=1e-6)
    assert checked == [0, 10]
    cost = result.metadata["checking"]
    assert cost["budget"] == 1e-6 and cost["checked_steps"] == 2 and cost["steps"] == 14
    assert cost["interval"] == 1000
    assert cost["checking_seconds"] > 0 and cost["overhead"] > 0
    assert not [f for f in result.findings if f.failed]


@pytest.mark.slow
def test_every_step_reports_its_cost_too(tmp_path):
    result, checked = _train(tmp_path, 3)
    assert checked == [0, 1, 2]
    cost = result.metadata["checking"]
    assert cost["every"] == 1 and cost["budget"] is None and cost["checked_steps"] == 3 and cost["steps"] == 3
    assert 0 < cost["checking_seconds"] < cost["training_seconds"]


def test_a_budget_with_every_is_refused_before_any_hook(tmp_path):
    from grpo_check.findings import InputError
    from grpo_check.trl import attach

    with pytest.raises(InputError, match="every or budget"):
        attach(object(), every=5, budget=0.05)  # refused before the trainer is even looked at


@pytest.mark.slow
def test_ranks_check_the_same_steps_under_a_budget():
    # each rank times its own checks; the interval is agreed across ranks (the largest), so both check the
    # same steps (a forward on a sharded model is a collective: a rank checking alone would hang)
    from grpo_check.demo.matrix import MATRIX
    from grpo_check.demo.run import run_cell_multiprocess

    cell = next(c for c in MATRIX if c.name.startswith("bnpo"))
    run = run_cell_multiprocess(cell, processes=2, steps=12, budget=1e-6)
    by_rank = {
        rank: sorted(
            {
                s.meta["step"]
                for s in run.trace.steps
                if s.meta["scope"] == "micro_batch" and s.meta["rank"] == rank
            }
        )
        for rank in (0, 1)
    }
    assert by_rank == {0: [0, 10], 1: [0, 10]}
    assert run.result.exit_code() == 0, [f.message() for f in run.result.failures]

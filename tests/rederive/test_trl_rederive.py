"""Re-derivations through real tiny TRL runs: ``compare --trainer``'s path (capture, then compare) and the live
comparison of ``attach``. Each mutant is caught in its stage; its control (same branches, correct) is clean."""

from __future__ import annotations

import copy

import pytest

from grpo_check.findings import Verdict

pytestmark = pytest.mark.slow

FACTORIES = "grpo_check.zoo.rederive_factories"


def _compare_trainer(function: str, steps: int = 2):
    """What ``grpo-check compare --trainer`` runs: the factory trained with the full check attached."""
    from grpo_check.trl.runner import check_factory

    run = check_factory(f"{FACTORIES}:{function}", steps)
    assert run.outcome.status == "completed", run.outcome.line
    return run.trace, run.result


def _rederived(result, check_id: str):
    return [f for f in result.findings if f.check_id == check_id]


def _verdicts(findings) -> set[Verdict]:
    return {f.verdict for f in findings}


@pytest.fixture(scope="module")
def truncating_control():
    return _compare_trainer("build_truncating_dapo")


def test_count_control_rederives_n_from_every_generation(truncating_control):
    trace, result = truncating_control
    counts = _rederived(result, "rederive.num_items_in_batch")
    assert counts and _verdicts(counts) == {Verdict.PASS}
    truncated = [f.details.get("truncated_rows", 0) for f in _rederived(result, "rederive.completion_ends")]
    assert sum(truncated) > 0  # the control does exercise masked truncated rows
    assert _verdicts(_rederived(result, "rederive.completion_ends")) == {Verdict.PASS}
    assert not result.failures and not result.warnings, [
        f.message() for f in result.failures + result.warnings
    ]
    micro = [s for s in trace.steps if s.meta.get("scope") == "micro_batch"]
    assert all(isinstance(s.meta.get("generation_loss_tokens"), float) for s in micro)


def test_count_of_masked_truncated_tokens_is_caught():
    _, result = _compare_trainer("build_count_before_truncation_mask")
    failing = [f for f in result.failures if f.check_id == "rederive.num_items_in_batch"]
    assert failing and all(f.stage == "loss" and f.catalog_id == "4" for f in failing)
    assert all("truncated completions" in f.likely_cause for f in failing)
    assert {f.check_id for f in result.failures} == {"rederive.num_items_in_batch"}


def test_two_eos_control_is_clean_and_records_every_source():
    trace, result = _compare_trainer("build_two_eos")
    sources = trace.manifest["eos_token_id_sources"]
    assert sources["generation_config"] == [3, 2] and sources["tokenizer"] == [2]
    ends = _rederived(result, "rederive.completion_ends")
    assert ends and _verdicts(ends) == {Verdict.PASS}
    assert not result.failures and not result.warnings, [
        f.message() for f in result.failures + result.warnings
    ]


def test_secondary_eos_ignored_is_caught_in_the_batch_stage():
    _, result = _compare_trainer("build_secondary_eos_ignored")
    failing = [f for f in result.failures if f.check_id == "rederive.completion_ends"]
    assert failing and all(f.stage == "batch" and f.catalog_id == "11" for f in failing)
    assert "secondary EOS id 3 (from generation_config)" in failing[0].likely_cause
    assert result.first_divergence().stage == "batch"


def test_old_logps_skipped_after_an_optimizer_step_is_caught():
    _, result = _compare_trainer("build_old_logps_skipped")
    failing = [f for f in result.failures if f.check_id == "rederive.old_logps_required"]
    assert failing and all(f.stage == "ratio" and f.catalog_id == "17" for f in failing)
    assert failing[0].details["optimizer_steps_between"] == 1


def test_spg_below_gas_control_needs_and_has_old_logps():
    _, result = _compare_trainer("build_spg_below_gas")
    old = _rederived(result, "rederive.old_logps_required")
    assert Verdict.FAIL not in _verdicts(old)
    crossing = [f for f in old if f.details.get("optimizer_steps_between", 0) > 0]
    assert crossing and _verdicts(crossing) == {Verdict.PASS}  # a generation batch straddled a step
    assert not result.failures and not result.warnings, [
        f.message() for f in result.failures + result.warnings
    ]


def test_offline_compare_of_the_trace_rederives_too(truncating_control):
    """``grpo-check compare TRACE``: the recorded trace alone, and the same trace with the recorded sums
    removed (N then joined from the trace's micro-batches)."""
    from grpo_check.compare import compare

    trace = copy.deepcopy(truncating_control[0])
    counts = _rederived(compare(trace), "rederive.num_items_in_batch")
    assert counts and _verdicts(counts) == {Verdict.PASS}
    for step in trace.steps:
        step.meta.pop("generation_loss_tokens", None)
        if step.meta.get("scope") == "micro_batch":
            step.meta["num_items_in_batch"] += 1.0
    joined = _rederived(compare(trace), "rederive.num_items_in_batch")
    assert joined and _verdicts(joined) == {Verdict.FAIL}
    assert "in the trace" in joined[0].explanation


def test_live_attach_runs_the_rederivations_without_the_trace():
    from grpo_check.trl import attach
    from grpo_check.zoo.rederive_factories import build_count_before_truncation_mask

    trainer = build_count_before_truncation_mask(steps=1)
    attachment = attach(trainer, live=True)
    trainer.train()
    result = attachment.result()
    attachment.close()
    failing = [f for f in result.failures if f.check_id == "rederive.num_items_in_batch"]
    assert failing and failing[0].details["derived"] < failing[0].details["given"]


def test_rederive_inputs_read_the_sources_not_the_trainer_list():
    from grpo_check.trl.rederive_inputs import eos_token_id_sources, optimizer_step
    from grpo_check.zoo.rederive_factories import build_secondary_eos_ignored

    trainer = build_secondary_eos_ignored(steps=1)
    assert eos_token_id_sources(trainer) == {"tokenizer": [2], "generation_config": [3, 2], "trainer": [2]}
    assert optimizer_step(trainer) == 0


def test_unscorable_rows_control_is_clean_and_the_leak_is_caught():
    _, control = _compare_trainer("build_unscorable_rows")
    checked = _rederived(control, "rederive.unscorable_rows")
    assert checked and _verdicts(checked) == {Verdict.PASS}  # the control does have unscorable rows
    assert not control.failures and not control.warnings, [f.message() for f in control.failures]
    _, leak = _compare_trainer("build_unscorable_scored_zero")
    failing = [f for f in leak.failures if f.check_id == "rederive.unscorable_rows"]
    assert failing and all(f.stage == "advantages" and f.catalog_id == "8" for f in failing)

"""Coverage is part of the verdict: which check families ran, which could not, and what that does to the
headline and the exit code (grpo_check.coverage, Result.status / exit_code, every renderer)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from grpo_check.compare import compare
from grpo_check.compare.synthetic import TinyLM, make_trace
from grpo_check.config import GRPOSpec
from grpo_check.coverage import coverage_gaps, coverage_lines, coverage_of, coverage_status, merge_coverage
from grpo_check.findings import Finding, Result, Verdict

SPEC = GRPOSpec(num_generations=4, loss_type="grpo", beta=0.04, max_completion_length=6)
NO_KL = GRPOSpec(num_generations=4, loss_type="grpo", beta=0.0, max_completion_length=6, temperature=0.8)


def _families(coverage):
    return {f["id"]: f for f in coverage["families"]}


def _passing(*check_ids: str) -> list[Finding]:
    return [Finding(c, c.split(".")[0], Verdict.PASS, kind="compare") for c in check_ids]


CORE = ("advantages.values", "logps.model", "logps.ref_model", "loss.value", "grad.logps_grad")


def test_every_core_family_ran_is_complete():
    coverage = coverage_of(_passing(*CORE), beta=0.04, model_at_hand=True)
    assert coverage_status(coverage) == ("complete", "")
    assert not coverage_gaps(coverage)
    assert [f["status"] for f in coverage["families"][:5]] == ["ran"] * 5


def test_a_core_family_missing_with_the_model_at_hand_is_a_gap():
    found = _passing("advantages.values", "logps.ref_model", "loss.value", "grad.logps_grad")
    found.append(
        Finding(
            "logps.model", "logps", Verdict.NOT_CAPTURED, kind="compare", details={"missing": ["prompt_ids"]}
        )
    )
    coverage = coverage_of(found, beta=0.04, model_at_hand=True)
    family = _families(coverage)["forward_logps"]
    assert family["status"] == "not_run" and family["gap"]
    assert family["reason"] == "not captured: missing prompt_ids" and family["how"] == "record prompt_ids"
    assert coverage_status(coverage) == (
        "incomplete",
        "forward log-probs not checked — not captured: missing prompt_ids",
    )


def test_without_a_model_the_forward_families_are_partial_not_gaps():
    coverage = coverage_of(
        _passing("advantages.values", "loss.value", "grad.logps_grad"), beta=0.04, model_at_hand=False
    )
    assert not coverage_gaps(coverage)
    assert coverage_status(coverage) == (
        "partial",
        "forward log-probs, reference-model forward not checked — no model; pass --model and --ref-model",
    )


def test_beta_zero_makes_the_reference_forward_not_applicable():
    coverage = coverage_of(_passing(*CORE[:2], *CORE[3:]), beta=0.0, model_at_hand=True)
    family = _families(coverage)["ref_forward"]
    assert family["status"] == "not_applicable" and not family["gap"]
    assert coverage_status(coverage)[0] == "complete"


def test_a_reason_given_by_the_caller_wins_and_lines_name_it():
    coverage = coverage_of(
        _passing(*CORE), beta=0.04, model_at_hand=True, reasons={"probes": "no probe for this loss type"}
    )
    assert "not run  probes of the trainer's loss code: no probe for this loss type" in coverage_lines(
        coverage
    )
    assert "ran      forward log-probs (1 check)" in coverage_lines(coverage)


def test_merging_keeps_a_family_that_ran_anywhere_and_a_gap_nowhere_else_covered():
    ran = coverage_of(_passing(*CORE), beta=0.04, model_at_hand=True)
    gap = coverage_of(_passing(*CORE[2:]), beta=0.04, model_at_hand=True)
    assert coverage_status(merge_coverage([ran, gap]))[0] == "complete"
    assert _families(merge_coverage([ran, gap]))["loss"]["checks"] == 2
    assert coverage_status(merge_coverage([gap, gap]))[0] == "incomplete"
    assert merge_coverage([None, {}]) is None


def _result(coverage, *findings, **metadata) -> Result:
    return Result(findings=[*_passing(*CORE), *findings], metadata={"coverage": coverage, **metadata})


def test_exit_code_and_status_follow_coverage_outcome_and_findings():
    complete = coverage_of(_passing(*CORE), beta=0.04, model_at_hand=True)
    incomplete = coverage_of(_passing(*CORE[2:]), beta=0.04, model_at_hand=True)
    partial = coverage_of(_passing(*CORE[3:]), beta=0.04, model_at_hand=False)
    assert (_result(complete).exit_code(), _result(complete).status()) == (0, "OK")
    assert _result(incomplete).exit_code() == 4
    assert _result(incomplete).status().startswith("INCOMPLETE (rewards and advantages, forward log-probs")
    assert _result(incomplete).exit_code(allow_partial=True) == 0
    accepted = _result(incomplete, allow_partial=True)
    assert accepted.exit_code() == 0 and accepted.status().startswith("OK (partial: rewards and advantages")
    assert _result(partial).exit_code() == 0 and _result(partial).status().startswith("OK (partial: ")
    failing = _result(incomplete, Finding("loss.value", "loss", Verdict.FAIL, kind="compare"))
    assert (failing.exit_code(), failing.status()) == (1, "FAIL")  # findings first
    crashed = _result(complete, outcome={"status": "crashed", "exit_code": 3, "line": "RuntimeError: x"})
    assert crashed.exit_code() == 3 and crashed.status() == "CRASHED (RuntimeError: x); what was captured: OK"
    stopped = _result(complete, outcome={"status": "interrupted", "exit_code": 143, "line": "SIGTERM"})
    assert stopped.exit_code() == 143


def test_no_coverage_keeps_the_old_verdicts():
    assert Result(findings=_passing("loss.value")).exit_code() == 0
    assert Result(findings=_passing("loss.value")).status() == "OK"


# ------------------------------------------------------------------ through compare()
def test_compare_with_the_model_covers_the_forward_passes():
    result = compare(make_trace(NO_KL, steps=1, model=TinyLM()), model=TinyLM())
    families = _families(result.metadata["coverage"])
    assert (
        families["forward_logps"]["status"] == "ran" and families["ref_forward"]["status"] == "not_applicable"
    )
    assert result.status() == "OK" and result.exit_code() == 0


def test_compare_with_the_model_fails_a_wrong_forward_and_still_covers_it():
    trace = make_trace(NO_KL, steps=1, model=TinyLM())
    result = compare(trace, model=TinyLM(seed=3))  # not the weights the log-probs came from
    assert _families(result.metadata["coverage"])["forward_logps"]["status"] == "ran"
    assert any(f.check_id == "logps.model" and f.failed for f in result.findings) and result.exit_code() == 1


def test_compare_without_a_model_is_partial_and_names_the_recorded_model():
    trace = make_trace(SPEC, steps=1)
    trace.manifest["model"] = {"policy": "/models/policy", "ref_model": None}
    result = compare(trace)
    assert result.exit_code() == 0
    assert result.status() == (
        "OK (partial: forward log-probs, reference-model forward not checked — no model; pass --model and "
        "--ref-model)"
    )
    how = _families(result.metadata["coverage"])["forward_logps"]["how"]
    assert how == "pass --model /models/policy (recorded in the trace; the weights of its first step)"


def test_compare_with_the_model_but_no_gradient_is_incomplete():
    trace = make_trace(NO_KL, steps=1, model=TinyLM())
    for step in trace.steps:
        step.tensors.pop("logps_grad")
    result = compare(trace, model=TinyLM())
    family = _families(result.metadata["coverage"])["loss_grad"]
    assert family["gap"] and family["reason"] == "not captured: no step holds logps_grad"
    assert result.exit_code() == 4 and result.status().startswith("INCOMPLETE (∂loss/∂logps not checked")


@pytest.mark.parametrize("fmt", ["md", "html", "json", "junit", "text"])
def test_every_rendering_shows_the_coverage(fmt):
    from grpo_check.report import render
    from grpo_check.report.terminal import render_terminal

    trace = make_trace(NO_KL, steps=1, model=TinyLM())
    for step in trace.steps:
        step.tensors.pop("logps_grad")
    result = compare(trace, model=TinyLM())
    text = render_terminal(result, color=False) if fmt == "text" else render(result, fmt)
    if fmt == "json":
        assert json.loads(text)["metadata"]["coverage"]["families"][4]["gap"] is True
    elif fmt == "junit":
        cases = {
            c.get("name"): c
            for c in ET.fromstring(text).iter("testcase")
            if c.get("classname") == "grpo_check.coverage"
        }
        assert cases["loss_grad"].find("failure") is not None
        assert (
            cases["forward_logps"].find("failure") is None and cases["forward_logps"].find("skipped") is None
        )
        assert cases["probes"].find("skipped") is not None
    else:
        assert (
            "Coverage" in text
            and "GAP" in text
            and "∂loss/∂logps: not captured: no step holds logps_grad" in text
        )
        assert "INCOMPLETE (∂loss/∂logps not checked" in text


def test_a_family_inconclusive_wherever_it_ran_says_why():
    found = _passing("advantages.values", "logps.model", "loss.value", "grad.logps_grad")
    found.append(
        Finding(
            "probe.loss", "loss", Verdict.INCONCLUSIVE, kind="compare", explanation="the loss code raised X"
        )
    )
    family = _families(coverage_of(found, beta=0.0, model_at_hand=True))["probes"]
    assert family["status"] == "not_run" and not family["gap"]
    assert family["reason"] == "inconclusive wherever it ran (the loss code raised X)"
    ran = _families(coverage_of([*found, *_passing("probe.loss")], beta=0.0, model_at_hand=True))["probes"]
    assert ran["status"] == "ran" and ran["reason"] is None

"""Re-derivations run wherever compare runs, as the "re-derivations" family."""

from __future__ import annotations

import torch

from grpo_check.compare import compare, compare_step
from grpo_check.compare.hooks import registered_families
from grpo_check.compare.synthetic import make_step
from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.trace.model import Trace


def _broken_step(spec: GRPOSpec):
    step = make_step(spec)
    ids = step["completion_ids"].clone()
    ids[0, 1] = 7  # an EOS of the generation config inside row 0's mask
    step.tensors["completion_ids"] = ids
    step.meta["eos_token_id_sources"] = {"tokenizer": [9999], "generation_config": [7]}
    return step


def test_registered_family():
    assert registered_families() == ["re-derivations"]


def test_compare_step_runs_rederivations_live():
    spec = GRPOSpec(num_generations=4)
    findings = compare_step(_broken_step(spec), spec)
    ends = [f for f in findings if f.check_id == "rederive.completion_ends"]
    assert len(ends) == 1 and ends[0].verdict is Verdict.FAIL and ends[0].where.row == 0


def test_compare_reports_rederivation_failures_and_exit_code():
    spec = GRPOSpec(num_generations=4)
    result = compare(Trace(manifest={"config": spec.to_dict()}, steps=[_broken_step(spec)]))
    assert result.exit_code() == 1
    assert any(f.check_id == "rederive.completion_ends" and f.failed for f in result.findings)
    families = {f.details.get("family") for f in result.findings if f.check_id.startswith("rederive.")}
    assert families == {"re-derivations"}


def test_compare_of_a_correct_step_has_no_rederivation_failure():
    spec = GRPOSpec(num_generations=4)
    step = make_step(spec)
    step.meta["eos_token_id_sources"] = {"tokenizer": [9999]}
    mask = step["completion_mask"].bool()
    ids = step["completion_ids"].clone()
    ids[~mask] = 0
    step.tensors["completion_ids"] = ids
    step.meta["pad_token_id"] = 0
    findings = [f for f in compare_step(step, spec) if f.check_id.startswith("rederive.")]
    assert findings and not any(f.verdict in (Verdict.FAIL, Verdict.WARN) for f in findings), [
        f.message() for f in findings if f.verdict in (Verdict.FAIL, Verdict.WARN)
    ]
    assert torch.is_tensor(step["completion_mask"])

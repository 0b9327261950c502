"""Every tensor mismatch reads the same, torch.testing style: a header, then one statistic per line."""

from __future__ import annotations

import torch

from grpo_check.compare import compare_step
from grpo_check.compare.synthetic import make_step
from grpo_check.compare.tensor_diff import StepContext, compare_tensor
from grpo_check.compare.tolerances import Tolerance
from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict

TOL = Tolerance(rtol=1e-5, atol=1e-5, source="test")


def test_a_mismatch_names_count_greatest_differences_with_coordinates_and_the_tolerance():
    ctx = StepContext(step=3, group_index=torch.tensor([0, 0, 1, 1]))
    reference = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    trainer = reference.clone()
    trainer[2, 1] += 0.5  # the greatest absolute difference
    trainer[0, 0] += 0.25  # the greatest relative difference (0.25 on 1.0)
    finding = compare_tensor(
        check_id="x", stage="loss", name="q", trainer=trainer, reference=reference, tolerance=TOL, ctx=ctx
    )
    assert finding.verdict is Verdict.FAIL
    lines = finding.explanation.splitlines()
    assert lines[0] == "q differs from the reference"
    assert lines[1] == "Mismatched elements: 2 / 8 (25.0%)"
    assert lines[2].startswith(
        "Greatest absolute difference: 0.5 at step 3, prompt 1, generation 0, row 2, token 1"
    )
    assert "trainer 6.5 vs reference 6" in lines[2] and "allowed)" in lines[2]
    assert lines[3].startswith(
        "Greatest relative difference: 0.25 at step 3, prompt 0, generation 0, row 0, token 0"
    )
    assert lines[4] == "Tolerance: rtol 1e-05, atol 1e-05 (test)"


def test_a_matching_tensor_passes_with_its_one_line():
    reference = torch.tensor([1.0, 2.0])
    finding = compare_tensor(
        check_id="x", stage="loss", name="q", trainer=reference.clone(), reference=reference, tolerance=TOL,
        ctx=StepContext(),
    )  # fmt: skip
    assert finding.verdict is Verdict.PASS and "\n" not in finding.explanation


def test_a_clip_mask_mismatch_uses_the_same_message():
    spec = GRPOSpec(num_generations=4, loss_type="grpo", beta=0.04)
    step = make_step(spec)
    step.tensors["is_low_clipped"] = torch.ones_like(step["logps"], dtype=torch.bool)
    (finding,) = [f for f in compare_step(step, spec) if f.check_id == "ratio.is_low_clipped"]
    assert finding.verdict is Verdict.FAIL
    lines = finding.explanation.splitlines()
    assert lines[0] == "is_low_clipped (on the loss tokens) differs from the reference"
    assert lines[1].startswith("Mismatched elements: ")
    assert lines[2].startswith("First mismatch at step") and "trainer 1 vs reference 0" in lines[2]
    correct = make_step(spec)
    reference_mask = (torch.exp(correct["logps"] - correct["old_logps"]) < 1 - spec.epsilon_low) & (
        correct["advantages"].unsqueeze(1) < 0
    )
    correct.tensors["is_low_clipped"] = reference_mask
    (finding,) = [f for f in compare_step(correct, spec) if f.check_id == "ratio.is_low_clipped"]
    assert finding.verdict is Verdict.PASS

"""reference_step stage isolation, golden-vector replay and the `grpo-check selfcheck` command."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from grpo_check.cli import app
from grpo_check.config import GRPOSpec
from grpo_check.reference import reference_step
from grpo_check.reference.golden import PACKAGE_DIR, golden_dirs, load_cases, replay_all


def _inputs():
    return {
        "completion_mask": torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]]),
        "group_index": torch.tensor([0, 0, 1, 1]),
        "rewards_per_func": torch.tensor([[1.0], [0.0], [0.5], [0.0]]),
        "logps": torch.tensor(
            [[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.7], [-2.0, -1.0, -1.0], [-0.1, -0.2, -0.3]]
        ),
        "old_logps": torch.tensor(
            [[-1.1, -0.5, -2.0], [-0.3, -1.0, -0.7], [-2.2, -1.0, -1.0], [-0.1, -0.25, -0.3]]
        ),
        "ref_logps": torch.tensor(
            [[-1.0, -0.7, -2.0], [-0.4, -1.2, -0.7], [-2.0, -1.5, -1.0], [-0.1, -0.2, -0.9]]
        ),
    }


def test_isolation_uses_the_given_advantages_and_reports_its_own():
    spec = GRPOSpec(num_generations=2, loss_type="dapo", beta=0.04)
    inputs = _inputs()
    clean = reference_step(inputs, spec)
    assert clean.sources["advantages"] == "reference"
    buggy = dict(inputs, advantages=torch.tensor([5.0, -5.0, 0.0, 0.0]))  # a trainer with wrong advantages
    isolated = reference_step(buggy, spec)
    assert isolated.sources["advantages"] == "given"
    torch.testing.assert_close(isolated["advantages"], clean["advantages"])  # own advantages still reported
    assert not torch.allclose(isolated["loss"], clean["loss"])  # the loss stage consumed the given ones
    end_to_end = reference_step(buggy, spec, isolate=False)
    torch.testing.assert_close(end_to_end["loss"], clean["loss"])


def test_step_outputs_canonical_names_and_consistent_gradients():
    from grpo_check.trace.model import TENSOR_STAGE

    step = reference_step(_inputs(), GRPOSpec(num_generations=2, loss_type="grpo", beta=0.04))
    for name in ("rewards", "advantages", "ratio", "clipped_ratio", "is_low_clipped", "is_high_clipped", "kl",
                 "per_token_loss", "loss", "loss_normalizer", "logps_grad"):  # fmt: skip
        assert name in step.tensors and name in TENSOR_STAGE
    torch.testing.assert_close(step["logps_grad"], step["logps_grad_closed_form"], rtol=1e-10, atol=1e-14)
    assert step.skipped == {}


def test_missing_inputs_are_reported_not_raised():
    step = reference_step({"rewards_per_func": torch.tensor([1.0, 0.0]), "group_index": torch.tensor([0, 0])},
                          GRPOSpec(num_generations=2))  # fmt: skip
    assert "advantages" in step.tensors
    assert "loss" in step.skipped and "logps" in step.skipped["loss"]
    no_ref = reference_step(
        {k: v for k, v in _inputs().items() if k != "ref_logps"}, GRPOSpec(num_generations=2, beta=0.1)
    )
    assert "ref_logps" in no_ref.skipped["loss"] and "kl" in no_ref.skipped


def test_golden_vectors_replay_clean():
    cases = load_cases()
    assert len(cases) >= 40
    assert sum(1 for c in cases if c["hand_worked"]) >= 10
    failures = [(r.case_id, r.mismatches) for r in replay_all(cases) if not r.passed]
    assert failures == []


def test_packaged_copy_matches_repository_vectors():
    dirs = golden_dirs()
    repo = [d for d in dirs if d != PACKAGE_DIR]
    if not repo:
        pytest.skip("not running from a checkout")
    for path in sorted(repo[0].glob("*.json")):
        assert json.loads(path.read_text()) == json.loads((PACKAGE_DIR / path.name).read_text()), path.name


def test_selfcheck_command_passes_and_fails(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["selfcheck"])
    assert ok.exit_code == 0, ok.output
    assert "golden cases pass" in ok.output and "FAIL " not in ok.output
    # corrupt one expected value: the command must report that case and exit 1
    for path in PACKAGE_DIR.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    doc = json.loads((tmp_path / "kl.json").read_text())
    doc["cases"][0]["expected"]["kl"]["data"][0][1] = 123.0
    (tmp_path / "kl.json").write_text(json.dumps(doc))
    bad = runner.invoke(app, ["selfcheck", "--golden-dir", str(tmp_path), "--format", "json"])
    assert bad.exit_code == 1
    report = json.loads(bad.output)
    assert report["failed"] == 1 and [c["case_id"] for c in report["cases"] if not c["passed"]] == [
        doc["cases"][0]["id"]
    ]
    usage = runner.invoke(app, ["selfcheck", "--golden-dir", str(tmp_path / "missing")])
    assert usage.exit_code == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\xff\xfe", "not UTF-8 text"),  # binary garbage used to raise UnicodeDecodeError
        (b"[1, 2]", "format 'list'"),  # a JSON list used to raise AttributeError
        (b'{"format": "grpo-check-golden/1"}', "field 'cases'"),  # no cases used to raise KeyError
        (b'{"format": "grpo-check-golden/1", "cases": [{"function": "per_token_kl"}]}', "cases[0]"),
    ],
)
def test_selfcheck_bad_golden_file_is_a_usage_error(tmp_path, content, message):
    (tmp_path / "a.json").write_bytes(content)
    result = CliRunner().invoke(app, ["selfcheck", "--golden-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert message in result.output and "a.json" in result.output

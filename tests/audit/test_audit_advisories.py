"""Advisories (GA6xx): each fires on a config that triggers it on an affected release, and is silent on a config
that does not trigger it and on the release that fixed it (both sides of the fix)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
import yaml

from grpo_check.audit import audit
from grpo_check.audit.advisories import ADVISORIES, RELEASES, Advisory, fixed_by, triggered
from grpo_check.audit.rules import RULES
from grpo_check.audit.versions import parse_version

# id -> (a triggering config, a config that does not trigger it or None when every config does, num_processes)
CASES: dict[str, tuple[dict, dict | None, int]] = {
    "GA601": ({"per_device_train_batch_size": 4}, {"per_device_train_batch_size": 1}, 1),
    "GA602": ({"temperature": 0.7}, {"temperature": 1.0}, 1),
    "GA603": ({"use_vllm": True, "max_prompt_length": 256}, {"use_vllm": False, "max_prompt_length": 256}, 1),
    "GA604": ({"use_vllm": True, "max_prompt_length": 256}, {"use_vllm": True, "max_prompt_length": None}, 1),
    "GA605": ({"top_entropy_quantile": 0.2}, {"top_entropy_quantile": 1.0}, 4),
    "GA606": ({"scale_rewards": "group"}, None, 1),
    "GA607": (
        {"loss_type": "dapo", "mask_truncated_completions": True},
        {"loss_type": "dapo", "mask_truncated_completions": False},
        1,
    ),
    "GA608": (
        {"loss_type": "dapo", "gradient_accumulation_steps": 2, "steps_per_generation": 4},
        {"loss_type": "dapo", "gradient_accumulation_steps": 4, "steps_per_generation": 4},
        1,
    ),
    "GA609": (
        {"gradient_accumulation_steps": 3, "steps_per_generation": 2, "num_iterations": 1},
        {"gradient_accumulation_steps": 4, "steps_per_generation": 2, "num_iterations": 1},
        1,
    ),
    "GA610": ({"num_generations": 8}, None, 1),
    "GA611": ({"num_iterations": 2}, {"num_iterations": 1}, 1),
    "GA612": (
        {"loss_type": "luspo", "importance_sampling_level": "token"},
        {"loss_type": "luspo", "importance_sampling_level": "sequence", "beta": 0.0},
        1,
    ),
    "GA613": (
        {"loss_type": "dapo", "entropy_coef": 0.01, "gradient_accumulation_steps": 2},
        {"loss_type": "dapo", "entropy_coef": 0.0, "gradient_accumulation_steps": 2},
        1,
    ),
}

# A config where the batch arithmetic is valid on every release (so the only findings under test are advisories).
BASE = {"num_generations": 4, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1}


def _config(values: dict) -> dict:
    config = {**BASE, **values}
    if "steps_per_generation" in values:
        config["per_device_train_batch_size"] = 4  # 4 × spg stays a multiple of num_generations = 4
    return config


def _fired(rule_id: str, values: dict, release: str, processes: int) -> list:
    result = audit(_config(values), trl_version=release, num_processes=processes, rules=[rule_id])
    return [f for f in result if f.check_id == rule_id]


def test_every_advisory_has_a_case_and_a_rule():
    assert set(CASES) == set(ADVISORIES)
    assert len(ADVISORIES) >= 8
    for advisory in ADVISORIES.values():
        assert RULES[advisory.id].category == "advisory (bug shipped in a TRL release)"
        assert advisory.pr.startswith("huggingface/trl#") and advisory.url.endswith(advisory.pr.split("#")[1])
        assert advisory.introduced in RELEASES and advisory.fixed_in in RELEASES
        assert parse_version(advisory.introduced) < parse_version(advisory.fixed_in)


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_advisory_fires_on_every_affected_release_and_not_after_the_fix(rule_id):
    advisory = ADVISORIES[rule_id]
    trigger, quiet, processes = CASES[rule_id]
    affected = [r for r in RELEASES if advisory.affects(r)]
    assert affected[0] == advisory.introduced and affected[-1] == advisory.last_affected
    for release in (advisory.introduced, advisory.last_affected):
        [finding] = _fired(rule_id, trigger, release, processes)
        assert (
            advisory.pr in finding.explanation and f"fixed in TRL {advisory.fixed_in}" in finding.explanation
        )
        assert finding.details["severity"] == advisory.severity
        assert finding.details["fixed_in"] == advisory.fixed_in and finding.details["url"] == advisory.url
        if quiet is not None:
            assert not _fired(rule_id, quiet, release, processes), f"{rule_id} fired on {quiet} at {release}"
    for release in (advisory.fixed_in, "1.16.0"):
        assert not _fired(rule_id, trigger, release, processes), f"{rule_id} fired on the fixed TRL {release}"
        if quiet is not None:
            assert not _fired(rule_id, quiet, release, processes)
    before = [r for r in RELEASES if parse_version(r) < parse_version(advisory.introduced)]
    if before:
        assert not _fired(rule_id, trigger, before[-1], processes), f"{rule_id} fired before it shipped"


def test_release_defaults_can_trigger_an_advisory():
    """TRL 0.14–0.15 sample at temperature 0.9 by default: an unset temperature triggers GA602 there."""
    assert [f.check_id for f in _fired("GA602", {}, "0.15.2", 1)] == ["GA602"]
    assert not _fired("GA602", {}, "0.16.0", 1)


def test_patch_releases_are_told_apart():
    """The scale_rewards swap shipped in 0.22.0 and 0.22.1; 0.22.2 carries the fix."""
    assert _fired("GA606", {"scale_rewards": "none"}, "0.22.1", 1)
    assert not _fired("GA606", {"scale_rewards": "none"}, "0.22.2", 1)
    [finding] = _fired("GA606", {"scale_rewards": "none"}, "0.22.0", 1)
    assert "scaling by each group's std" in finding.explanation


def test_ga612_names_what_makes_the_luspo_loss_token_level():
    [finding] = _fired(
        "GA612", {"loss_type": "luspo", "beta": 0.04, "importance_sampling_level": "sequence"}, "1.9.2", 1
    )
    assert "beta = 0.04" in finding.explanation and "importance_sampling_level" not in finding.explanation
    assert not _fired("GA612", {"loss_type": "grpo", "beta": 0.04}, "1.9.2", 1)


def test_ga613_needs_several_micro_batches_and_counts_the_adaptive_bonus():
    one = {
        "loss_type": "dapo",
        "entropy_coef": 0.01,
        "gradient_accumulation_steps": 1,
        "steps_per_generation": 1,
    }
    assert not _fired("GA613", one, "1.9.2", 1)  # one micro-batch: the two normalisers agree
    assert _fired("GA613", {**one, "steps_per_generation": 2}, "1.9.2", 1)
    adaptive = {**one, "entropy_coef": 0.0, "use_adaptive_entropy": True, "gradient_accumulation_steps": 2}
    [finding] = _fired("GA613", adaptive, "1.8.0", 1)
    assert "use_adaptive_entropy" in finding.explanation
    assert not _fired("GA613", {**adaptive, "loss_type": "bnpo"}, "1.8.0", 1)


def test_ga608_names_the_scale_factor():
    [finding] = _fired("GA608", CASES["GA608"][0], "1.9.0", 1)
    assert "2/4 = 0.5" in finding.explanation


def test_triggered_and_fixed_by_are_consistent():
    config = {"temperature": 0.7, "per_device_train_batch_size": 2, "use_vllm": True, "max_prompt_length": 64}
    assert [a.id for a, _ in triggered("0.14.0", config)] == ["GA601", "GA602", "GA603"]
    assert [a.id for a, _ in triggered("1.16.0", config)] == []
    assert {a.id for a in fixed_by("1.16.0")} == set(ADVISORIES)
    assert fixed_by("0.14.0") == []


def test_advisories_from_a_file_on_the_release_it_was_written_for(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"training": {**BASE, "temperature": 0.6}}))
    old = audit(path, trl_version="0.15.1")
    assert [f.check_id for f in old if f.check_id.startswith("GA6")] == ["GA602"]  # GA610 shipped in 0.16
    new = audit(path, trl_version="1.16")
    assert not [f for f in new if f.check_id.startswith("GA6")]


# ------------------------------------------------------------- the released code itself (when the wheels are here)

# Fill with: pip download trl==X --no-deps -d ~/.cache/grpo-check/trl-wheels (for each release named in MARKERS)
WHEELS = Path(os.environ.get("GRPO_CHECK_TRL_WHEELS") or Path.home() / ".cache" / "grpo-check" / "trl-wheels")

# id -> (file in the wheel, a fragment of the faulty code or None, a fragment of the fixed code). The faulty
# fragment is in the last affected release; the fixed one is in the fixing release and not in the last affected.
MARKERS: dict[str, tuple[str, str | None, str]] = {
    "GA601": (
        "trl/trainer/grpo_trainer.py",
        "model(input_ids, num_logits_to_keep",
        "attention_mask=attention_mask",
    ),
    "GA602": ("trl/trainer/grpo_trainer.py", None, "logits = logits / self.temperature"),
    "GA603": (
        "trl/trainer/grpo_trainer.py",
        None,
        "prompt_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False",
    ),
    "GA605": (
        "trl/trainer/grpo_trainer.py",
        "def get_high_entropy_mask(entropies: torch.Tensor, mask: torch.Tensor, threshold: float)",
        "self.accelerator.gather(non_pad_entropies)",
    ),
    "GA604": (
        "trl/trainer/grpo_trainer.py",
        "prompt_ids, skip_special_tokens=True",
        "skip_special_tokens=False",
    ),
    "GA606": (
        "trl/trainer/grpo_trainer.py",
        'if self.scale_rewards in ["batch", "none"]:',
        'in ["group", "none"]',
    ),
    "GA607": (
        "trl/trainer/grpo_trainer.py",
        "total_completion_tokens = agg_completion_lengths.sum()",
        "gather(loss_mask.sum()).sum()",
    ),
    "GA608": (
        "trl/trainer/grpo_trainer.py",
        'normalizer = inputs["num_items_in_batch"]',
        "/ self.args.steps_per_generation",
    ),
    "GA609": (
        "trl/trainer/grpo_trainer.py",
        "self.args.steps_per_generation > self.args.gradient_accumulation_steps",
        "gradient_accumulation_steps % generate_every",
    ),
    "GA610": ("trl/trainer/grpo_trainer.py", "nansum(dim=1)", "unscorable_mask"),
    "GA611": (
        "trl/trainer/grpo_trainer.py",
        "is_clipped = (per_token_loss1 < per_token_loss2).float()",
        "is_region_clipped",
    ),
    "GA612": (
        "trl/trainer/grpo_trainer.py",
        "loss = (per_token_loss * mask.sum(1, keepdim=True)).mean()",
        "loss = (per_token_loss * mask).sum(-1).mean()",
    ),
    "GA613": (
        "trl/trainer/grpo_trainer.py",
        "entropy_loss = (entropies * effective_mask).sum() / normalizer",
        "accumulation_factor = self.current_gradient_accumulation_steps",
    ),
}


def _source(release: str, member: str) -> str | None:
    wheel = WHEELS / f"trl-{release}-py3-none-any.whl"
    if not wheel.is_file():
        return None
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(member).decode("utf-8")


@pytest.mark.parametrize("rule_id", sorted(MARKERS))
def test_the_released_code_has_the_bug_and_the_fix(rule_id):
    advisory: Advisory = ADVISORIES[rule_id]
    member, faulty, fixed = MARKERS[rule_id]
    before, after = _source(advisory.last_affected, member), _source(advisory.fixed_in, member)
    if before is None or after is None:
        pytest.skip(f"TRL wheels {advisory.last_affected}/{advisory.fixed_in} not in {WHEELS}")
    assert fixed in after
    if faulty is None:
        assert fixed not in before
        return
    assert faulty in before
    if rule_id not in ("GA608", "GA610"):  # those fixes keep the fragment and add a correction next to it
        assert faulty not in after


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "audit" / "dapo-recipe.yaml"


@pytest.mark.parametrize(
    ("release", "expected"),
    [
        ("0.22.1", ["GA606", "GA607", "GA608", "GA610"]),
        ("1.8.0", ["GA607", "GA608"]),
        ("1.9.0", ["GA608"]),
        ("1.16.0", []),
    ],
)
def test_the_documented_example(release, expected):
    """docs/audit.md shows this file's advisories on 1.8.0 and 0.22.1, and a clean audit on 1.16.0."""
    result = audit(EXAMPLE, trl_version=release)
    assert sorted(f.check_id for f in result if f.check_id.startswith("GA6")) == expected
    assert result.metadata["num_processes"] == 8 and not result.metadata["assumptions"]
    assert bool(expected) == bool(result.exit_code())

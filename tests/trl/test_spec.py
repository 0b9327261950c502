"""spec_from_trl, version support and grouping helpers (no training: fast)."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

from grpo_check.findings import InputError
from grpo_check.trl.capture import group_ids_from_prompts
from grpo_check.trl.spec import spec_from_trl, trainer_config_dict
from grpo_check.trl.versions import check_trainer_support, parse_version


def _config(**overrides):
    from trl import GRPOConfig

    return GRPOConfig(output_dir="/tmp/grpo-check-spec-test", report_to=[], use_cpu=True, **overrides)


def test_spec_follows_the_config_field_by_field():
    spec = spec_from_trl(
        _config(
            num_generations=4,
            loss_type="dr_grpo",
            beta=0.04,
            temperature=0.7,
            top_p=0.9,
            epsilon=0.1,
            epsilon_high=0.28,
            scale_rewards="batch",
            importance_sampling_level="sequence",
            gradient_accumulation_steps=4,
            steps_per_generation=2,
            num_iterations=2,
            max_completion_length=12,
            reward_weights=[1.0, 0.5],
            mask_truncated_completions=True,
        )
    )
    assert (spec.num_generations, spec.loss_type, spec.beta) == (4, "dr_grpo", 0.04)
    assert (spec.temperature, spec.top_p, spec.epsilon, spec.epsilon_high) == (0.7, 0.9, 0.1, 0.28)
    assert (spec.scale_rewards, spec.importance_sampling_level) == ("batch", "sequence")
    assert (spec.gradient_accumulation_steps, spec.steps_per_generation, spec.num_iterations) == (4, 2, 2)
    assert spec.max_completion_length == 12 and spec.reward_weights == (1.0, 0.5)
    assert spec.mask_truncated_completions is True
    assert spec.std == "sample" and spec.adv_epsilon == 1e-4  # TRL's nanstd and its hard-coded epsilon


def test_spec_keeps_trl_defaults_and_maps_boolean_scale_rewards():
    spec = spec_from_trl(_config(num_generations=2, scale_rewards=False))
    assert spec.scale_rewards == "none"
    assert spec.loss_type == _config(num_generations=2).loss_type  # read from TRL, never assumed
    assert spec.epsilon_high is None and spec.epsilon_high_effective == spec.epsilon


def test_spec_rejects_an_unrelated_object():
    with pytest.raises(InputError, match="expected a TRL GRPOTrainer or GRPOConfig"):
        spec_from_trl(object())


def test_trainer_config_dict_is_json_able():
    import json

    raw = trainer_config_dict(_config(num_generations=2))
    assert raw["num_generations"] == 2
    json.dumps(raw)


@pytest.mark.parametrize(
    ("version", "message"),
    [("0.13.0", "older than 0.14.0, the first release with GRPOTrainer"), ("2.0.0", "lacks the methods")],
)
def test_unsupported_trl_versions_get_a_clear_message(version, message):
    class Trainer:
        pass

    with pytest.raises(InputError, match=message):
        check_trainer_support(Trainer(), version=version)


def test_supported_line_and_hook_names_are_detected():
    class Trainer1x:
        def _generate_and_score_completions(self): ...
        def _calculate_rewards(self): ...
        def compute_loss(self): ...
        def _compute_loss(self): ...
        def training_step(self): ...
        def _get_per_token_logps_and_entropies(self): ...

    class Trainer017:
        def _generate_and_score_completions(self): ...
        def _calculate_rewards(self): ...
        def compute_loss(self): ...
        def training_step(self): ...
        def _get_per_token_logps(self): ...

    new = check_trainer_support(Trainer1x(), version="1.16.0")
    old = check_trainer_support(Trainer017(), version="0.17.0")
    assert (new.line, new.loss_method, new.logps_method) == (
        "1.x",
        "_compute_loss",
        "_get_per_token_logps_and_entropies",
    )
    assert (old.line, old.loss_method, old.logps_method) == ("0.x", "compute_loss", "_get_per_token_logps")
    assert parse_version("1.16.0.dev0") == (1, 16, 0)


def test_group_ids_follow_prompt_identity_not_position():
    # interleaved order (repeat instead of repeat_interleave): grouped by prompt, not by blocks of G
    assert group_ids_from_prompts(["a", "b", "a", "b"], 2) == [0, 1, 0, 1]
    # a prompt drawn twice in one batch opens a second group after G rows
    assert group_ids_from_prompts(["a", "a", "a", "a"], 2) == [0, 0, 1, 1]

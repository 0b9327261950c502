"""Every audit rule FIRES on a deliberately broken config and stays SILENT on a corrected one."""

from __future__ import annotations

import pytest

from grpo_check.audit import audit, verdict_for
from grpo_check.audit import versions as V
from grpo_check.audit.rules import RULES, AuditContext, effective_values, get_rule
from grpo_check.findings import Verdict

LATEST = "1.16"

# rule id -> (broken values, corrected values, TRL version, num_processes)
CASES: dict[str, list[tuple[dict, dict, str, int]]] = {
    "GA001": [
        (
            {"per_device_train_batch_size": 6, "gradient_accumulation_steps": 2, "num_generations": 8},
            {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "num_generations": 8},
            LATEST,
            1,
        ),
        (
            {"per_device_train_batch_size": 3, "num_generations": 8},  # 3 x 6 GPUs = 18
            {"per_device_train_batch_size": 4, "num_generations": 8},
            LATEST,
            6,
        ),  # 4 x 6 GPUs = 24
    ],
    "GA002": [
        ({"generation_batch_size": 16, "steps_per_generation": 2}, {"steps_per_generation": 2}, LATEST, 1)
    ],
    "GA003": [
        (
            {"per_device_train_batch_size": 8, "generation_batch_size": 20},
            {"per_device_train_batch_size": 8, "generation_batch_size": 32},
            LATEST,
            1,
        )
    ],
    "GA004": [({"num_generations": 1}, {"num_generations": 2}, LATEST, 1)],
    "GA005": [
        (
            {"eval_strategy": "steps", "per_device_eval_batch_size": 6, "num_generations": 8},
            {"eval_strategy": "steps", "per_device_eval_batch_size": 6, "num_generations_eval": 3},
            LATEST,
            1,
        )
    ],
    "GA006": [
        (
            {"gradient_accumulation_steps": 2, "steps_per_generation": 3},
            {"gradient_accumulation_steps": 4, "steps_per_generation": 2},
            LATEST,
            1,
        )
    ],
    "GA007": [
        (
            {"per_device_train_batch_size": 8, "num_generations": 8},
            {"per_device_train_batch_size": 16, "num_generations": 8},
            LATEST,
            1,
        )
    ],
    "GA008": [
        (
            {"reward_weights": [1.0, 0.5], "reward_funcs": ["a", "b", "c"]},
            {"reward_weights": [1.0, 0.5, 0.1], "reward_funcs": ["a", "b", "c"]},
            LATEST,
            1,
        )
    ],
    "GA009": [({"auto_find_batch_size": True}, {"auto_find_batch_size": False}, LATEST, 1)],
    "GA010": [
        (
            {"per_device_train_batch_size": 6, "num_generations": 4},
            {"per_device_train_batch_size": 8, "num_generations": 4},
            LATEST,
            1,
        )
    ],
    "GA101": [
        ({"loss_type": "grpo"}, {"loss_type": "dapo"}, LATEST, 1),
        ({}, {"loss_type": "dapo"}, "0.16", 1),
    ],  # before loss_type existed TRL normalised per sequence
    "GA102": [({"scale_rewards": True}, {"scale_rewards": "none"}, LATEST, 1)],
    "GA103": [
        (
            {"loss_type": "bnpo", "gradient_accumulation_steps": 4},
            {"loss_type": "bnpo", "gradient_accumulation_steps": 1},
            LATEST,
            1,
        )
    ],
    "GA104": [
        (
            {"loss_type": "dr_grpo", "max_completion_length": None},
            {"loss_type": "dr_grpo", "max_completion_length": 256},
            LATEST,
            1,
        )
    ],
    "GA105": [
        (
            {"importance_sampling_level": "sequence", "loss_type": "dapo"},
            {"importance_sampling_level": "sequence", "loss_type": "grpo"},
            LATEST,
            1,
        )
    ],
    "GA106": [
        ({"loss_type": "luspo"}, {"loss_type": "luspo", "importance_sampling_level": "sequence"}, LATEST, 1)
    ],
    "GA107": [
        ({"loss_type": "vespo", "importance_sampling_level": "sequence"}, {"loss_type": "vespo"}, LATEST, 1)
    ],
    "GA108": [
        (
            {"num_iterations": 2, "gradient_accumulation_steps": 4, "steps_per_generation": 2},
            {"num_iterations": 2, "gradient_accumulation_steps": 1},
            LATEST,
            1,
        )
    ],
    "GA109": [({"mask_truncated_completions": False}, {"mask_truncated_completions": True}, LATEST, 1)],
    "GA110": [({"disable_dropout": False}, {"disable_dropout": True}, LATEST, 1)],
    "GA111": [({"top_entropy_quantile": 1.5}, {"top_entropy_quantile": 0.2}, LATEST, 1)],
    "GA112": [({"sync_ref_model": True, "beta": 0.0}, {"sync_ref_model": True, "beta": 0.04}, LATEST, 1)],
    "GA417": [
        (
            {"max_seq_length": 1024, "num_generations": 8},
            {"max_completion_length": 1024, "num_generations": 8},
            LATEST,
            1,
        ),
        ({"packing": True, "num_generations": 8}, {"num_generations": 8}, LATEST, 1),
    ],
    "GA418": [
        ({"overwrite_output_dir": True, "num_generations": 8}, {"num_generations": 8}, LATEST, 1),
        ({"warmup_ratio": 0.1, "num_generations": 8}, {"warmup_steps": 10, "num_generations": 8}, LATEST, 1),
    ],
    "GA416": [
        (
            {"log_completions_hub_repo": "org/completions", "log_completions": False},
            {"log_completions_hub_repo": "org/completions", "log_completions": True},
            LATEST,
            1,
        )
    ],
    "GA113": [({"delta": 1.1, "epsilon_high": 0.28}, {"delta": 4.0, "epsilon_high": 0.28}, LATEST, 1)],
    "GA114": [
        ({"epsilon": 0.2, "epsilon_high": 0.1}, {"epsilon": 0.2, "epsilon_high": 0.28}, LATEST, 1),
        (
            {"loss_type": "cispo", "epsilon_high": 0.28},
            {"loss_type": "cispo", "epsilon_high": 5.0},
            LATEST,
            1,
        ),
    ],
    "GA115": [
        (
            {"use_bias_correction_kl": True, "beta": 0.04, "importance_sampling_level": "sequence"},
            {"use_bias_correction_kl": True, "beta": 0.04, "importance_sampling_level": "token"},
            LATEST,
            1,
        )
    ],
    "GA116": [
        (
            {"beta": 0.04, "use_bias_correction_kl": False},
            {"beta": 0.04, "use_bias_correction_kl": True},
            LATEST,
            1,
        ),
        ({"beta": 0.04}, {"beta": 0.0}, "0.26", 1),
    ],  # 0.26-1.9 defaulted to False
    "GA117": [({"off_policy_mask_threshold": 0.0}, {"off_policy_mask_threshold": 0.5}, LATEST, 1)],
    "GA118": [({"entropy_coef": -0.01}, {"entropy_coef": 0.01}, LATEST, 1)],
    "GA201": [
        (
            {"top_p": 0.9},
            {"top_p": 0.9, "use_vllm": True, "vllm_importance_sampling_correction": True},
            LATEST,
            1,
        ),
        ({"generation_kwargs": {"top_k": 20}}, {"generation_kwargs": {"max_new_tokens": 20}}, LATEST, 1),
        ({"min_p": 0.05}, {"min_p": 0.0}, LATEST, 1),
    ],
    "GA202": [
        ({"generation_kwargs": {"temperature": 0.7}}, {"generation_kwargs": {"temperature": 1.0}}, LATEST, 1),
        (
            {"temperature": 0.8, "generation_kwargs": {"temperature": 1.0}},
            {"temperature": 0.8, "generation_kwargs": {"suppress_tokens": [3]}},
            LATEST,
            1,
        ),
    ],
    "GA203": [({"temperature": 0.2}, {"temperature": 0.9}, LATEST, 1)],
    "GA204": [({"repetition_penalty": 1.1}, {"repetition_penalty": 1.0}, LATEST, 1)],
    "GA205": [
        ({"use_vllm": True, "vllm_importance_sampling_correction": False}, {"use_vllm": True}, LATEST, 1)
    ],
    "GA206": [
        (
            {
                "use_vllm": True,
                "vllm_importance_sampling_clip_min": 2.0,
                "vllm_importance_sampling_clip_max": 1.5,
            },
            {"use_vllm": True, "vllm_importance_sampling_clip_min": 0.5},
            LATEST,
            1,
        ),
        (
            {
                "use_vllm": True,
                "vllm_importance_sampling_mode": "token_truncate",
                "vllm_importance_sampling_clip_max": None,
            },
            {"use_vllm": True, "vllm_importance_sampling_mode": "token_truncate"},
            LATEST,
            1,
        ),
    ],
    "GA208": [
        (
            {"use_vllm": True, "vllm_importance_sampling_clip_max": 0.8},
            {"use_vllm": False, "vllm_importance_sampling_clip_max": 0.8},
            LATEST,
            1,
        ),
    ],
    "GA207": [
        (
            {"loss_type": "vespo", "use_vllm": True, "vllm_importance_sampling_mode": "sequence_mask"},
            {"loss_type": "vespo", "use_vllm": True, "vllm_importance_sampling_mode": "token_mask"},
            LATEST,
            1,
        )
    ],
    "GA301": [({"learning_rate": 5e-5}, {"learning_rate": 1e-6}, LATEST, 1)],
    "GA302": [
        ({"num_generations": 2, "per_device_train_batch_size": 8}, {"num_generations": 8}, LATEST, 1),
        (
            {"num_generations": 32, "per_device_train_batch_size": 32},
            {"num_generations": 16, "per_device_train_batch_size": 32},
            LATEST,
            1,
        ),
    ],
    "GA303": [({"beta": 0.5}, {"beta": 0.04}, LATEST, 1), ({"beta": -0.01}, {"beta": 0.0}, LATEST, 1)],
    "GA304": [({"beta": 0.001}, {"beta": 0.0}, LATEST, 1)],
    "GA305": [({"epsilon": 0.5}, {"epsilon": 0.2}, LATEST, 1)],
    "GA306": [
        ({"epsilon": 1e-4}, {"epsilon": 0.2}, LATEST, 1),
        ({"epsilon": 1.5}, {"epsilon": 0.28}, LATEST, 1),
    ],
    "GA307": [({"num_iterations": 8}, {"num_iterations": 2}, LATEST, 1)],
    "GA308": [
        ({"max_grad_norm": 0.0}, {"max_grad_norm": 1.0}, LATEST, 1),
        ({"max_grad_norm": None}, {}, LATEST, 1),
    ],
    "GA309": [({"bf16": True}, {"bf16": True, "cast_lm_head_to_fp32": True}, LATEST, 1)],
    "GA401": [
        (
            {},
            {f: V.defaults_for(LATEST)[f] for f in V.OBJECTIVE_FIELDS if f in V.defaults_for(LATEST)},
            LATEST,
            1,
        )
    ],
    "GA402": [({"use_vllm": True}, {"use_vllm": False}, LATEST, 1)],
    "GA403": [
        ({"max_prompt_length": 512}, {"max_completion_length": 512}, LATEST, 1),  # removed in 0.28
        ({"steps_per_generation": 2}, {"gradient_accumulation_steps": 2}, "0.17", 1),
    ],  # added in 0.18
    "GA404": [({"lerning_rate": 1e-6}, {"learning_rate": 1e-6}, LATEST, 1)],
    "GA405": [({"vllm_importance_sampling_cap": 2.0}, {"vllm_importance_sampling_clip_max": 2.0}, LATEST, 1)],
    "GA407": [
        ({"scale_rewards": "none"}, {"scale_rewards": False}, "0.19", 1),  # a truthy string on TRL < 0.22
        ({"loss_type": "dapo"}, {"loss_type": "bnpo"}, "0.19", 1),
        ({"loss_type": "dapo_"}, {"loss_type": "dapo"}, LATEST, 1),
    ],
    "GA408": [({"learning_rate": "1e-6"}, {"learning_rate": 1e-6}, LATEST, 1)],
    "GA409": [
        ({"learning_rate": float("nan")}, {"learning_rate": 1e-6}, LATEST, 1),
        ({"beta": float("inf")}, {"beta": 0.04}, LATEST, 1),
        ({"num_generations": "eight"}, {"num_generations": 8}, LATEST, 1),
        ({"per_device_train_batch_size": float("inf")}, {"per_device_train_batch_size": 8}, LATEST, 1),
    ],
    "GA410": [
        ({"num_generations": 2.5}, {"num_generations": 2}, LATEST, 1),
        ({"num_generations": 8.0}, {"num_generations": 8}, LATEST, 1),
        ({"num_generations": True}, {"num_generations": 8}, LATEST, 1),
        ({"beta": True}, {"beta": 0.04}, LATEST, 1),
        ({"reward_weights": 5}, {"reward_weights": [5.0]}, LATEST, 1),
        ({"reward_weights": "abc"}, {"reward_weights": None}, LATEST, 1),
        ({"reward_weights": [1, "a", None]}, {"reward_weights": [1, 0.5, 0]}, LATEST, 1),
        ({"generation_kwargs": "temperature=0.7"}, {"generation_kwargs": '{"max_tokens": 64}'}, LATEST, 1),
        ({"generation_kwargs": [1, 2]}, {"generation_kwargs": {"max_tokens": 64}}, LATEST, 1),
        ({"model_init_kwargs": "bfloat16"}, {"model_init_kwargs": {"dtype": "bfloat16"}}, LATEST, 1),
    ],
    "GA411": [({"my_own_script_setting": 1, "num_generations": 8}, {"num_generations": 8}, LATEST, 1)],
    "GA412": [
        ({"per_device_train_batch_size": 0}, {"per_device_train_batch_size": 8}, LATEST, 1),
        ({"gradient_accumulation_steps": 0}, {"gradient_accumulation_steps": 1}, LATEST, 1),
        ({"num_iterations": 0}, {"num_iterations": 1}, LATEST, 1),
        ({"max_completion_length": 0}, {"max_completion_length": 256}, LATEST, 1),
        ({"top_p": 1.5}, {"top_p": 1.0}, LATEST, 1),
        ({"temperature": 0}, {"temperature": 0.7}, LATEST, 1),
    ],
    "GA406": [({"num_generations": 8}, {"num_generations": 8}, "0.13", 1)],
    "GA415": [
        ({"system_prompt": "Think first.", "num_generations": 8}, {"num_generations": 8}, LATEST, 1),
        ({"cosine_max_len": 1000, "num_generations": 8}, {"num_generations": 8}, LATEST, 1),
    ],
}

# GA406 fires on the version, not the values: its silent case uses a supported release.
SILENT_VERSION = {"GA406": "0.14"}

# Rules that need facts a live trainer provides (tested in test_trainer_rules below and test_objects.py).
TRAINER_RULES = {"GA501", "GA502", "GA503", "GA504"}

# Rules about the text of a file (a key written twice, a line that is not YAML): tested on files in
# tests/audit/test_audit_recipes.py.
FILE_RULES = {"GA413", "GA414"}

# Advisories (bugs shipped in TRL releases): tested on both sides of each fix in test_audit_advisories.py.
ADVISORY_RULES = {r for r in RULES if r.startswith("GA6")}


def _ids(rule_id: str, hits) -> list[str]:
    return [f.check_id for f in hits if f.check_id == rule_id]


def test_every_rule_has_a_case():
    assert set(RULES) == set(CASES) | TRAINER_RULES | FILE_RULES | ADVISORY_RULES
    assert len(RULES) >= 30


def test_rule_metadata_complete():
    for current in RULES.values():
        assert current.id.startswith("GA") and len(current.id) == 5
        assert current.severity in ("error", "warning", "info")
        assert current.fields and current.reason and current.source and current.fix
        assert current.category != "other"
        text = current.explain()
        assert current.id in text and current.reason in text and current.source in text


@pytest.mark.parametrize(
    ("rule_id", "broken", "fixed", "version", "processes"),
    [(rule_id, *case) for rule_id, cases in CASES.items() for case in cases],
)
def test_rule_fires_and_is_silent(rule_id, broken, fixed, version, processes):
    fired = audit(broken, trl_version=version, num_processes=processes, rules=[rule_id])
    assert _ids(rule_id, fired), f"{rule_id} did not fire on {broken}"
    finding = fired.findings[0]
    assert finding.kind == "audit" and finding.stage == "config"
    assert finding.verdict is verdict_for(RULES[rule_id].severity)
    assert finding.details["severity"] == RULES[rule_id].severity
    silent = audit(
        fixed, trl_version=SILENT_VERSION.get(rule_id, version), num_processes=processes, rules=[rule_id]
    )
    assert not _ids(rule_id, silent), (
        f"{rule_id} fired on the corrected config {fixed}: {silent.findings[0].explanation}"
    )


def test_ga001_follows_the_batch_semantics_of_each_release():
    values = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "num_generations": 8}
    fired = {
        v
        for v in ("0.14", "0.16", "0.17", "0.18", "1.16")
        if audit(values, trl_version=v, rules=["GA001"]).findings
    }
    # 0.14 counted prompts; 0.15-0.16 needed 4 x 1 divisible by 8; from 0.17 the accumulation window (8) counts
    assert fired == {"0.16"}


def test_ga401_names_the_unset_field_and_its_history():
    result = audit({"loss_type": "dapo"}, trl_version="0.21", rules=["GA401"])
    fields = {f.details["fields"][0] for f in result}
    assert "beta" in fields and "loss_type" not in fields
    beta = next(f for f in result if f.details["fields"][0] == "beta")
    assert "0.04" in beta.explanation and "0.19.0" in beta.explanation


def test_ga404_suggests_the_close_field():
    (finding,) = audit({"num_generation": 8}, trl_version=LATEST, rules=["GA404"]).findings
    assert finding.details["suggestions"][0] == "num_generations"
    assert "typo of `num_generations`" in finding.explanation


def test_unknown_keys_are_errors_as_trl_refuses_them():
    """GRPOConfig(**…) refuses any key it does not declare: a close misspelling (betta, GA404, with the
    suggestion) and a key nothing resembles (GA411) are both errors; a key of open-r1's own GRPOConfig is info."""
    typo = audit({"betta": 0.1, "num_generations": 8}, trl_version=LATEST, rules=["GA404", "GA411"])
    assert [(f.check_id, f.verdict) for f in typo] == [("GA404", Verdict.FAIL)]
    assert "typo of `beta`" in typo.findings[0].explanation and typo.exit_code() == 1
    own = audit({"my_own_script_setting": 1, "beta": 0.1}, trl_version=LATEST, rules=["GA404", "GA411"])
    assert [(f.check_id, f.verdict) for f in own] == [("GA411", Verdict.FAIL)]
    extension = audit(
        {"system_prompt": "x", "beta": 0.1}, trl_version=LATEST, rules=["GA404", "GA411", "GA415"]
    )
    assert [(f.check_id, f.verdict) for f in extension] == [("GA415", Verdict.PASS)]
    assert not audit({"beta": 0.1}, trl_version=LATEST, rules=["GA404", "GA411"]).findings


def test_ga410_on_a_real_pyyaml_file(tmp_path):
    """The values come from YAML as the sweep wrote them; each wrong type is one GA410 error at its line."""
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "num_generations: 2.5\nbeta: true\nreward_weights: [1, 'a', null]\ngeneration_kwargs: [1, 2]\n"
    )
    result = audit(path, trl_version=LATEST, num_reward_funcs=3)
    hits = {f.details["fields"][0]: f for f in result.findings if f.check_id == "GA410"}
    assert sorted(hits) == ["beta", "generation_kwargs", "num_generations", "reward_weights"]
    assert hits["num_generations"].details["line"] == 1 and "2.5 is not a whole number" in (
        hits["num_generations"].explanation
    )
    assert "entries 1 ('a'), 2 (None)" in hits["reward_weights"].explanation
    assert result.exit_code() == 1


def test_a_fraction_is_never_rounded_by_other_rules():
    """num_generations: 2.5 used to be judged (and shown) as num_generations = 2 by GA302."""
    result = audit({"num_generations": 2.5, "per_device_train_batch_size": 5}, trl_version=LATEST)
    assert not any("num_generations = 2 " in f.explanation for f in result.findings)
    assert {f.check_id for f in result.failures} == {"GA410"}


def test_generation_kwargs_as_a_json_string_is_parsed_like_trl():
    """TRL's __post_init__ json-loads a dict field written as a string, so GA202 must see its keys."""
    result = audit(
        {"generation_kwargs": '{"temperature": 0.7}'}, trl_version=LATEST, rules=["GA202", "GA410"]
    )
    assert [f.check_id for f in result.findings] == ["GA202"]


def test_ga408_on_a_real_pyyaml_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("learning_rate: 1e-6\nbeta: 1.0e-2\n")
    ((finding),) = audit(path, trl_version=LATEST, rules=["GA408"]).findings
    assert "learning_rate = '1e-06'" in finding.explanation or "learning_rate = '1e-6'" in finding.explanation
    assert finding.details["line"] == 1


def test_ga404_says_when_the_suggestion_was_removed():
    (finding,) = audit({"max_prompt_lenght": 512}, trl_version="1.16", rules=["GA404"]).findings
    assert "`max_prompt_length` (removed in TRL 0.28.0)" in finding.explanation
    (finding,) = audit({"max_prompt_lenght": 512}, trl_version="0.20", rules=["GA404"]).findings
    assert "typo of `max_prompt_length`?" in finding.explanation


def test_ga403_names_the_replacement():
    (finding,) = audit({"vllm_guided_decoding_regex": "a+"}, trl_version=LATEST, rules=["GA403"]).findings
    assert "vllm_structured_outputs_regex" in finding.explanation


def test_script_keys_are_not_unknown():
    result = audit(
        {"model_name_or_path": "x", "dataset_name": "y", "num_generations": 8}, rules=["GA404", "GA403"]
    )
    assert not result.findings


def test_trainer_rules_fire_and_stay_silent():
    def ctx(facts, values=None):
        return AuditContext(values=effective_values(values or {"beta": 0.04}), facts=facts)

    assert RULES["GA501"].run(ctx({"dropout_max": 0.1}))
    assert not RULES["GA501"].run(ctx({"dropout_max": 0.0}))
    assert RULES["GA502"].run(ctx({"ref_is_policy": True}))
    assert not RULES["GA502"].run(ctx({"ref_is_policy": True}, {"beta": 0.0}))
    assert not RULES["GA502"].run(ctx({"ref_is_policy": False}))
    assert RULES["GA504"].run(
        ctx({"functional_dropout": {"model.layers.0.self_attn.attention_dropout": 0.1}})
    )
    assert not RULES["GA504"].run(ctx({"functional_dropout": {}}))
    assert RULES["GA503"].run(ctx({"overrides": [("beta", "beta", 0.0, 0.1)]}))
    assert not RULES["GA503"].run(ctx({"overrides": []}))
    # with the live model's dropout known, GA110's file-level warning defers to GA501
    assert not RULES["GA110"].run(ctx({"dropout_max": 0.0}, {"disable_dropout": False}))


def test_effective_values_follow_trl_post_init():
    values = effective_values(
        {"per_device_train_batch_size": 4, "generation_batch_size": 32}, num_processes=2
    )
    assert values["steps_per_generation"] == 4
    values = effective_values({"scale_rewards": False})
    assert values["scale_rewards"] == "none"
    values = effective_values({"epsilon": 0.3})
    assert values["epsilon_high"] == 0.3


def test_get_rule_unknown_suggests():
    with pytest.raises(KeyError, match="did you mean GA1"):
        get_rule("GA10")
    assert get_rule("ga101").id == "GA101"


def test_severity_verdict_mapping():
    assert verdict_for("error") is Verdict.FAIL
    assert verdict_for("warning") is Verdict.WARN
    assert verdict_for("info") is Verdict.PASS
    info_only = audit({"scale_rewards": "group"}, rules=["GA102"])
    assert info_only.exit_code(strict=True) == 0


def test_infinite_integer_field_does_not_crash_other_rules(tmp_path):
    """`.inf` in an integer field used to raise OverflowError inside effective_values (a traceback)."""
    path = tmp_path / "cfg.yaml"
    path.write_text("per_device_train_batch_size: .inf\nnum_generations: .nan\n")
    result = audit(path, trl_version=LATEST)
    flagged = {f.details["fields"][0] for f in result.findings if f.check_id == "GA409"}
    assert flagged == {"per_device_train_batch_size", "num_generations"}
    assert result.exit_code() == 1


def test_ga409_allows_infinite_upper_bounds():
    assert not audit({"max_grad_norm": float("inf")}, trl_version=LATEST, rules=["GA409"]).findings
    assert audit({"max_grad_norm": float("-inf")}, trl_version=LATEST, rules=["GA409"]).findings


def test_ga418_follows_the_installed_transformers():
    values = {"overwrite_output_dir": True, "warmup_ratio": 0.1}
    on_5 = AuditContext.from_values(values, facts={"transformers_version": "5.25.0"})
    assert [h.fields for h in RULES["GA418"].run(on_5)] == [("overwrite_output_dir",), ("warmup_ratio",)]
    on_4 = AuditContext.from_values(values, facts={"transformers_version": "4.56.2"})
    assert RULES["GA418"].run(on_4) == []
    unknown = AuditContext.from_values(values, facts={"transformers_version": None})
    assert "assumed" in RULES["GA418"].run(unknown)[0].message
    other_release = AuditContext.from_values(values, facts={"transformers_known": False})
    assert RULES["GA418"].run(other_release) == []


def test_ga418_only_judges_the_installed_release():
    """transformers 5 is installed here: it decides for the installed TRL, not for another release audited."""
    from importlib import metadata

    values = {"overwrite_output_dir": True, "num_generations": 8}
    installed = audit(values, trl_version=metadata.version("trl"), rules=["GA418"])
    assert [f.check_id for f in installed] == (
        ["GA418"] if int(metadata.version("transformers").split(".")[0]) >= 5 else []
    )
    assert not audit(values, trl_version="0.19.0", rules=["GA418"]).findings

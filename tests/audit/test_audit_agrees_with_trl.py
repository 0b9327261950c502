"""The audit agrees with the installed TRL's own validation: every configuration that ``GRPOConfig`` (or, where
cheap, ``GRPOTrainer`` on the tiny demo model) refuses at construction is an audit error, and every audit error on
a configuration TRL constructs is one of the documented intended differences below.

Differential, with hypothesis over the fields the audit and TRL both judge, against the real TRL installed.
"""

from __future__ import annotations

import warnings
from importlib import metadata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpo_check.audit import audit
from grpo_check.audit.rules import RULES

trl = pytest.importorskip("trl")
TRL_VERSION = metadata.version("trl")
if not TRL_VERSION.startswith("1.16."):
    pytest.skip(
        f"the differential agreement is established against TRL 1.16 (installed: {TRL_VERSION})",
        allow_module_level=True,
    )

# Audit errors on configurations TRL constructs without complaint, each with the reason the audit still calls them
# errors: TRL fails later (after loading the model and generating), or the run computes something else than GRPO.
INTENDED_DIFFERENCES: dict[str, str] = {
    "GA104": "dr_grpo divides by max_completion_length at the first loss; None raises there, not at construction",
    "GA106": "luspo with token-level importance sampling runs but optimises another objective",
    "GA107": "vespo with sequence-level importance sampling runs but optimises another objective",
    "GA111": "top_entropy_quantile outside [0, 1]: torch.quantile raises at the first training step",
    "GA113": "a delta inside the clip range bounds nothing: the two-sided clip silently does not act",
    "GA117": "off_policy_mask_threshold ≤ 0 masks every sequence: the run learns nothing",
    "GA202": "generation_kwargs overriding a sampling field: the sampler and the trainer use different values",
    "GA208": "vllm_importance_sampling_clip_max < 1 (with vLLM) caps the on-policy ratio 1 itself",
    "GA207": "vespo with a sequence-level vLLM IS mode: GRPOTrainer refuses it, but only when vLLM is used",
    "GA306": "epsilon ≥ 1 or ≈ 1e-4: the clip range is degenerate; TRL runs it",
    "GA407": "a value this release does not accept (loss_type='bogus' …) raises at the first loss computation",
    "GA409": "NaN/inf in a numeric field: TrainingArguments keeps it; the first step turns the weights to NaN",
    "GA410": "a value of the wrong type is kept by the dataclass and fails where it is first used",
    "GA412": "a count of 0, top_p outside (0, 1] or temperature ≤ 0 fails (division by zero, empty batch) in training",
    "GA112": "sync_ref_model with beta = 0: GRPOConfig accepts it, GRPOTrainer refuses it (tested below)",
}

CHOICES: dict[str, list] = {
    "num_generations": [1, 2, 3, 4, 8],
    "per_device_train_batch_size": [0, 1, 2, 3, 4, 6, 8],
    "gradient_accumulation_steps": [1, 2, 3, 4],
    "steps_per_generation": [None, 1, 2, 3],
    "generation_batch_size": [None, 4, 6, 8, 12],
    "do_eval": [False, True],
    "eval_strategy": ["no", "steps"],
    "per_device_eval_batch_size": [1, 2, 4, 8],
    "num_generations_eval": [None, 2, 3],
    "auto_find_batch_size": [False, True],
    "log_completions": [False, True],
    "log_completions_hub_repo": [None, "org/completions"],
    "vllm_importance_sampling_correction": [False, True],
    "vllm_importance_sampling_mode": ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"],
    "vllm_importance_sampling_clip_min": [None, 0.5, 2.0],
    "vllm_importance_sampling_clip_max": [None, 1.0, 3.0],
    "loss_type": ["grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo", "bogus"],
    "scale_rewards": ["group", "batch", "none", True, False, "bogus"],
    "importance_sampling_level": ["token", "sequence", "bogus"],
    "epsilon": [0.2, 1e-4, 1.5],
    "beta": [0.0, 0.04],
    "sync_ref_model": [False, True],
    "temperature": [1.0, 0.7, 0.0],
    "top_p": [1.0, 0.9, 1.5],
    "top_entropy_quantile": [1.0, 0.2, 1.5],
    "learning_rate": [1e-6, "1e-6", float("nan")],
    "delta": [None, 0.5, 3.0],
    "off_policy_mask_threshold": [None, -1.0, 0.5],
    "max_completion_length": [None, 0, 64],
    # keys GRPOConfig does not take in this release: a typo, a removed field, a key of another trainer
    "betta": [0.1],
    "max_prompt_length": [512],
    "max_seq_length": [1024],
    # TrainingArguments fields of transformers 4.x (refused with transformers 5 installed)
    "overwrite_output_dir": [True],
    "warmup_ratio": [0.1],
    "warmup_steps": [10],
}

configs = st.fixed_dictionaries(
    {}, optional={name: st.sampled_from(values) for name, values in CHOICES.items()}
)


def _trl_refuses(config: dict) -> str | None:
    """Why the installed GRPOConfig refuses ``config`` (None when it constructs it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trl.GRPOConfig(output_dir="unused", report_to="none", use_cpu=True, bf16=False, **config)
        except (TypeError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
    return None


def _errors(config: dict) -> set[str]:
    result = audit(config, trl_version=TRL_VERSION, num_processes=1)
    return {f.check_id for f in result if f.details["severity"] == "error"}


def test_intended_differences_are_error_rules():
    for rule_id, reason in INTENDED_DIFFERENCES.items():
        assert RULES[rule_id].severity == "error" and reason


@settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
@given(config=configs)
def test_audit_errors_agree_with_grpoconfig(config):
    refused = _trl_refuses(config)
    errors = _errors(config)
    agreeing = errors - set(INTENDED_DIFFERENCES)
    if refused is not None:
        assert agreeing, (
            f"GRPOConfig refuses {config} ({refused}) but the audit reports no matching error: {errors}"
        )
    else:
        assert not agreeing, f"the audit reports {sorted(agreeing)} on {config}, which GRPOConfig constructs"


@pytest.mark.parametrize(
    ("config", "refusal"),
    [
        ({"betta": 0.1}, "unexpected keyword argument 'betta'"),
        ({"num_generations": 3, "per_device_train_batch_size": 4}, "divisible by num_generations"),
        ({"num_generations": 1, "per_device_train_batch_size": 4}, "at least 2 generations"),
        ({"generation_batch_size": 8, "steps_per_generation": 2}, "can not be both configured"),
        (
            {"generation_batch_size": 6, "per_device_train_batch_size": 4, "num_generations": 2},
            "global batch",
        ),
        ({"auto_find_batch_size": True}, "auto_find_batch_size is not supported"),
        ({"log_completions_hub_repo": "org/x"}, "log_completions is False"),
        (
            {"vllm_importance_sampling_clip_min": 2.0, "vllm_importance_sampling_clip_max": 1.0},
            "must be less",
        ),
        (
            {
                "do_eval": True,
                "eval_strategy": "steps",
                "per_device_eval_batch_size": 3,
                "num_generations": 2,
            },
            "global eval batch size",
        ),
    ],
)
def test_each_grpoconfig_refusal_is_an_error(config, refusal):
    """One example per refusal GRPOConfig.__post_init__ makes (the property above explores their combinations)."""
    config = {"num_generations": 2, "per_device_train_batch_size": 2, **config}
    reason = _trl_refuses(config)
    assert reason is not None and refusal in reason, reason
    assert _errors(config) - set(INTENDED_DIFFERENCES)


# ---------------------------------------------------------------- GRPOTrainer construction on the tiny demo model


@pytest.fixture(scope="module")
def demo_parts(tmp_path_factory):
    from grpo_check.demo.model import build_tokenizer, save_policy
    from grpo_check.demo.task import correctness_reward, format_reward, make_dataset

    workdir = tmp_path_factory.mktemp("agree")
    model_dir = save_policy(workdir / "policy", seed=0)
    return {
        "model": str(model_dir),
        "reward_funcs": [correctness_reward, format_reward],
        "train_dataset": make_dataset(8, seed=0),
        "processing_class": build_tokenizer(),
        "workdir": workdir,
    }


def _trainer_refuses(config: dict, parts: dict) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            args = trl.GRPOConfig(
                output_dir=str(parts["workdir"] / "out"),
                report_to="none",
                use_cpu=True,
                bf16=False,
                save_strategy="no",
                **config,
            )
            trl.GRPOTrainer(
                model=parts["model"],
                reward_funcs=parts["reward_funcs"],
                args=args,
                train_dataset=parts["train_dataset"],
                processing_class=parts["processing_class"],
            )
        except (TypeError, ValueError, NotImplementedError) as exc:
            return f"{type(exc).__name__}: {exc}"
    return None


@pytest.mark.parametrize(
    "config",
    [
        {"sync_ref_model": True, "beta": 0.0},
        {"sync_ref_model": True, "beta": 0.04},
        {"reward_weights": [1.0, 0.5, 0.2]},
        {"reward_weights": [1.0, 0.5]},
        {"beta": 0.04, "loss_type": "grpo", "scale_rewards": "batch"},
    ],
)
def test_audit_errors_agree_with_grpotrainer(config, demo_parts):
    base = {"num_generations": 2, "per_device_train_batch_size": 2, "max_completion_length": 8}
    config = {**base, **config}
    refused = _trainer_refuses(config, demo_parts)
    result = audit(config, trl_version=TRL_VERSION, num_processes=1, num_reward_funcs=2)
    errors = {f.check_id for f in result if f.details["severity"] == "error"}
    agreeing = errors - (set(INTENDED_DIFFERENCES) - {"GA112"})
    assert bool(refused) == bool(agreeing), f"TRL: {refused}; audit errors: {sorted(errors)}"

"""TRL ``GRPOConfig`` defaults per release (:data:`VERSIONS`, the history of each field's default), what TRL
did before a field existed, and the ``TrainingArguments`` defaults the rules read.

The table was established by reading ``trl/trainer/grpo_config.py`` (and ``base_config.py`` where it exists)
inside the released wheels of TRL 0.14.0 … 1.16.0 (``pip download trl==X --no-deps``), parsing the dataclass
field defaults with :mod:`ast`; versions between two listed releases share the earlier release's defaults.
``ABSENT`` marks a release in which the field does not exist. Standard library only."""

from __future__ import annotations

from typing import Any


class _Absent:
    """Marker: the field does not exist in that TRL release."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


VERSIONS: tuple[str, ...] = (
    "0.14.0",
    "0.15.0",
    "0.16.0",
    "0.17.0",
    "0.18.0",
    "0.19.0",
    "0.20.0",
    "0.21.0",
    "0.22.0",
    "0.23.0",
    "0.24.0",
    "0.25.0",
    "0.26.0",
    "0.27.0",
    "0.28.0",
    "0.29.0",
    "1.0.0",
    "1.2.0",
    "1.4.0",
    "1.6.0",
    "1.8.0",
    "1.10.0",
    "1.12.0",
    "1.14.0",
    "1.15.0",
    "1.16.0",
)


_HISTORY: dict[str, tuple[tuple[str, Any], ...]] = {
    "model_init_kwargs": (("0.14.0", None),),
    "remove_unused_columns": (("0.14.0", False),),
    "max_prompt_length": (
        ("0.14.0", 512),
        ("0.26.0", None),
        ("0.28.0", ABSENT),
    ),
    "num_generations": (("0.14.0", 8),),
    "temperature": (
        ("0.14.0", 0.9),
        ("0.18.0", 1.0),
    ),
    "max_completion_length": (
        ("0.14.0", 256),
        ("1.10.0", 512),
    ),
    "use_vllm": (("0.14.0", False),),
    "vllm_device": (
        ("0.14.0", "auto"),
        ("0.16.0", None),
        ("0.18.0", ABSENT),
    ),
    "vllm_gpu_memory_utilization": (
        ("0.14.0", 0.9),
        ("0.16.0", None),
        ("0.18.0", 0.3),
    ),
    "learning_rate": (("0.14.0", 1e-06),),
    "per_device_train_batch_size": (
        ("0.14.0", 1),
        ("0.15.0", ABSENT),
    ),
    "gradient_accumulation_steps": (
        ("0.14.0", 8),
        ("0.15.0", ABSENT),
    ),
    "beta": (
        ("0.14.0", 0.04),
        ("0.19.0", 0.0),
    ),
    "ds3_gather_for_generation": (
        ("0.14.0", ABSENT),
        ("0.15.0", True),
    ),
    "vllm_dtype": (
        ("0.14.0", ABSENT),
        ("0.15.0", "auto"),
        ("0.16.0", None),
        ("0.18.0", ABSENT),
    ),
    "vllm_max_model_len": (
        ("0.14.0", ABSENT),
        ("0.15.0", None),
        ("0.18.0", ABSENT),
    ),
    "reward_weights": (
        ("0.14.0", ABSENT),
        ("0.15.0", None),
    ),
    "sync_ref_model": (
        ("0.14.0", ABSENT),
        ("0.15.0", False),
    ),
    "ref_model_mixup_alpha": (
        ("0.14.0", ABSENT),
        ("0.15.0", 0.9),
        ("0.16.0", 0.6),
    ),
    "ref_model_sync_steps": (
        ("0.14.0", ABSENT),
        ("0.15.0", 64),
        ("0.16.0", 512),
    ),
    "log_completions": (
        ("0.14.0", ABSENT),
        ("0.15.0", False),
    ),
    "top_p": (
        ("0.14.0", ABSENT),
        ("0.16.0", 1.0),
    ),
    "top_k": (
        ("0.14.0", ABSENT),
        ("0.16.0", 50),
        ("0.18.0", None),
        ("0.27.0", 0),
    ),
    "min_p": (
        ("0.14.0", ABSENT),
        ("0.16.0", None),
    ),
    "repetition_penalty": (
        ("0.14.0", ABSENT),
        ("0.16.0", 1.0),
    ),
    "cache_implementation": (
        ("0.14.0", ABSENT),
        ("0.16.0", None),
    ),
    "vllm_server_host": (
        ("0.14.0", ABSENT),
        ("0.16.0", "0.0.0.0"),
    ),
    "vllm_server_port": (
        ("0.14.0", ABSENT),
        ("0.16.0", 8000),
    ),
    "vllm_server_timeout": (
        ("0.14.0", ABSENT),
        ("0.16.0", 120.0),
        ("0.17.0", 240.0),
    ),
    "vllm_guided_decoding_regex": (
        ("0.14.0", ABSENT),
        ("0.16.0", None),
        ("0.28.0", ABSENT),
    ),
    "num_iterations": (
        ("0.14.0", ABSENT),
        ("0.16.0", 1),
    ),
    "epsilon": (
        ("0.14.0", ABSENT),
        ("0.16.0", 0.2),
    ),
    "epsilon_high": (
        ("0.14.0", ABSENT),
        ("0.16.0", None),
    ),
    "scale_rewards": (
        ("0.14.0", ABSENT),
        ("0.16.0", True),
        ("0.22.0", "group"),
    ),
    "vllm_enable_prefix_caching": (
        ("0.14.0", ABSENT),
        ("0.16.0", None),
        ("0.18.0", ABSENT),
    ),
    "disable_dropout": (
        ("0.14.0", ABSENT),
        ("0.17.0", False),
    ),
    "shuffle_dataset": (
        ("0.14.0", ABSENT),
        ("0.17.0", True),
    ),
    "loss_type": (
        ("0.14.0", ABSENT),
        ("0.17.0", "bnpo"),
        ("0.22.0", "dapo"),
    ),
    "mask_truncated_completions": (
        ("0.14.0", ABSENT),
        ("0.17.0", False),
    ),
    "use_liger_loss": (
        ("0.14.0", ABSENT),
        ("0.17.0", False),
        ("0.25.0", None),
        ("0.28.0", ABSENT),
    ),
    "num_completions_to_print": (
        ("0.14.0", ABSENT),
        ("0.17.0", None),
    ),
    "wandb_log_unique_prompts": (
        ("0.14.0", ABSENT),
        ("0.17.0", False),
        ("0.26.0", None),
        ("0.27.0", ABSENT),
    ),
    "generation_batch_size": (
        ("0.14.0", ABSENT),
        ("0.18.0", None),
    ),
    "steps_per_generation": (
        ("0.14.0", ABSENT),
        ("0.18.0", None),
    ),
    "vllm_server_base_url": (
        ("0.14.0", ABSENT),
        ("0.18.0", None),
    ),
    "vllm_mode": (
        ("0.14.0", ABSENT),
        ("0.18.0", "server"),
        ("1.0.0", "colocate"),
    ),
    "vllm_tensor_parallel_size": (
        ("0.14.0", ABSENT),
        ("0.18.0", 1),
    ),
    "delta": (
        ("0.14.0", ABSENT),
        ("0.18.0", None),
    ),
    "logging_steps": (
        ("0.14.0", ABSENT),
        ("0.19.0", 10),
        ("0.29.0", ABSENT),
        ("1.0.0", 10),
    ),
    "bf16": (
        ("0.14.0", ABSENT),
        ("0.19.0", None),
        ("0.29.0", ABSENT),
        ("1.0.0", None),
    ),
    "generation_kwargs": (
        ("0.14.0", ABSENT),
        ("0.19.0", None),
    ),
    "use_transformers_paged": (
        ("0.14.0", ABSENT),
        ("0.20.0", False),
    ),
    "importance_sampling_level": (
        ("0.14.0", ABSENT),
        ("0.20.0", "token"),
    ),
    "top_entropy_quantile": (
        ("0.14.0", ABSENT),
        ("0.20.0", 1.0),
    ),
    "vllm_model_impl": (
        ("0.14.0", ABSENT),
        ("0.21.0", "vllm"),
    ),
    "gradient_checkpointing": (
        ("0.14.0", ABSENT),
        ("0.22.0", True),
        ("0.29.0", ABSENT),
        ("1.0.0", True),
    ),
    "vllm_enable_sleep_mode": (
        ("0.14.0", ABSENT),
        ("0.23.0", False),
    ),
    "vllm_importance_sampling_correction": (
        ("0.14.0", ABSENT),
        ("0.23.0", True),
    ),
    "vllm_importance_sampling_cap": (
        ("0.14.0", ABSENT),
        ("0.23.0", 2.0),
        ("0.26.0", 3.0),
        ("1.6.0", None),
    ),
    "cast_lm_head_to_fp32": (
        ("0.14.0", ABSENT),
        ("0.25.0", False),
    ),
    "chat_template_kwargs": (
        ("0.14.0", ABSENT),
        ("0.25.0", None),
    ),
    "lr_scheduler_kwargs": (
        ("0.14.0", ABSENT),
        ("0.26.0", None),
        ("0.29.0", ABSENT),
        ("1.0.0", None),
    ),
    "num_generations_eval": (
        ("0.14.0", ABSENT),
        ("0.26.0", None),
    ),
    "vllm_max_model_length": (
        ("0.14.0", ABSENT),
        ("0.26.0", None),
    ),
    "sapo_temperature_neg": (
        ("0.14.0", ABSENT),
        ("0.26.0", 1.05),
    ),
    "sapo_temperature_pos": (
        ("0.14.0", ABSENT),
        ("0.26.0", 1.0),
    ),
    "vllm_importance_sampling_mode": (
        ("0.14.0", ABSENT),
        ("0.26.0", "sequence_mask"),
    ),
    "use_bias_correction_kl": (
        ("0.14.0", ABSENT),
        ("0.26.0", False),
        ("1.10.0", True),
    ),
    "log_unique_prompts": (
        ("0.14.0", ABSENT),
        ("0.26.0", False),
    ),
    "vllm_structured_outputs_regex": (
        ("0.14.0", ABSENT),
        ("0.27.0", None),
    ),
    "vllm_group_port": (
        ("0.14.0", ABSENT),
        ("0.27.0", 51216),
    ),
    "multi_objective_aggregation": (
        ("0.14.0", ABSENT),
        ("0.27.0", "sum_then_normalize"),
    ),
    "max_tool_calling_iterations": (
        ("0.14.0", ABSENT),
        ("0.27.0", None),
    ),
    "off_policy_mask_threshold": (
        ("0.14.0", ABSENT),
        ("0.27.0", None),
    ),
    "log_completions_hub_repo": (
        ("0.14.0", ABSENT),
        ("0.28.0", None),
    ),
    "use_liger_kernel": (
        ("0.14.0", ABSENT),
        ("1.0.0", False),
    ),
    "torch_empty_cache_steps": (
        ("0.14.0", ABSENT),
        ("1.0.0", None),
    ),
    "pad_to_multiple_of": (
        ("0.14.0", ABSENT),
        ("1.0.0", None),
        ("1.16.0", "auto"),
    ),
    "vespo_k_pos": (
        ("0.14.0", ABSENT),
        ("1.0.0", 2.0),
    ),
    "vespo_lambda_pos": (
        ("0.14.0", ABSENT),
        ("1.0.0", 3.0),
    ),
    "vespo_k_neg": (
        ("0.14.0", ABSENT),
        ("1.0.0", 3.0),
    ),
    "vespo_lambda_neg": (
        ("0.14.0", ABSENT),
        ("1.0.0", 2.0),
    ),
    "vllm_importance_sampling_clip_max": (
        ("0.14.0", ABSENT),
        ("1.6.0", 3.0),
    ),
    "vllm_importance_sampling_clip_min": (
        ("0.14.0", ABSENT),
        ("1.6.0", None),
    ),
    "trust_remote_code": (
        ("0.14.0", ABSENT),
        ("1.8.0", False),
    ),
    "router_aux_loss_coef": (
        ("0.14.0", ABSENT),
        ("1.8.0", 0.001),
        ("1.14.0", None),
    ),
    "entropy_coef": (
        ("0.14.0", ABSENT),
        ("1.8.0", 0.0),
    ),
    "use_adaptive_entropy": (
        ("0.14.0", ABSENT),
        ("1.8.0", False),
    ),
    "entropy_coef_min": (
        ("0.14.0", ABSENT),
        ("1.8.0", 0.0),
    ),
    "entropy_coef_max": (
        ("0.14.0", ABSENT),
        ("1.8.0", 1.0),
    ),
    "entropy_coef_delta": (
        ("0.14.0", ABSENT),
        ("1.8.0", 0.005),
    ),
    "entropy_target": (
        ("0.14.0", ABSENT),
        ("1.8.0", 0.2),
    ),
    "use_transformers_continuous_batching": (
        ("0.14.0", ABSENT),
        ("1.8.0", False),
    ),
    "transformers_continuous_batching_config": (
        ("0.14.0", ABSENT),
        ("1.8.0", None),
    ),
    "log_multimodal": (
        ("0.14.0", ABSENT),
        ("1.10.0", True),
    ),
}


# What TRL did before a field existed (the behaviour was hard-coded): used so a rule reasons about the
# objective an old release really optimised, e.g. 0.14-0.16 always normalised per sequence (= loss_type grpo).
IMPLICIT_BEHAVIOUR: dict[str, Any] = {
    "loss_type": "grpo",
    "scale_rewards": "group",
    "epsilon": 0.2,
    "num_iterations": 1,
    "disable_dropout": False,
    "mask_truncated_completions": False,
    "importance_sampling_level": "token",
    "top_p": 1.0,
    "top_k": 0,
    "repetition_penalty": 1.0,
    "use_bias_correction_kl": False,
    "vllm_importance_sampling_correction": False,
    "top_entropy_quantile": 1.0,
    "entropy_coef": 0.0,
    "multi_objective_aggregation": "sum_then_normalize",
}


# transformers.TrainingArguments defaults that the rules read (GRPOConfig overrides listed in _HISTORY win).
TRAINING_ARGUMENTS_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "learning_rate": 5e-5,
    "max_grad_norm": 1.0,
    "do_eval": False,
    "eval_strategy": "no",
    "auto_find_batch_size": False,
    "bf16": False,
    "fp16": False,
}

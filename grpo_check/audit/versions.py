"""TRL ``GRPOConfig`` defaults per release: which value an unset field takes depends on the TRL version.

The table was established by reading ``trl/trainer/grpo_config.py`` (and ``base_config.py`` where it exists)
inside the released wheels of TRL 0.14.0 … 1.16.0 (``pip download trl==X --no-deps``), parsing the dataclass
field defaults with :mod:`ast`; versions between two listed releases share the earlier release's defaults.
``ABSENT`` marks a release in which the field does not exist.

Standard library only; nothing here imports TRL.

Example::

    >>> from grpo_check.audit.versions import defaults_for, history
    >>> defaults_for("0.18")["beta"], defaults_for("1.16")["beta"]
    (0.04, 0.0)
    >>> [v for v, _ in history("loss_type")]
    ['0.14.0', '0.17.0', '0.22.0']
"""

from __future__ import annotations

import functools
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

# Field names of transformers.TrainingArguments (5.23), plus names older transformers 4.x releases used;
# GRPOConfig inherits them all, so they are never "unknown keys".
TRAINING_ARGUMENTS_FIELDS: frozenset[str] = frozenset(
    [
        "accelerator_config",
        "activation_checkpointing",
        "activation_checkpointing_kwargs",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "auto_find_batch_size",
        "average_tokens_across_devices",
        "batch_eval_metrics",
        "bf16",
        "bf16_full_eval",
        "data_seed",
        "dataloader_drop_last",
        "dataloader_in_order",
        "dataloader_multiprocessing_context",
        "dataloader_num_workers",
        "dataloader_persistent_workers",
        "dataloader_pin_memory",
        "dataloader_prefetch_factor",
        "ddp_backend",
        "ddp_broadcast_buffers",
        "ddp_bucket_cap_mb",
        "ddp_find_unused_parameters",
        "ddp_static_graph",
        "ddp_timeout",
        "debug",
        "deepspeed",
        "disable_tqdm",
        "do_eval",
        "do_predict",
        "do_train",
        "enable_jit_checkpoint",
        "eval_accumulation_steps",
        "eval_delay",
        "eval_do_concat_batches",
        "eval_on_start",
        "eval_steps",
        "eval_strategy",
        "eval_use_gather_object",
        "fp16",
        "fp16_full_eval",
        "fsdp",
        "fsdp_config",
        "full_determinism",
        "gradient_accumulation_steps",
        "gradient_checkpointing",
        "gradient_checkpointing_kwargs",
        "greater_is_better",
        "hub_always_push",
        "hub_model_id",
        "hub_private_repo",
        "hub_revision",
        "hub_strategy",
        "hub_token",
        "ignore_data_skip",
        "include_for_metrics",
        "include_num_input_tokens_seen",
        "label_names",
        "label_smoothing_factor",
        "learning_rate",
        "length_column_name",
        "liger_kernel_config",
        "load_best_model_at_end",
        "local_rank",
        "log_level",
        "log_level_replica",
        "log_on_each_node",
        "logging_first_step",
        "logging_nan_inf_filter",
        "logging_steps",
        "logging_strategy",
        "lr_scheduler_kwargs",
        "lr_scheduler_type",
        "max_grad_norm",
        "max_steps",
        "metric_for_best_model",
        "neftune_noise_alpha",
        "num_train_epochs",
        "optim",
        "optim_args",
        "optim_target_modules",
        "output_dir",
        "parallelism_config",
        "per_device_eval_batch_size",
        "per_device_train_batch_size",
        "prediction_loss_only",
        "project",
        "push_to_hub",
        "remove_unused_columns",
        "report_to",
        "restore_callback_states_from_checkpoint",
        "resume_from_checkpoint",
        "run_name",
        "save_on_each_node",
        "save_only_model",
        "save_steps",
        "save_strategy",
        "save_total_limit",
        "seed",
        "skip_memory_metrics",
        "tf32",
        "torch_compile",
        "torch_compile_backend",
        "torch_compile_mode",
        "torch_empty_cache_steps",
        "trackio_bucket_id",
        "trackio_space_id",
        "trackio_static_space_id",
        "train_sampling_strategy",
        "use_cache",
        "use_cpu",
        "use_liger_kernel",
        "warmup_steps",
        "weight_decay",
        "warmup_ratio",
        "overwrite_output_dir",
        "evaluation_strategy",
        "logging_dir",
        "save_safetensors",
        "fp16_opt_level",
        "half_precision_backend",
        "tpu_num_cores",
        "push_to_hub_model_id",
        "push_to_hub_organization",
        "push_to_hub_token",
        "include_inputs_for_metrics",
        "use_mps_device",
        "ray_scope",
        "jit_mode_eval",
        "use_ipex",
        "no_cuda",
        "past_index",
        "group_by_length",
        "adafactor",
        "torchdynamo",
        "split_batches",
        "dispatch_batches",
        "include_tokens_per_second",
        "use_legacy_prediction_loop",
        "mp_parameters",
        "fsdp_min_num_params",
        "fsdp_transformer_layer_cls_to_wrap",
        "sharded_ddp",
        "xpu_backend",
        "fp16_backend",
        "per_gpu_train_batch_size",
        "per_gpu_eval_batch_size",
        "save_steps",
    ]
)

# Keys TRL's scripts (ScriptArguments, ModelConfig, GRPOScriptArguments) and accelerate read from the same
# YAML file: legitimate there, but not GRPOConfig fields, so they are neither audited nor "unknown".
SCRIPT_KEYS: frozenset[str] = frozenset(
    [
        "model_name_or_path",
        "model_revision",
        "dtype",
        "torch_dtype",
        "attn_implementation",
        "use_peft",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "lora_modules_to_save",
        "lora_task_type",
        "use_rslora",
        "use_dora",
        "load_in_8bit",
        "load_in_4bit",
        "bnb_4bit_quant_type",
        "use_bnb_nested_quant",
        "trust_remote_code",
        "dataset_name",
        "dataset_config",
        "dataset_train_split",
        "dataset_test_split",
        "dataset_streaming",
        "dataset_mixture",
        "datasets",
        "gradient_checkpointing_use_reentrant",
        "ignore_bias_buffers",
        "reward_funcs",
        "reward_model_name_or_path",
        "num_processes",
        "config_file",
    ]
)

# Keys that public projects add to TRL's GRPOConfig in a subclass, or to their script arguments: read by that
# project's own scripts, refused by TRL's GRPOConfig(**…) and TRL's CLI. key -> the project class that reads it.
_OPEN_R1_CONFIG = "open-r1 GRPOConfig (src/open_r1/configs.py)"
_OPEN_R1_SCRIPT = "open-r1 GRPOScriptArguments (src/open_r1/configs.py)"
EXTENSION_KEYS: dict[str, str] = {
    **{
        key: _OPEN_R1_CONFIG
        for key in (
            "benchmarks",
            "callbacks",
            "chat_template",
            "hub_model_revision",
            "num_completions_to_print",
            "overwrite_hub_revision",
            "push_to_hub_revision",
            "system_prompt",
            "wandb_entity",
            "wandb_project",
            "wandb_run_group",
        )
    },
    **{
        key: _OPEN_R1_SCRIPT
        for key in (
            "cosine_min_value_wrong",
            "cosine_max_value_wrong",
            "cosine_min_value_correct",
            "cosine_max_value_correct",
            "cosine_max_len",
            "repetition_n_grams",
            "repetition_max_penalty",
            "code_language",
            "code_eval_test_batch_size",
            "code_eval_scoring_mode",
            "parallel_code_exec_per_proc",
            "dataset_prompt_column",
            "e2b_router_url",
            "morph_router_url",
            "code_provider",
            "ioi_provider",
            "max_completion_len",
            "soft_punish_cache",
        )
    },
}


# Fields of TRL's other trainers' configs (SFTConfig, DPOConfig, RewardConfig, KTOConfig, RLOOConfig, PPOConfig …)
# that GRPOConfig does not have: a recipe written for another trainer, or a key copied from one. key -> config.
OTHER_TRAINER_KEYS: dict[str, str] = {
    "activation_offloading": "SFTConfig",
    "assistant_only_loss": "SFTConfig",
    "center_rewards_coefficient": "RewardConfig",
    "chars_per_token": "SFTConfig (TRL < 0.12)",
    "chat_template_path": "SFTConfig",
    "cliprange": "PPOConfig",
    "cliprange_value": "PPOConfig",
    "completion_only_loss": "SFTConfig",
    "dataset_batch_size": "SFTConfig",
    "dataset_kwargs": "SFTConfig",
    "dataset_num_proc": "SFTConfig",
    "dataset_text_field": "SFTConfig",
    "desirable_weight": "KTOConfig",
    "discopop_tau": "DPOConfig",
    "eos_token": "SFTConfig",
    "eval_packing": "SFTConfig",
    "exp_name": "PPOConfig / RLOOConfig",
    "f_alpha_divergence_coef": "DPOConfig",
    "f_divergence_type": "DPOConfig",
    "force_use_ref_model": "DPOConfig",
    "gamma": "PPOConfig",
    "generate_during_eval": "DPOConfig",
    "is_encoder_decoder": "DPOConfig",
    "kl_coef": "PPOConfig / RLOOConfig",
    "kl_estimator": "PPOConfig",
    "label_smoothing": "DPOConfig",
    "lam": "PPOConfig",
    "ld_alpha": "DPOConfig",
    "lmbda": "GKDConfig",
    "local_rollout_forward_batch_size": "PPOConfig / RLOOConfig",
    "loss_weights": "DPOConfig",
    "max_length": "SFTConfig",
    "max_seq_length": "SFTConfig (TRL < 0.20)",
    "max_target_length": "DPOConfig",
    "missing_eos_penalty": "PPOConfig / RLOOConfig / OnlineDPOConfig",
    "model_adapter_name": "DPOConfig",
    "normalize_advantages": "RLOOConfig",
    "num_mini_batches": "PPOConfig / RLOOConfig",
    "num_of_sequences": "SFTConfig (TRL < 0.12)",
    "num_ppo_epochs": "PPOConfig",
    "num_sample_generations": "PPOConfig / RLOOConfig",
    "packing": "SFTConfig",
    "packing_strategy": "SFTConfig",
    "pad_token": "SFTConfig",
    "padding_free": "SFTConfig",
    "precompute_ref_batch_size": "DPOConfig",
    "precompute_ref_log_probs": "DPOConfig",
    "ref_adapter_name": "DPOConfig",
    "response_length": "PPOConfig / RLOOConfig",
    "response_truncation_length": "OnlineDPOConfig",
    "reward_clip_range": "RLOOConfig",
    "reward_model_path": "PPOConfig / RLOOConfig",
    "rloo_k": "RLOOConfig (TRL < 0.23)",
    "rpo_alpha": "DPOConfig",
    "seq_kd": "GKDConfig",
    "sft_model_path": "PPOConfig / RLOOConfig",
    "stop_token": "PPOConfig / RLOOConfig",
    "stop_token_id": "PPOConfig / RLOOConfig",
    "total_episodes": "PPOConfig / RLOOConfig",
    "truncation_mode": "SFTConfig",
    "undesirable_weight": "KTOConfig",
    "use_weighting": "DPOConfig",
    "value_model_path": "PPOConfig",
    "vf_coef": "PPOConfig",
    "whiten_rewards": "PPOConfig",
}


# TrainingArguments fields of transformers 4.x that transformers 5's TrainingArguments no longer has (read from
# transformers 5.25.0). TRL 1.x runs on either series (transformers >= 4.56.2), so whether GRPOConfig refuses these
# depends on the transformers installed beside it.
TRANSFORMERS_5_REMOVED: frozenset[str] = frozenset(
    [
        "adafactor",
        "dispatch_batches",
        "evaluation_strategy",
        "fp16_backend",
        "fp16_opt_level",
        "fsdp_min_num_params",
        "fsdp_transformer_layer_cls_to_wrap",
        "group_by_length",
        "half_precision_backend",
        "include_inputs_for_metrics",
        "include_tokens_per_second",
        "jit_mode_eval",
        "logging_dir",
        "mp_parameters",
        "no_cuda",
        "overwrite_output_dir",
        "past_index",
        "per_gpu_eval_batch_size",
        "per_gpu_train_batch_size",
        "push_to_hub_model_id",
        "push_to_hub_organization",
        "push_to_hub_token",
        "ray_scope",
        "save_safetensors",
        "sharded_ddp",
        "split_batches",
        "torchdynamo",
        "tpu_num_cores",
        "use_ipex",
        "use_legacy_prediction_loop",
        "use_mps_device",
        "warmup_ratio",
        "xpu_backend",
    ]
)


# Values accepted by a field, with the release that introduced each (read from the GRPOConfig docstrings
# of each wheel). A value outside the list is rejected late (loss_type: "Unknown loss type" at the first
# loss computation) or silently misread (scale_rewards="none" on TRL < 0.22 is a truthy string: scaling on).
CHOICES_SINCE: dict[str, dict[Any, str]] = {
    "loss_type": {
        "grpo": "0.17.0",
        "bnpo": "0.17.0",
        "dr_grpo": "0.17.0",
        "dapo": "0.22.0",
        "cispo": "0.26.0",
        "sapo": "0.26.0",
        "luspo": "0.28.0",
        "vespo": "1.0.0",
    },
    "scale_rewards": {
        True: "0.16.0",
        False: "0.16.0",
        "group": "0.22.0",
        "batch": "0.22.0",
        "none": "0.22.0",
    },
    "importance_sampling_level": {"token": "0.20.0", "sequence": "0.20.0"},
    "vllm_mode": {"server": "0.18.0", "colocate": "0.18.0"},
    "multi_objective_aggregation": {"sum_then_normalize": "0.27.0", "normalize_then_sum": "0.27.0"},
    "vllm_importance_sampling_mode": {
        "token_truncate": "0.26.0",
        "token_mask": "0.26.0",
        "sequence_truncate": "0.26.0",
        "sequence_mask": "0.26.0",
    },
}


# Fields renamed or replaced in a later release: old name -> (new name or None, why).
RENAMED: dict[str, tuple[str | None, str]] = {
    "vllm_guided_decoding_regex": ("vllm_structured_outputs_regex", "renamed in TRL 0.27"),
    "vllm_importance_sampling_cap": ("vllm_importance_sampling_clip_max", "deprecated in TRL 1.6"),
    "use_transformers_paged": ("use_transformers_continuous_batching", "deprecated in TRL 1.2"),
    "wandb_log_unique_prompts": ("log_unique_prompts", "renamed in TRL 0.26"),
    "vllm_max_model_len": ("vllm_max_model_length", "removed in TRL 0.18; vllm_max_model_length from 0.26"),
    "max_prompt_length": (None, "removed in TRL 0.28: prompts are no longer truncated by the trainer"),
    "vllm_device": (None, "removed in TRL 0.18: use vllm_mode='server' or 'colocate'"),
    "vllm_dtype": (None, "removed in TRL 0.18"),
    "vllm_enable_prefix_caching": (None, "removed in TRL 0.18"),
    "use_liger_loss": (None, "removed in TRL 0.28; use_liger_kernel is deprecated too"),
}

# Defaults whose change alters the optimised objective or the sampled data (others are plumbing).
OBJECTIVE_FIELDS: frozenset[str] = frozenset(
    {
        "beta",
        "loss_type",
        "scale_rewards",
        "temperature",
        "top_k",
        "max_completion_length",
        "use_bias_correction_kl",
        "vllm_importance_sampling_correction",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "max_prompt_length",
    }
)


def parse_version(version: str) -> tuple[int, ...]:
    """``"0.19.1"`` -> ``(0, 19, 1)``; pre-release and local suffixes are dropped (``"1.2.0.dev0"`` -> (1, 2, 0))."""
    parts: list[int] = []
    for piece in str(version).strip().lstrip("v").split(".")[:3]:
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
    if not parts:
        raise ValueError(f"not a version: {version!r}")
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)


def resolve_version(version: str) -> str:
    """The tabulated release whose defaults ``version`` has: the newest listed release not after it.

    >>> resolve_version("0.19.1"), resolve_version("1.16"), resolve_version("1.11.2")
    ('0.19.0', '1.16.0', '1.10.0')
    """
    wanted = parse_version(version)
    known = [v for v in VERSIONS if parse_version(v) <= wanted]
    return known[-1] if known else VERSIONS[0]


def is_before_history(version: str) -> bool:
    """True for releases older than the first one tabulated (no GRPOTrainer in them)."""
    return parse_version(version) < parse_version(VERSIONS[0])


def history(field: str) -> tuple[tuple[str, Any], ...]:
    """The (release, default) pairs at which ``field``'s default changed (``ABSENT`` = not a field)."""
    return _HISTORY.get(field, ())


def _value_at(field: str, version: str) -> Any:
    value: Any = ABSENT
    wanted = parse_version(version)
    for since, default in _HISTORY.get(field, ()):
        if parse_version(since) <= wanted:
            value = default
    return value


@functools.lru_cache(maxsize=64)
def grpo_fields(version: str) -> frozenset[str]:
    """GRPOConfig's own field names (not inherited TrainingArguments ones) in that release."""
    return frozenset(f for f in _HISTORY if _value_at(f, version) is not ABSENT)


def known_fields(version: str) -> frozenset[str]:
    """Every keyword GRPOConfig accepts in that release (own + TrainingArguments)."""
    return grpo_fields(version) | TRAINING_ARGUMENTS_FIELDS


def defaults_for(version: str) -> dict[str, Any]:
    """The value each field takes when left unset, in that TRL release.

    Fields that did not exist yet are filled from :data:`IMPLICIT_BEHAVIOUR` (what the code did before
    the knob existed), inherited TrainingArguments fields from :data:`TRAINING_ARGUMENTS_DEFAULTS`.
    """
    out: dict[str, Any] = dict(TRAINING_ARGUMENTS_DEFAULTS)
    out.update(IMPLICIT_BEHAVIOUR)
    for field in _HISTORY:
        value = _value_at(field, version)
        if value is not ABSENT:
            out[field] = value
    if out.get("scale_rewards") is True:
        out["scale_rewards"] = "group"
    elif out.get("scale_rewards") is False:
        out["scale_rewards"] = "none"
    if parse_version(version) >= (0, 19, 0) and out.get("bf16") is None:
        out["bf16"] = not out.get("fp16", False)  # GRPOConfig.__post_init__: bf16 unless fp16
    return out


def canonical(field: str, value: Any) -> Any:
    """Spellings TRL treats alike, made equal: scale_rewards True/'group', False/'none'; top_k None/0."""
    if field == "scale_rewards" and isinstance(value, bool):
        return "group" if value else "none"
    if field == "top_k" and value is None:
        return 0
    return value


def changed_default(field: str) -> bool:
    """Whether the field's default differs between two releases in which it exists."""
    inherited = TRAINING_ARGUMENTS_DEFAULTS.get(field, ABSENT)
    values = [inherited if value is ABSENT else value for _, value in _HISTORY.get(field, ())]
    values = [canonical(field, value) for value in values if value is not ABSENT]
    return any(value != values[0] for value in values[1:])


def introduced_in(field: str) -> str | None:
    """First tabulated release in which ``field`` exists (``None`` if it never does)."""
    for since, value in _HISTORY.get(field, ()):
        if value is not ABSENT:
            return since
    return None


def removed_in(field: str) -> str | None:
    """Release in which ``field`` disappeared again (``None`` if it is still present in the newest one)."""
    entries = _HISTORY.get(field, ())
    if entries and entries[-1][1] is ABSENT and introduced_in(field) is not None:
        return entries[-1][0]
    return None


LATEST: str = VERSIONS[-1]

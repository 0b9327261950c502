"""Map a TRL ``GRPOConfig`` (or a live ``GRPOTrainer``) onto :class:`grpo_check.config.GRPOSpec`.

A trainer is preferred to a bare config: the trainer's *effective* attributes (reward weights after
environment columns were added, the number of processes, ``epsilon_high`` after defaulting) are what the
loss really used. Defaults that differ between TRL lines (``loss_type``, ``beta``) are read from the object,
never assumed.

Example::

    >>> from trl import GRPOConfig
    >>> from grpo_check.trl.spec import spec_from_trl
    >>> cfg = GRPOConfig(output_dir="/tmp/x", num_generations=4, loss_type="dr_grpo", report_to=[], use_cpu=True)
    >>> spec = spec_from_trl(cfg)
    >>> (spec.num_generations, spec.loss_type, spec.aggregation_effective)
    (4, 'dr_grpo', 'seq_mean_token_sum_norm')
"""

from __future__ import annotations

from typing import Any

from grpo_check.config import GRPOSpec
from grpo_check.findings import InputError
from grpo_check.trl.versions import implied_settings, installed_trl_version


def _get(obj: Any, name: str, default: Any = None) -> Any:
    value = getattr(obj, name, default)
    return default if value is None else value


def _scale_rewards(value: Any) -> str:
    if value is True:
        return "group"
    if value is False:
        return "none"
    return str(value)


def spec_from_trl(trainer_or_config: Any) -> GRPOSpec:
    """The algorithm configuration a TRL ``GRPOTrainer`` (or ``GRPOConfig``) runs.

    Raises :class:`InputError` when the object is neither.
    """
    if hasattr(trainer_or_config, "args") and hasattr(trainer_or_config, "compute_loss"):
        trainer, args = trainer_or_config, trainer_or_config.args
    elif hasattr(trainer_or_config, "num_generations") and hasattr(trainer_or_config, "loss_type"):
        trainer, args = None, trainer_or_config
    else:
        raise InputError(
            f"expected a TRL GRPOTrainer or GRPOConfig, got {type(trainer_or_config).__name__}",
            field="trainer",
        )

    # what the installed release applies without a config field (0.14-0.16 have no loss_type, ...)
    implied = implied_settings(installed_trl_version())

    def pick(name: str, default: Any = None) -> Any:
        """The trainer's effective attribute if it has one, else the config's field, else what the release
        implies, else ``default``."""
        if trainer is not None and getattr(trainer, name, None) is not None:
            return getattr(trainer, name)
        return _get(args, name, implied.get(name, default))

    reward_weights = None
    if trainer is not None and getattr(trainer, "reward_weights", None) is not None:
        reward_weights = tuple(float(w) for w in trainer.reward_weights.tolist())
    elif getattr(args, "reward_weights", None) is not None:
        reward_weights = tuple(float(w) for w in args.reward_weights)

    gas = int(_get(args, "gradient_accumulation_steps", 1))
    num_processes = 1
    if trainer is not None and getattr(trainer, "accelerator", None) is not None:
        num_processes = int(trainer.accelerator.num_processes)
    epsilon = float(_get(args, "epsilon", 0.2))
    epsilon_high = getattr(args, "epsilon_high", None)
    entropy_coef = 0.0
    if trainer is not None and getattr(trainer, "_entropy_bonus_enabled", False):
        entropy_coef = float(getattr(trainer, "entropy_coef", 0.0))
    use_vllm = bool(getattr(args, "use_vllm", False))
    top_k = _get(args, "top_k", 0)
    return GRPOSpec(
        num_generations=int(pick("num_generations", 8)),
        scale_rewards=_scale_rewards(pick("scale_rewards", "group")),
        std="sample",  # TRL's nanstd applies Bessel's correction
        adv_epsilon=1e-4,  # hard-coded in TRL's advantage computation
        baseline="mean",
        reward_weights=reward_weights,
        multi_objective_aggregation=str(_get(args, "multi_objective_aggregation", "sum_then_normalize")),
        temperature=float(pick("temperature", 1.0)),
        top_p=float(_get(args, "top_p", 1.0)),
        top_k=int(top_k or 0),
        min_p=getattr(args, "min_p", None),
        loss_type=str(pick("loss_type", "dapo")),
        epsilon=epsilon,
        epsilon_high=None if epsilon_high is None else float(epsilon_high),
        delta=getattr(args, "delta", None),
        importance_sampling_level=str(_get(args, "importance_sampling_level", "token")),
        max_completion_length=pick("max_completion_length", None),
        mask_truncated_completions=bool(_get(args, "mask_truncated_completions", False)),
        top_entropy_quantile=float(_get(args, "top_entropy_quantile", 1.0)),
        entropy_coef=entropy_coef,
        off_policy_mask_threshold=getattr(args, "off_policy_mask_threshold", None),
        sapo_temperature_pos=float(_get(args, "sapo_temperature_pos", 1.0)),
        sapo_temperature_neg=float(_get(args, "sapo_temperature_neg", 1.05)),
        vespo_k_pos=float(_get(args, "vespo_k_pos", 2.0)),
        vespo_lambda_pos=float(_get(args, "vespo_lambda_pos", 3.0)),
        vespo_k_neg=float(_get(args, "vespo_k_neg", 3.0)),
        vespo_lambda_neg=float(_get(args, "vespo_lambda_neg", 2.0)),
        beta=float(pick("beta", 0.0)),
        kl_estimator="k3",
        # TRL 0.x has no bias correction of the KL term; 1.x makes it configurable (default True)
        use_bias_correction_kl=bool(getattr(args, "use_bias_correction_kl", False)),
        sampler_is_correction=use_vllm and bool(getattr(args, "vllm_importance_sampling_correction", False)),
        sampler_is_mode=str(_get(args, "vllm_importance_sampling_mode", "sequence_mask")),
        sampler_is_clip_min=getattr(args, "vllm_importance_sampling_clip_min", None),
        sampler_is_clip_max=getattr(args, "vllm_importance_sampling_clip_max", 3.0),
        gradient_accumulation_steps=gas,
        steps_per_generation=int(_get(args, "steps_per_generation", gas) or gas),
        num_processes=num_processes,
        num_iterations=int(pick("num_iterations", 1)),
    )


def trainer_config_dict(trainer_or_config: Any) -> dict[str, Any]:
    """The raw TRL config as a JSON-able dict (for the trace manifest)."""
    args = getattr(trainer_or_config, "args", trainer_or_config)
    to_dict = getattr(args, "to_dict", None)
    raw = to_dict() if callable(to_dict) else dict(vars(args))
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
            out[key] = list(value)
        else:
            out[key] = repr(value)
    return out


def applied_entropy_coef(trainer: Any) -> float | None:
    """The entropy-bonus coefficient the trainer's next loss applies, or ``None`` without an adaptive one.

    With ``use_adaptive_entropy`` TRL moves ``entropy_coef`` at every optimizer step and applies it only while
    the window's entropy is at or below ``entropy_target`` (0 otherwise), so the coefficient is per step, not
    per run: it is recorded on each micro-batch (``meta["spec_overrides"]``) for the reference to use."""
    if not getattr(trainer, "use_adaptive_entropy", False):
        return None
    coef = float(getattr(trainer, "entropy_coef", 0.0))
    last = getattr(trainer, "_last_world_entropy", None)
    target = getattr(getattr(trainer, "args", None), "entropy_target", None)
    if last is not None and target is not None and float(last) > float(target):
        return 0.0
    return coef

"""The float64 reference GRPO implementation: small pure torch functions, one per stage and variant.

Every function cites its equation id from ``reference/grpo-algorithm.md``. Stages: advantages
(:mod:`.advantages`), log-probs (:mod:`.logps`), ratios (:mod:`.ratio`), KL (:mod:`.kl`), objectives and
aggregation (:mod:`.loss`), gradients (:mod:`.gradients`), a whole step (:mod:`.step`), golden vectors
(:mod:`.golden`).

Example::

    >>> import torch
    >>> from grpo_check.config import GRPOSpec
    >>> from grpo_check.reference import compute_advantages
    >>> compute_advantages(torch.tensor([1.0, 1.0]), torch.tensor([0, 0]), GRPOSpec(num_generations=2)).advantages
    tensor([0., 0.], dtype=torch.float64)
"""

from grpo_check.reference._util import as_f64
from grpo_check.reference.advantages import (
    AdvantageOutput,
    compute_advantages,
    group_mean_std,
    leave_one_out_mean,
    total_rewards,
)
from grpo_check.reference.gradients import (
    aggregation_weights,
    autograd_logps_grad,
    closed_form_logps_grad,
    kl_estimator_grad,
)
from grpo_check.reference.kl import KL_ESTIMATORS, kl_k1, kl_k2, kl_k3, per_token_kl
from grpo_check.reference.logps import (
    completion_logits,
    entropy_from_logits,
    logps_and_entropy_from_logits,
    logps_from_logits,
    logps_from_model,
    position_ids_from_mask,
    sampling_kept_mass,
)
from grpo_check.reference.loss import (
    AggregatedLoss,
    PerTokenLoss,
    aggregate_loss,
    cispo_loss,
    clipped_surrogate_loss,
    high_entropy_mask,
    loss_mask,
    per_token_loss,
    sapo_loss,
    vespo_gamma_weights,
    vespo_loss,
)
from grpo_check.reference.ratio import (
    clip_masks,
    clip_ratio,
    importance_log_ratio,
    importance_ratio,
    off_policy_sequence_mask,
    sampler_is_ratio,
)
from grpo_check.reference.step import STAGES, ReferenceStep, reference_step

__all__ = [
    "KL_ESTIMATORS",
    "STAGES",
    "AdvantageOutput",
    "AggregatedLoss",
    "PerTokenLoss",
    "ReferenceStep",
    "aggregate_loss",
    "aggregation_weights",
    "as_f64",
    "autograd_logps_grad",
    "cispo_loss",
    "clip_masks",
    "clip_ratio",
    "clipped_surrogate_loss",
    "closed_form_logps_grad",
    "completion_logits",
    "compute_advantages",
    "entropy_from_logits",
    "group_mean_std",
    "high_entropy_mask",
    "importance_log_ratio",
    "importance_ratio",
    "kl_estimator_grad",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "leave_one_out_mean",
    "logps_and_entropy_from_logits",
    "logps_from_logits",
    "logps_from_model",
    "loss_mask",
    "off_policy_sequence_mask",
    "per_token_kl",
    "per_token_loss",
    "position_ids_from_mask",
    "reference_step",
    "sampler_is_ratio",
    "sampling_kept_mass",
    "sapo_loss",
    "total_rewards",
    "vespo_gamma_weights",
    "vespo_loss",
]

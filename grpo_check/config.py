"""The algorithm configuration the reference is run with (`GRPOSpec`).

One flat, frozen dataclass whose field names follow TRL's ``GRPOConfig`` where TRL has the concept, so a
TRL config maps onto it field by field (see ``reference/trl-mapping.md``), plus the options other
frameworks use (population std, leave-one-out baseline, other aggregation modes, KL estimator choice).

Standard library only: cheap to import.

Example::

    >>> from grpo_check.config import GRPOSpec
    >>> spec = GRPOSpec(num_generations=4, loss_type="dr_grpo", max_completion_length=16, beta=0.04)
    >>> spec.epsilon_high_effective
    0.2
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, get_args

from grpo_check._kinds import is_real_number, is_whole_number
from grpo_check.findings import InputError

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"]
Aggregation = Literal[
    "token_mean",  # Σ loss / Σ tokens over the (global) batch  (= dapo, bnpo locally)
    "seq_mean_token_mean",  # mean over sequences of the per-sequence token mean  (= grpo)
    "seq_mean_token_sum",  # mean over sequences of the per-sequence token sum  (= luspo)
    "seq_mean_token_sum_norm",  # Σ loss / (B · L_max)  (= dr_grpo)
]

LOSS_TYPES: tuple[str, ...] = get_args(LossType)
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)

# The aggregation each TRL loss type uses, when `GRPOSpec.aggregation` is not set explicitly.
DEFAULT_AGGREGATION: dict[str, str] = {
    "grpo": "seq_mean_token_mean",
    "sapo": "seq_mean_token_mean",
    "bnpo": "token_mean",  # local (micro-batch) token count
    "dapo": "token_mean",  # global token count (num_items_in_batch)
    "cispo": "token_mean",  # global token count
    "vespo": "token_mean",  # global token count
    "dr_grpo": "seq_mean_token_sum_norm",
    "luspo": "seq_mean_token_sum",
}


_MAX_COUNT = 2**31 - 1  # grpo_check.limits.MAX_COUNT (this module stays stdlib-only)
_COUNT_FIELDS = (
    "num_generations",
    "top_k",
    "max_completion_length",
    "gradient_accumulation_steps",
    "steps_per_generation",
    "num_processes",
    "num_iterations",
)

ScaleRewards = Literal["group", "batch", "none"]
StdConvention = Literal["sample", "population"]
Baseline = Literal["mean", "rloo"]
MultiObjectiveAggregation = Literal["sum_then_normalize", "normalize_then_sum"]
ImportanceSamplingLevel = Literal["token", "sequence"]
KLEstimator = Literal["k1", "k2", "k3"]
SamplerISMode = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]

# the names of the Literal aliases above, as the field annotations spell them (held to "a string")
_TEXT_KINDS = (
    "LossType",
    "Aggregation",
    "ScaleRewards",
    "StdConvention",
    "Baseline",
    "MultiObjectiveAggregation",
    "ImportanceSamplingLevel",
    "KLEstimator",
    "SamplerISMode",
)


@dataclasses.dataclass(frozen=True)
class GRPOSpec:
    """Everything that defines the GRPO objective for one step. Defaults follow TRL 1.x where TRL has them.

    Fields are grouped as advantages, log-probs and sampling, the objective, KL, the sampler
    importance-sampling correction and the normalisers; each is documented where it is declared.
    """

    # advantages
    num_generations: int = 8
    """G, completions per prompt."""
    scale_rewards: ScaleRewards = "group"
    """Divide the centred rewards by the group std (``"group"``), the batch std (``"batch"``) or not (``"none"``)."""
    std: StdConvention = "sample"
    """``"sample"`` (Bessel-corrected, as TRL) or ``"population"`` standard deviation."""
    adv_epsilon: float = 1e-4
    """ε added to the std (TRL 1e-4, verl 1e-6, OpenRLHF 1e-8)."""
    baseline: Baseline = "mean"
    """``"mean"`` (the group mean) or ``"rloo"`` (the leave-one-out mean)."""
    reward_weights: tuple[float, ...] | None = None
    """One weight per reward function (``None`` = all 1)."""
    multi_objective_aggregation: MultiObjectiveAggregation = "sum_then_normalize"
    """Sum the weighted rewards then normalise, or normalise each reward function then sum."""
    # log-probs / sampling
    temperature: float = 1.0
    """Sampling temperature: logits are divided by it before the log-softmax."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1] (1 = the full vocabulary)."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    min_p: float | None = None
    """Min-p sampling threshold (``None`` = off)."""
    # objective
    loss_type: LossType = "dapo"
    """The objective, one of :data:`LOSS_TYPES` (TRL's ``loss_type``)."""
    aggregation: Aggregation | None = None
    """Override the aggregation ``loss_type`` implies (one of :data:`AGGREGATIONS`)."""
    epsilon: float = 0.2
    """Lower clip ε_low (for cispo: ε_max); ``epsilon_high`` defaults to it."""
    epsilon_high: float | None = None
    """Upper clip ε_high (``None`` = ``epsilon``)."""
    delta: float | None = None
    """Two-sided upper bound on the unclipped ratio (INTELLECT-2; ``None`` = off)."""
    dual_clip: float | None = None
    """c > 1 for dual clip on negative advantages (``None`` = off)."""
    importance_sampling_level: ImportanceSamplingLevel = "token"
    """Importance ratio per token or per sequence (GSPO)."""
    max_completion_length: int | None = None
    """L_max, the normaliser of dr_grpo."""
    mask_truncated_completions: bool = False
    """Drop completions that did not end in EOS from the loss."""
    top_entropy_quantile: float = 1.0
    """Keep only the top-ρ entropy tokens in the policy loss (1.0 = all)."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient."""
    off_policy_mask_threshold: float | None = None
    """DeepSeek-V3.2 off-policy sequence mask δ (``None`` = off)."""
    sapo_temperature_pos: float = 1.0
    """SAPO soft-gate temperature for positive advantages."""
    sapo_temperature_neg: float = 1.05
    """SAPO soft-gate temperature for negative advantages."""
    vespo_k_pos: float = 2.0
    """VESPO shape parameter k for positive advantages."""
    vespo_lambda_pos: float = 3.0
    """VESPO scale parameter λ for positive advantages."""
    vespo_k_neg: float = 3.0
    """VESPO shape parameter k for negative advantages."""
    vespo_lambda_neg: float = 2.0
    """VESPO scale parameter λ for negative advantages."""
    # KL
    beta: float = 0.0
    """KL coefficient (0 = no KL term)."""
    kl_estimator: KLEstimator = "k3"
    """Per-token KL estimator (Schulman's k1, k2 or k3)."""
    use_bias_correction_kl: bool = True
    """Multiply the per-token KL by the importance ratio (TRL 1.x default)."""
    # sampler importance-sampling correction
    sampler_is_correction: bool = False
    """Correct for the sampler's log-probs differing from the trainer's (truncated importance sampling)."""
    sampler_is_mode: SamplerISMode = "sequence_mask"
    """Per token or per sequence, truncating or masking the sampler importance weight."""
    sampler_is_clip_min: float | None = None
    """Lower bound of the sampler importance weight (``None`` = none)."""
    sampler_is_clip_max: float | None = 3.0
    """Upper bound of the sampler importance weight (``None`` = none)."""
    # normalisers
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    steps_per_generation: int | None = None
    """Optimizer steps per generation batch (``None`` = ``gradient_accumulation_steps``)."""
    num_processes: int = 1
    """Data-parallel processes (the loss normaliser of some loss types counts all of them)."""
    num_iterations: int = 1
    """Optimisation passes over each generation batch (μ)."""

    def __post_init__(self) -> None:
        def bad(field: str, msg: str) -> InputError:
            return InputError(msg, field=field)

        self._check_types()
        if self.num_generations < 1:
            raise bad("num_generations", f"must be >= 1, got {self.num_generations}")
        for name in _COUNT_FIELDS:  # a count past 2**31 - 1 is a corrupted value, and overflows tensors
            value = getattr(self, name)
            if value is not None and value > _MAX_COUNT:
                raise bad(name, f"must be at most {_MAX_COUNT}, got a {int(value).bit_length()}-bit number")
        # (beta may be negative: the diagnoses model a KL term added with the wrong sign that way)
        for name in ("epsilon", "epsilon_high", "adv_epsilon", "top_k", "entropy_coef"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise bad(name, f"must be >= 0, got {value}")
        for name in ("num_processes", "num_iterations", "steps_per_generation"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise bad(name, f"must be >= 1, got {value}")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.scale_rewards not in get_args(ScaleRewards):
            raise bad("scale_rewards", f"must be 'group', 'batch' or 'none', got {self.scale_rewards!r}")
        if self.std not in get_args(StdConvention):
            raise bad("std", f"must be 'sample' or 'population', got {self.std!r}")
        if self.baseline not in get_args(Baseline):
            raise bad("baseline", f"must be 'mean' or 'rloo', got {self.baseline!r}")
        if self.multi_objective_aggregation not in get_args(MultiObjectiveAggregation):
            raise bad("multi_objective_aggregation", f"unknown value {self.multi_objective_aggregation!r}")
        if self.loss_type not in LOSS_TYPES:
            raise bad("loss_type", f"must be one of {', '.join(LOSS_TYPES)}; got {self.loss_type!r}")
        if self.aggregation is not None and self.aggregation not in AGGREGATIONS:
            raise bad("aggregation", f"must be one of {', '.join(AGGREGATIONS)}; got {self.aggregation!r}")
        if self.importance_sampling_level not in get_args(ImportanceSamplingLevel):
            raise bad(
                "importance_sampling_level",
                f"must be 'token' or 'sequence', got {self.importance_sampling_level!r}",
            )
        if self.kl_estimator not in get_args(KLEstimator):
            raise bad("kl_estimator", f"must be 'k1', 'k2' or 'k3', got {self.kl_estimator!r}")
        if self.sampler_is_mode not in get_args(SamplerISMode):
            raise bad("sampler_is_mode", f"unknown value {self.sampler_is_mode!r}")
        if self.temperature <= 0:
            raise bad("temperature", f"must be > 0, got {self.temperature}")
        if self.gradient_accumulation_steps < 1:
            raise bad("gradient_accumulation_steps", "must be >= 1")
        if self.reward_weights is not None and not isinstance(self.reward_weights, tuple):
            object.__setattr__(self, "reward_weights", tuple(float(w) for w in self.reward_weights))

    def _check_types(self) -> None:
        """Each field holds its declared kind (a number where a number is declared, not ``"4"``; finite)."""
        for field in dataclasses.fields(self):
            value, kinds = getattr(self, field.name), str(field.type)
            if value is None and "None" in kinds:
                continue
            if kinds.startswith("bool"):
                ok, expected = isinstance(value, bool), "True or False"
            elif kinds.startswith("int"):
                ok, expected = is_whole_number(value), "a whole number"
            elif kinds.startswith("float"):
                ok = is_real_number(value) and math.isfinite(value)
                expected = "a finite number"
            elif kinds.startswith(("str", *_TEXT_KINDS)):
                ok, expected = isinstance(value, str), "a string"
            else:
                continue
            if not ok:
                raise InputError(f"must be {expected}, got {value!r}", field=field.name)
            if kinds.startswith(("int", "float")) and type(value) not in (int, float):  # numpy's: plain
                object.__setattr__(self, field.name, int(value) if kinds.startswith("int") else float(value))

    @property
    def epsilon_low(self) -> float:
        return self.epsilon

    @property
    def epsilon_high_effective(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def aggregation_effective(self) -> str:
        return self.aggregation or DEFAULT_AGGREGATION[self.loss_type]

    @property
    def steps_per_generation_effective(self) -> int:
        return self.steps_per_generation or self.gradient_accumulation_steps

    @property
    def truncated_sampling(self) -> bool:
        """Whether the sampler drops part of the vocabulary (top-p < 1, top-k > 0 or min-p > 0)."""
        return self.top_p < 1.0 or (self.top_k or 0) > 0 or (self.min_p or 0.0) > 0.0

    def replace(self, **changes: Any) -> GRPOSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["reward_weights"] is not None:
            out["reward_weights"] = list(out["reward_weights"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, strict: bool = False) -> GRPOSpec:
        """Build from a dict; unknown keys raise with ``strict`` and are ignored otherwise."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if strict and unknown:
            raise InputError(f"unknown GRPOSpec fields: {', '.join(unknown)}", field=unknown[0])
        kwargs = {k: v for k, v in data.items() if k in names}
        if kwargs.get("reward_weights") is not None:
            kwargs["reward_weights"] = tuple(float(w) for w in kwargs["reward_weights"])
        return cls(**kwargs)


def as_spec(value: Any, *, name: str = "spec") -> GRPOSpec:
    """``value`` as a :class:`GRPOSpec`: a GRPOSpec, a mapping of its fields, or None (the defaults).

    >>> as_spec({"num_generations": 4}).num_generations
    4
    >>> as_spec("grpo")
    Traceback (most recent call last):
    ...
    TypeError: spec must be a grpo_check.GRPOSpec or a dict of its fields, got str
    """
    if value is None:
        return GRPOSpec()
    if isinstance(value, GRPOSpec):
        return value
    if isinstance(value, dict) or hasattr(value, "keys"):
        return GRPOSpec.from_dict(dict(value), strict=True)  # a typo in a field name is an error, not ignored
    raise TypeError(
        f"{name} must be a grpo_check.GRPOSpec or a dict of its fields, got {type(value).__name__}"
    )


#: GRPOSpec fields a trainer may change from one step to the next (recorded per step in
#: ``meta["spec_overrides"]``): TRL's adaptive entropy bonus moves ``entropy_coef`` at every optimizer step.
STEP_FIELDS: tuple[str, ...] = ("entropy_coef",)


def spec_for_step(spec: GRPOSpec | None, meta: dict[str, Any] | None) -> GRPOSpec | None:
    """``spec`` with the per-step values a step recorded (``meta["spec_overrides"]``, fields of
    :data:`STEP_FIELDS` only; anything else there is ignored).

    >>> spec_for_step(GRPOSpec(), {"spec_overrides": {"entropy_coef": 0.01}}).entropy_coef
    0.01
    >>> spec_for_step(GRPOSpec(), {}).entropy_coef
    0.0
    """
    overrides = (meta or {}).get("spec_overrides")
    if spec is None or not isinstance(overrides, dict):
        return spec
    values = {
        name: float(value)
        for name, value in overrides.items()
        if name in STEP_FIELDS and isinstance(value, int | float) and not isinstance(value, bool)
    }
    values = {name: value for name, value in values.items() if value == value}  # NaN is not a coefficient
    return dataclasses.replace(spec, **values) if values else spec

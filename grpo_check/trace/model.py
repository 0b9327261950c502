"""In-memory trace model: what one captured step (micro-batch) holds, by stage.

A :class:`Trace` is a manifest (configuration, versions, trainer name, seeds) plus a list of
:class:`TraceStep`. Each step holds named tensors (see :data:`TENSOR_STAGE`), the decoded completion text,
and step metadata (optimizer step, micro-batch, rank, normaliser inputs). The on-disk format (safetensors +
JSON) lives in :mod:`grpo_check.trace.io` and is specified in ``reference/trace-format.md``.

Tensor names and shapes (B rows, T completion tokens, P prompt tokens, F reward functions):

=====================  ==========  ==========================================================
name                   stage       shape / dtype
=====================  ==========  ==========================================================
prompt_ids             batch       (B, P) int64
prompt_mask            batch       (B, P) {0,1}
completion_ids         batch       (B, T) int64
completion_mask        batch       (B, T) {0,1}  (EOS included, tokens after EOS excluded)
group_index            batch       (B,) int64   which prompt each row belongs to
tool_mask              batch       (B, T) {0,1}  1 = policy-generated token (optional)
truncated              batch       (B,) bool    completion hit max length without EOS (optional)
rewards_per_func       rewards     (B, F) float (NaN = unscorable)
reward_weights         rewards     (F,) float
rewards                rewards     (B,) float   total reward as the trainer used it
advantages             advantages  (B,) or (B, T)
logps                  logps       (B, T) current-policy per-token log-probs (as used in the loss)
old_logps              logps       (B, T) log-probs when the batch was generated (absent = logps.detach())
ref_logps              logps       (B, T) reference-model log-probs
sampler_logps          logps       (B, T) sampler (e.g. vLLM) log-probs
entropies              logps       (B, T) per-token entropy of the current policy
ratio                  ratio       (B, T) or (B, 1) importance ratio before clipping
clipped_ratio          ratio       (B, T) or (B, 1)
is_low_clipped         ratio       (B, T) bool
is_high_clipped        ratio       (B, T) bool
sampler_is_ratio       ratio       (B, T) or (B, 1) sampler importance-sampling correction
kl                     kl          (B, T) per-token KL estimate
per_token_loss         loss        (B, T)
loss                   loss        () scalar, the value backpropagated for this micro-batch
loss_normalizer        loss        () scalar, the denominator used (optional)
logps_grad             grad        (B, T) ∂loss/∂logps
=====================  ==========  ==========================================================

Step metadata keys (all optional): ``step`` (optimizer step), ``micro_batch``, ``rank``, ``num_items_in_batch``
(global token count of the generation batch), ``gradient_accumulation_steps``, ``steps_per_generation``,
``num_processes``, ``optimizer_steps_since_old_logps``, ``iteration`` (which of num_iterations),
``eos_token_ids`` (list), ``eos_token_id_sources`` (``{"tokenizer": [...], "generation_config": [...],
"trainer": [...]}``), ``generation_step`` (optimizer step when the batch was generated), ``generation_loss_tokens``
(Σ completion_mask · tool_mask over the generation batch, all processes), ``pad_token_id``, ``kl_estimator``, ``ref_is_init`` (bool: the reference model is the
initial policy; ``False`` disables the step-0 KL and frozen-reference checks), ``metrics`` (dict of the trainer's
logged metrics for this step, e.g. ``clip_ratio/low_mean``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from grpo_check.findings import InputError

if TYPE_CHECKING:
    from grpo_check.config import GRPOSpec

TENSOR_STAGE: dict[str, str] = {
    "prompt_ids": "batch",
    "prompt_mask": "batch",
    "completion_ids": "batch",
    "completion_mask": "batch",
    "group_index": "batch",
    "tool_mask": "batch",
    "truncated": "batch",
    "rewards_per_func": "rewards",
    "reward_weights": "rewards",
    "rewards": "rewards",
    "advantages": "advantages",
    "logps": "logps",
    "old_logps": "logps",
    "ref_logps": "logps",
    "sampler_logps": "logps",
    "entropies": "logps",
    "ratio": "ratio",
    "clipped_ratio": "ratio",
    "is_low_clipped": "ratio",
    "is_high_clipped": "ratio",
    "sampler_is_ratio": "ratio",
    "kl": "kl",
    "per_token_loss": "loss",
    "loss": "loss",
    "loss_normalizer": "loss",
    "logps_grad": "grad",
}
"""Known tensor names and the stage each belongs to. Unknown names are allowed under ``extra.<name>``."""


@dataclasses.dataclass
class TraceStep:
    """One captured micro-batch: named tensors, decoded completion text, and step metadata."""

    tensors: dict[str, Any] = dataclasses.field(default_factory=dict)  # name -> torch.Tensor
    completion_text: list[str] | None = None
    prompt_text: list[str] | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def has(self, *names: str) -> bool:
        tensors = self.tensors
        for name in names:  # noqa: SIM110 (a loop, not all(genexpr): this runs about fifty times per step)
            if name not in tensors:
                return False
        return True

    def get(self, name: str, default: Any = None) -> Any:
        return self.tensors.get(name, default)

    def __getitem__(self, name: str) -> Any:
        return self.tensors[name]

    def stages(self) -> set[str]:
        return {TENSOR_STAGE.get(n, "extra") for n in self.tensors}

    @property
    def step(self) -> int | None:
        return self.meta.get("step")


@dataclasses.dataclass
class Trace:
    """A manifest plus steps. ``manifest`` keys: ``format_version``, ``trainer``, ``config`` (a GRPOSpec dict),
    ``trainer_config`` (the raw trainer config, JSON-able), ``versions``, ``seeds``, ``dtypes``, ``notes``."""

    manifest: dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: list[TraceStep] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)  # load problems; readable steps still used
    source: str | None = dataclasses.field(default=None, compare=False)  # manifest.json it was loaded from

    def spec(self) -> GRPOSpec:
        """The manifest's ``config`` as a GRPOSpec; a config that is not one raises
        :class:`~grpo_check.findings.InputError` naming the manifest file and the field."""
        from grpo_check.config import GRPOSpec

        config = self.manifest.get("config")
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise InputError(
                f"must be a JSON object (a GRPOSpec dict), got {type(config).__name__}",
                source=self.source,
                field="config",
            )
        try:
            return GRPOSpec.from_dict(config)
        except InputError as exc:
            raise _config_error(exc, self.source) from None
        except (TypeError, ValueError) as exc:
            raise InputError(f"not a valid GRPOSpec: {exc}", source=self.source, field="config") from None

    def __len__(self) -> int:
        return len(self.steps)


def _config_error(error: InputError, source: str | None) -> InputError:
    """``error`` from GRPOSpec restated against the manifest file: its source, field ``config.<field>``."""
    if source is None or error.source is not None:
        return error
    message = str(error)
    prefix = f"field {error.field!r}: " if error.field else ""
    message = message.removeprefix(prefix)
    field = f"config.{error.field}" if error.field else "config"
    return InputError(message, source=source, field=field)

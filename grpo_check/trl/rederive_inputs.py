"""What re-derivation needs from a TRL ``GRPOTrainer``, read from its sources, not from the trainer's own
derived state.

Capture only: each function reads one fact (every EOS id by source, the optimizer step, the generation
batch's loss-token count) and returns plain Python values for the step metadata; the re-derivation itself
(:mod:`grpo_check.rederive`) is independent of TRL. In particular the EOS ids are read from the tokenizer and
from the model's ``generation_config`` (what generation really stops at), not from ``trainer.eos_token_ids``,
the list the trainer masks with: a trainer whose list misses an id is exactly what must be caught.

Example::

    sources = eos_token_id_sources(trainer)   # {"tokenizer": [2], "generation_config": [3, 2], "trainer": [2]}
    meta[GENERATION_STEP_KEY] = optimizer_step(trainer)
"""

from __future__ import annotations

from typing import Any

from grpo_check.rederive.derive import loss_tokens_per_row, normalise_eos_ids
from grpo_check.rederive.inputs import EOS_SOURCES_KEY, GENERATION_LOSS_TOKENS_KEY, GENERATION_STEP_KEY

__all__ = [
    "EOS_SOURCES_KEY",
    "GENERATION_LOSS_TOKENS_KEY",
    "GENERATION_STEP_KEY",
    "eos_token_id_sources",
    "generation_loss_tokens",
    "optimizer_step",
    "policy_fingerprint",
    "rederive_meta_at_generation",
]

#: elements read from the start of every parameter tensor for :func:`policy_fingerprint`
_FINGERPRINT_ELEMENTS = 256


def _tokenizer(trainer: Any) -> Any:
    tok = getattr(trainer, "_tokenizer", None) or getattr(trainer, "processing_class", None)
    return getattr(tok, "tokenizer", tok)


def _ids(value: Any) -> list[int]:
    try:
        return normalise_eos_ids(list(value) if isinstance(value, list | tuple) else value)
    except (TypeError, ValueError):
        return []


def eos_token_id_sources(trainer: Any) -> dict[str, list[int]]:
    """Every EOS id by where it comes from: ``tokenizer`` (``eos_token_id``), ``generation_config`` (the
    model's, and the trainer's own ``generation_config`` when it has one: what ``generate`` stops at; may be a
    list) and ``trainer`` (``trainer.eos_token_ids``, what TRL masks with). Sources without ids are left out."""
    sources: dict[str, list[int]] = {}
    tok = _tokenizer(trainer)
    if tok is not None:
        sources["tokenizer"] = _ids(getattr(tok, "eos_token_id", None))
    model = getattr(trainer, "model", None)
    model = getattr(model, "module", model)  # DDP-wrapped
    generation: list[int] = []
    for config in (getattr(model, "generation_config", None), getattr(trainer, "generation_config", None)):
        if config is not None:
            generation = normalise_eos_ids(generation, _ids(getattr(config, "eos_token_id", None)))
    sources["generation_config"] = generation
    sources["trainer"] = _ids(getattr(trainer, "eos_token_ids", None))
    return {name: ids for name, ids in sources.items() if ids}


def optimizer_step(trainer: Any) -> int:
    """The optimizer steps taken so far (``trainer.state.global_step``): recorded when a batch is generated
    and when a loss is computed on it, their difference says whether old log-probs were needed."""
    return int(trainer.state.global_step)


def policy_fingerprint(trainer: Any) -> str | None:
    """A short digest of the policy's parameters (the first elements of every parameter tensor, exactly):
    equal digests at generation and at use mean no optimizer step changed the policy in between (a zero
    update: every advantage 0 and no other gradient), so ρ ≡ 1 and ref = policy are then legitimate.
    ``None`` when the model holds no parameters the process can read (e.g. sharded away)."""
    import hashlib

    import torch

    model = getattr(trainer, "model", None)
    model = getattr(model, "module", model)
    if model is None or not hasattr(model, "parameters"):
        return None
    parts = [p.detach().reshape(-1)[:_FINGERPRINT_ELEMENTS] for p in model.parameters() if p.numel()]
    if not parts:
        return None
    values = torch.cat([part.to(torch.float64) for part in parts]).cpu().numpy()
    return hashlib.blake2b(values.tobytes(), digest_size=8).hexdigest()


def generation_loss_tokens(trainer: Any, output: dict[str, Any]) -> float | None:
    """Σ completion_mask · tool_mask over the generation batch TRL built (``output`` of
    ``_generate_and_score_completions``), summed over every process: N re-derived from the masks the loss
    uses. ``None`` when the batch holds no completion mask."""
    mask = output.get("completion_mask")
    if mask is None:
        return None
    local = loss_tokens_per_row(mask, output.get("tool_mask")).sum()
    accelerator = getattr(trainer, "accelerator", None)
    if accelerator is not None and int(getattr(accelerator, "num_processes", 1)) > 1:
        from accelerate.utils import gather

        local = gather(local.to(mask.device).reshape(1)).sum()
    return float(local)


def rederive_meta_at_generation(trainer: Any, output: dict[str, Any]) -> dict[str, Any]:
    """The step metadata re-derivation needs, taken when a generation batch is built: to be copied onto the
    generation step and onto every micro-batch trained on that batch."""
    meta: dict[str, Any] = {
        EOS_SOURCES_KEY: eos_token_id_sources(trainer),
        GENERATION_STEP_KEY: optimizer_step(trainer),
    }
    tokens = generation_loss_tokens(trainer, output)
    if tokens is not None:
        meta[GENERATION_LOSS_TOKENS_KEY] = tokens
    return meta

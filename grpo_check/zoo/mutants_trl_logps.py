"""Mutants and a control that override TRL's per-token log-prob helper in a ``GRPOTrainer`` subclass.

Forks and research code often replace ``_get_per_token_logps_and_entropies`` with the classic formulation
(a plain forward, shift the logits by one, divide by the temperature, ``log_softmax``, gather). A bug there
changes every log-prob the loss sees while every tensor downstream stays self-consistent, so only the
reference's *own* forward pass finds it: this is what ``grpo-check compare --trainer`` runs live.

* ``trl-logps-helper-no-temperature``: the logits are not divided by the sampling temperature (the sampler used
  T = 0.7, the loss scores at T = 1).
* ``trl-logps-helper-off-by-one``: the logits are not shifted: position t's own logits score token t.
* ``ctl-trl-logps-helper-faithful``: the same helper written correctly; clean.

:func:`classic_logps_trainer` builds the subclasses (also for a factory file passed to ``--trainer``).
"""

from __future__ import annotations

from typing import Any

from grpo_check.zoo.catalog import Bug
from grpo_check.zoo.mutants_trl import trl_case

__all__ = ["LOGPS_HELPER_OVERRIDES", "classic_logps_trainer"]

LOGPS_HELPER_OVERRIDES: dict[str, Any] = {
    "temperature": 0.7,
    "beta": 0.04,  # the reference model's log-probs go through the same helper
    "gradient_accumulation_steps": 2,
    "steps_per_generation": 4,
}
"""The settings the cases train with: T != 1 (a temperature bug shows), a reference model, GAS 2."""


def classic_logps_trainer(*, temperature: bool = True, shift: bool = True) -> Any:
    """A ``GRPOTrainer`` subclass whose log-prob helper is the classic plain-forward formulation.

    ``temperature=False`` leaves the logits undivided; ``shift=False`` scores each token with its own
    position's logits (off by one). Both ``True``: a faithful reimplementation of TRL's helper.
    """
    from trl import GRPOTrainer

    class ClassicLogProbHelper(GRPOTrainer):
        """Per-token log-probs from a plain forward: shift, temperature, log_softmax, gather."""

        def _get_per_token_logps_and_entropies(
            self,
            model: Any,
            input_ids: Any,
            attention_mask: Any,
            logits_to_keep: int,
            batch_size: int | None = None,
            compute_entropy: bool = False,
            compute_aux_loss: bool = False,
            **_: Any,
        ) -> tuple[Any, Any, Any]:
            import torch

            batch_size = batch_size or input_ids.size(0)
            all_logps, all_entropies = [], []
            for start in range(0, input_ids.size(0), batch_size):
                ids = input_ids[start : start + batch_size]
                mask = attention_mask[start : start + batch_size]
                with self.accelerator.autocast():
                    logits = model(input_ids=ids, attention_mask=mask).logits
                if shift:
                    logits = logits[:, :-1, :]  # the logits at position t predict token t + 1
                logits = logits[:, -logits_to_keep:, :]
                if temperature:
                    logits = logits / self.temperature
                log_probs = torch.log_softmax(logits.float(), dim=-1)
                targets = ids[:, -logits_to_keep:]
                all_logps.append(log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
                if compute_entropy:
                    all_entropies.append(-(log_probs.exp() * log_probs).sum(-1))
            entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
            return torch.cat(all_logps, dim=0), entropies, None

    name = "ClassicLogProbHelper" + ("" if temperature else "NoTemperature") + ("" if shift else "NoShift")
    ClassicLogProbHelper.__name__ = ClassicLogProbHelper.__qualname__ = name
    return ClassicLogProbHelper


trl_case(
    id="trl-logps-helper-no-temperature",
    title="a GRPOTrainer subclass whose log-prob helper does not divide the logits by the temperature",
    bugs=(Bug("1", "logps", keywords=("temperature",)),),
    trainer=lambda: classic_logps_trainer(temperature=False),
    overrides=LOGPS_HELPER_OVERRIDES,
    seen_in="forks that reimplement _get_per_token_logps (TRL PR #3867 discusses sampler/trainer temperature)",
    description="the loss scores completions at T=1 while they were sampled at T=0.7: every ratio and KL is off",
)

trl_case(
    id="trl-logps-helper-off-by-one",
    title="a GRPOTrainer subclass whose log-prob helper does not shift the logits (off by one token)",
    bugs=(Bug(None, "logps", keywords=("off-by-one shift", "misaligned")),),
    trainer=lambda: classic_logps_trainer(shift=False),
    overrides=LOGPS_HELPER_OVERRIDES,
    seen_in="hand-written log-prob helpers that forget logits[:, :-1]",
    description="each completion token is scored with its own position's logits instead of the previous one's",
)

trl_case(
    id="ctl-trl-logps-helper-faithful",
    title="control: a GRPOTrainer subclass with a faithful plain-forward log-prob helper",
    bugs=(),
    trainer=classic_logps_trainer,
    overrides=LOGPS_HELPER_OVERRIDES,
    description="the classic formulation written correctly (shift, temperature, log_softmax, gather): clean",
)

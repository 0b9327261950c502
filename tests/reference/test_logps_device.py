"""The reference's own forward pass runs on the model's device and brings back only the small results.

The adapter captures batches on the CPU; the policy may sit on a GPU. No GPU here, so the model below claims
the ``meta`` device: it fails unless every input reaches it there, and answers with fixed CPU logits, so the
log-probs computed from them can be checked against the same maths done directly.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from grpo_check.compare.stages import model_logits
from grpo_check.reference.logps import logps_and_entropy_from_logits, logps_from_model, model_device
from grpo_check.trace.model import TraceStep

ROWS, PROMPT, COMPLETION, VOCAB = 3, 4, 5, 11


class _MetaDeviceModel(torch.nn.Module):
    """Computes "on the meta device": records where its inputs arrive, answers with fixed CPU logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.input_devices: list[str] = []

    @property
    def device(self) -> torch.device:
        return torch.device("meta")

    def forward(self, input_ids, attention_mask, position_ids=None, logits_to_keep=None, use_cache=None):
        for tensor in (input_ids, attention_mask, position_ids):
            if tensor is not None:
                self.input_devices.append(tensor.device.type)
        if set(self.input_devices) != {"meta"}:
            raise AssertionError(f"inputs reached the model on {sorted(set(self.input_devices))}")
        logits = self.logits[:, -logits_to_keep:] if logits_to_keep else self.logits
        return SimpleNamespace(logits=logits)


def _batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "prompt_ids": torch.randint(0, VOCAB, (ROWS, PROMPT), generator=generator),
        "prompt_mask": torch.ones(ROWS, PROMPT, dtype=torch.long),
        "completion_ids": torch.randint(0, VOCAB, (ROWS, COMPLETION), generator=generator),
        "completion_mask": torch.ones(ROWS, COMPLETION, dtype=torch.long),
    }


def _logits() -> torch.Tensor:
    return torch.randn(ROWS, PROMPT + COMPLETION, VOCAB, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("compute_entropy", [False, True])
def test_forward_inputs_go_to_the_model_device_and_log_probs_come_back(compute_entropy: bool) -> None:
    batch, logits = _batch(), _logits()
    model = _MetaDeviceModel(logits)
    out = logps_from_model(model, **batch, temperature=0.7, compute_entropy=compute_entropy)
    assert model.input_devices and set(model.input_devices) == {"meta"}
    logps, entropy = out if compute_entropy else (out, None)
    want_logps, want_entropy = logps_and_entropy_from_logits(
        logits[:, PROMPT - 1 : -1], batch["completion_ids"], 0.7, compute_entropy=compute_entropy
    )
    assert logps.device.type == "cpu"
    torch.testing.assert_close(logps, want_logps)
    if compute_entropy:
        assert entropy is not None and entropy.device.type == "cpu"
        torch.testing.assert_close(entropy, want_entropy)


def test_full_logits_for_the_diagnoses_come_back_on_the_step_device() -> None:
    batch, logits = _batch(), _logits()
    model = _MetaDeviceModel(logits)
    completion_logits = model_logits(model, TraceStep(tensors=batch))
    assert set(model.input_devices) == {"meta"}
    assert completion_logits is not None and completion_logits.device.type == "cpu"
    torch.testing.assert_close(completion_logits, logits[:, PROMPT - 1 : -1])


def test_model_device_reads_the_device_attribute_then_the_parameters() -> None:
    assert model_device(_MetaDeviceModel(_logits())) == torch.device("meta")
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(lambda **inputs: None) is None  # a plain callable: inputs stay where they are

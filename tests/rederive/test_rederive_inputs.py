"""The TRL-side extraction reads each fact from its source (fakes standing in for a trainer)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from grpo_check.trl.rederive_inputs import (
    eos_token_id_sources,
    generation_loss_tokens,
    optimizer_step,
    rederive_meta_at_generation,
)


def fake_trainer(*, tokenizer_eos=2, model_eos=(3, 2), trainer_eos=(2,), step=5, wrapped=False):
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=list(model_eos)))
    return SimpleNamespace(
        processing_class=SimpleNamespace(eos_token_id=tokenizer_eos),
        model=SimpleNamespace(module=model) if wrapped else model,
        eos_token_ids=list(trainer_eos),
        state=SimpleNamespace(global_step=step),
        accelerator=SimpleNamespace(num_processes=1),
    )


def test_eos_sources_come_from_tokenizer_and_generation_config_not_the_trainer_list():
    sources = eos_token_id_sources(fake_trainer())
    assert sources == {"tokenizer": [2], "generation_config": [3, 2], "trainer": [2]}
    assert eos_token_id_sources(fake_trainer(wrapped=True))["generation_config"] == [
        3,
        2,
    ]  # DDP-wrapped model


def test_an_int_generation_config_eos_and_a_processor_tokenizer():
    trainer = fake_trainer(model_eos=())
    trainer.model.generation_config.eos_token_id = 7
    trainer.processing_class = SimpleNamespace(tokenizer=SimpleNamespace(eos_token_id=2))  # a VLM processor
    assert eos_token_id_sources(trainer) == {"tokenizer": [2], "generation_config": [7], "trainer": [2]}


def test_loss_tokens_multiply_completion_and_tool_masks():
    output = {
        "completion_mask": torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]]),
        "tool_mask": torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]]),
    }
    assert generation_loss_tokens(fake_trainer(), output) == 2.0
    assert generation_loss_tokens(fake_trainer(), {"completion_mask": output["completion_mask"]}) == 3.0
    assert generation_loss_tokens(fake_trainer(), {}) is None


def test_meta_at_generation():
    meta = rederive_meta_at_generation(fake_trainer(step=3), {"completion_mask": torch.ones(2, 3)})
    assert meta == {
        "eos_token_id_sources": {"tokenizer": [2], "generation_config": [3, 2], "trainer": [2]},
        "generation_step": 3,
        "generation_loss_tokens": 6.0,
    }
    assert optimizer_step(fake_trainer(step=9)) == 9

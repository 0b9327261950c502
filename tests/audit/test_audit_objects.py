"""Auditing live objects: a real ``trl.GRPOConfig`` and an instantiated ``GRPOTrainer`` on a tiny GPT-2
built from code (character tokenizer from the ``tokenizers`` library; nothing downloaded)."""

from __future__ import annotations

import string

import pytest

from grpo_check.audit import audit

pytestmark = pytest.mark.slow  # importing trl takes seconds


def _config(tmp_path, **overrides):
    from trl import GRPOConfig

    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-6,
        bf16=False,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        max_steps=1,
    )
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def _tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<unk>", "<eos>", *string.digits, *"+="])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>", padding_side="left"
    )


def _trainer(tmp_path, **overrides):
    import torch
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel
    from trl import GRPOTrainer

    tokenizer = _tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=64,
            n_embd=16,
            n_layer=1,
            n_head=2,
            resid_pdrop=0.1,
            embd_pdrop=0.1,
            attn_pdrop=0.1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
        )
    )
    dataset = Dataset.from_dict({"prompt": ["1+1=", "2+2=", "3+3=", "4+4="]})

    def length_reward(completions, **_):
        return [float(len(c)) for c in completions]

    return GRPOTrainer(
        model=model,
        reward_funcs=[length_reward],
        args=_config(tmp_path, **overrides),
        train_dataset=dataset,
        processing_class=tokenizer,
    )


def _ids(result):
    return {f.check_id for f in result}


def test_grpo_config_object(tmp_path):
    import trl

    config = _config(tmp_path, loss_type="grpo", beta=0.5, epsilon_high=0.1)
    result = audit(config)
    assert result.metadata["source_kind"] == "config"
    assert result.metadata["trl_version"] == trl.__version__
    ids = _ids(result)
    assert {"GA101", "GA303", "GA114", "GA007"} <= ids
    # post-init derived fields do not count as "both set"
    assert "GA002" not in ids
    clean = audit(_config(tmp_path, loss_type="dapo", beta=0.0, disable_dropout=True))
    assert not {"GA101", "GA303", "GA114", "GA002", "GA110", "GA401", "GA402"} & _ids(clean)


def test_trainer_with_dropout_on(tmp_path):
    trainer = _trainer(tmp_path, disable_dropout=False)
    result = audit(trainer)
    assert result.metadata["source_kind"] == "trainer"
    by_id = {f.check_id: f for f in result}
    assert by_id["GA501"].figure == pytest.approx(0.1)
    assert "GA110" not in by_id  # the live model's dropout decides (GA501)


def test_trainer_with_dropout_off_and_overrides(tmp_path):
    trainer = _trainer(tmp_path, disable_dropout=True)
    assert not {"GA501", "GA502", "GA503", "GA504"} & _ids(audit(trainer))
    # values changed after construction: the audit follows what the trainer really uses
    trainer.beta = 0.5
    trainer.loss_type = "grpo"
    trainer.ref_model = trainer.model
    result = audit(trainer)
    ids = _ids(result)
    assert {"GA503", "GA303", "GA101", "GA502"} <= ids
    overrides = [f for f in result if f.check_id == "GA503"]
    assert {f.details["fields"][0] for f in overrides} == {"beta", "loss_type"}


def test_version_table_matches_the_installed_trl():
    """The tabulated defaults of the installed release are the real GRPOConfig dataclass defaults."""
    import dataclasses

    import trl
    from trl import GRPOConfig

    from grpo_check.audit import versions

    release = versions.resolve_version(trl.__version__)
    if versions.parse_version(trl.__version__) != versions.parse_version(release):
        pytest.skip(f"installed trl {trl.__version__} is not a tabulated release")
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(GRPOConfig)
        if f.default is not dataclasses.MISSING and f.name in versions.grpo_fields(release)
    }
    table = versions.defaults_for(release)
    mismatched = {
        name: (value, table[name])
        for name, value in defaults.items()
        if name not in versions.TRAINING_ARGUMENTS_FIELDS
        and table.get(name) != versions.canonical(name, value)
    }
    assert not mismatched
    own_fields = {f.name for f in dataclasses.fields(GRPOConfig)} - versions.TRAINING_ARGUMENTS_FIELDS
    assert own_fields <= versions.known_fields(release)


def test_functional_attention_dropout_survives_trl_disable_dropout():
    """GA504's fact: Llama keeps attention dropout as a float that TRL's disable_dropout_in_model misses."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import disable_dropout_in_model

    from grpo_check.audit.loader import _functional_dropout

    def llama(attention_dropout):
        config = LlamaConfig(
            vocab_size=16,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            attention_dropout=attention_dropout,
        )
        return LlamaForCausalLM(config)

    model = llama(0.1)
    disable_dropout_in_model(model)
    found = _functional_dropout(model)
    assert found and max(found.values()) == pytest.approx(0.1)
    assert any(name.endswith("attention_dropout") for name in found)
    assert _functional_dropout(llama(0.0)) == {}
    # and it really is active: two training-mode forwards with the same weights disagree
    import torch

    tokens = torch.arange(8).view(1, 8)
    model.train()
    with torch.no_grad():
        first, second = model(tokens).logits, model(tokens).logits
    assert not torch.equal(first, second)
    quiet = llama(0.0).train()
    with torch.no_grad():
        assert torch.equal(quiet(tokens).logits, quiet(tokens).logits)

"""Log-prob stage: chunked == naive, temperature and shift conventions, own forward pass with left padding,
and the sampler's kept mass against transformers' own logits warpers (L1–L6)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_check.findings import InputError
from grpo_check.reference import (
    completion_logits,
    logps_and_entropy_from_logits,
    logps_from_logits,
    logps_from_model,
    sampling_kept_mass,
)

FAST = settings(max_examples=20, deadline=None)


@FAST
@given(
    st.integers(1, 3),
    st.integers(1, 6),
    st.integers(2, 40),
    st.integers(1, 50),
    st.floats(0.3, 3.0),
    st.integers(0, 999),
)
def test_chunked_equals_naive(rows, length, vocab, chunk, temperature, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = 5 * torch.randn(rows, length, vocab, generator=gen).to(torch.bfloat16)
    ids = torch.randint(0, vocab, (rows, length), generator=gen)
    logps, entropy = logps_and_entropy_from_logits(logits, ids, temperature, chunk_size=chunk)
    naive = torch.log_softmax(logits.double() / temperature, dim=-1)
    torch.testing.assert_close(logps, naive.gather(-1, ids.unsqueeze(-1)).squeeze(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(entropy, -(naive.exp() * naive).sum(-1), rtol=1e-12, atol=1e-12)
    assert (logps <= 0).all()


def test_temperature_is_applied_before_softmax():
    logits = torch.tensor([[[0.0, 2.0]]])
    ids = torch.tensor([[1]])
    hot = logps_from_logits(logits, ids, temperature=2.0).item()
    assert hot == pytest.approx(
        torch.log_softmax(torch.tensor([0.0, 1.0], dtype=torch.float64), -1)[1].item()
    )
    assert hot != pytest.approx(logps_from_logits(logits, ids).item())  # firing: T matters


def test_completion_logits_shift():
    full = torch.randn(1, 5, 7)  # P = 3 prompt positions + T = 2 completion positions
    shifted = completion_logits(full, prompt_length=3)
    torch.testing.assert_close(shifted, full[:, 2:4])
    with pytest.raises(InputError):
        completion_logits(full, prompt_length=0)


def _tiny_model(kind):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(
            vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=64,
        )  # fmt: skip
        return transformers.LlamaForCausalLM(config).eval()
    config = transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=64)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_left_padding_does_not_change_logps(kind):
    """Bug-catalog #14: a row's log-probs are the same scored alone and left-padded in a batch."""
    model = _tiny_model(kind).double()
    prompt = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    prompt_mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    completion = torch.tensor([[11, 12, 13], [14, 15, 16]])
    completion_mask = torch.ones(2, 3, dtype=torch.long)
    batched = logps_from_model(model, prompt, prompt_mask, completion, completion_mask)
    alone = logps_from_model(model, prompt[:1, 2:], prompt_mask[:1, 2:], completion[:1], completion_mask[:1])
    torch.testing.assert_close(batched[:1], alone, rtol=1e-9, atol=1e-9)
    # the own forward pass equals a direct full-logits computation of the unpadded row
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt[:1, 2:], completion[:1]], 1)).logits
    direct = logps_from_logits(completion_logits(logits, 2), completion[:1])
    torch.testing.assert_close(alone, direct, rtol=1e-9, atol=1e-9)
    if kind == "gpt2":  # absolute positions: ignoring the mask when numbering positions shifts the padded row
        arange = logps_from_model(model, prompt, prompt_mask, completion, completion_mask, positions="arange")
        assert not torch.allclose(arange[:1], alone, atol=1e-6)


def test_logps_from_model_entropy_and_temperature():
    model = _tiny_model("llama")
    prompt, prompt_mask = torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.long)
    completion, completion_mask = torch.tensor([[3, 4, 5]]), torch.ones(1, 3, dtype=torch.long)
    logps, entropy = logps_from_model(
        model, prompt, prompt_mask, completion, completion_mask, 0.7, compute_entropy=True
    )
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt, completion], 1)).logits
    want_logps, want_entropy = logps_and_entropy_from_logits(completion_logits(logits, 2), completion, 0.7)
    torch.testing.assert_close(logps, want_logps, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(entropy, want_entropy, rtol=1e-6, atol=1e-6)


@FAST
@given(
    st.integers(0, 999),
    st.floats(0.5, 2.0),
    st.sampled_from([0, 1, 3, 8]),
    st.sampled_from([1.0, 0.9, 0.5, 0.1]),
    st.sampled_from([None, 0.05, 0.3]),
)
def test_kept_mass_matches_transformers_warpers(seed, temperature, top_k, top_p, min_p):
    from transformers.generation.logits_process import MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(2, 3, 12, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, 12, (2, 3), generator=gen)
    mass, support = sampling_kept_mass(logits, ids, temperature, top_p, top_k, min_p, return_in_support=True)
    scores = logits.reshape(6, 12) / temperature
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    if min_p is not None:
        scores = MinPLogitsWarper(min_p)(None, scores)
    kept = torch.isfinite(scores)
    full = torch.softmax(logits.reshape(6, 12) / temperature, -1)
    torch.testing.assert_close(mass.reshape(6), (full * kept).sum(-1), rtol=1e-12, atol=1e-12)
    assert torch.equal(support.reshape(6), kept.gather(-1, ids.reshape(6, 1)).squeeze(-1))
    assert ((mass > 0) & (mass <= 1 + 1e-12)).all()


def test_renormalising_sampler_logps_identity():
    """L6: a sampler that renormalises over the kept set reports logp − log S for kept tokens."""
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]], dtype=torch.float64))
    ids = torch.tensor([[1]])
    mass = sampling_kept_mass(logits, ids, top_p=0.7)
    sampler_logp = torch.log(torch.tensor(0.3 / 0.8, dtype=torch.float64))
    torch.testing.assert_close(logps_from_logits(logits, ids) - mass.log(), sampler_logp.reshape(1, 1))

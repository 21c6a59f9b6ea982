"""Anatomy: layer numbering, lens fidelity per family, unsupported families."""

from __future__ import annotations

import pytest
import torch

from crosslens.models.anatomy import Anatomy, UnsupportedModelError, capture_residuals, paper_layers


def test_paper_layers_schedule():
    assert paper_layers(42) == list(range(2, 43, 4))
    assert paper_layers(18) == [2, 6, 10, 14, 18]
    assert paper_layers(16) == [4, 8, 12, 16]
    assert paper_layers(26) == [2, 6, 10, 14, 18, 22, 26]
    assert paper_layers(3, every=4) == [3]
    with pytest.raises(ValueError):
        paper_layers(0)


def _ids(lm, text="Question: What is the capital of France? A: Berlin B: Paris Answer:"):
    return lm.tokenizer(text, return_tensors="pt").input_ids


def test_lens_at_last_layer_equals_model_logits(tiny):
    ids = _ids(tiny)
    L = tiny.anatomy.n_layers
    with torch.no_grad(), capture_residuals(tiny.anatomy, [L]) as states:
        logits = tiny.model(ids).logits[0].float()
    lens = tiny.anatomy.lens_logits(states[L][0], L)
    assert (lens - logits).abs().max().item() <= 1e-4


def test_gemma2_softcap_is_applied():
    from conftest import tiny_model

    lm = tiny_model("gemma2")
    assert lm.anatomy.softcap == 2.0
    ids = _ids(lm)
    with torch.no_grad():
        logits = lm.model(ids).logits
    assert logits.abs().max() <= 2.0 + 1e-6  # a 2.0 softcap bounds every logit


def test_layer_numbering_matches_output_hidden_states(tiny):
    """Layer 0 = embeddings output, layer l = block l output; hidden_states[-1] is post-norm."""
    ids = _ids(tiny)
    L = tiny.anatomy.n_layers
    layers = list(range(L + 1))
    with torch.no_grad(), capture_residuals(tiny.anatomy, layers) as states:
        out = tiny.model(ids, output_hidden_states=True)
    for layer in range(L):
        assert torch.allclose(states[layer], out.hidden_states[layer], atol=1e-6), layer
    # transformers' last entry is the final norm applied to block L's output: never normalise twice.
    assert torch.allclose(tiny.anatomy.final_norm(states[L]), out.hidden_states[L], atol=1e-5)


def test_capture_keeps_only_requested_positions(tiny):
    ids = _ids(tiny)
    index = torch.tensor([[0, ids.shape[1] - 1]])
    with torch.no_grad(), capture_residuals(tiny.anatomy, [1], index) as kept:
        tiny.model(ids)
    with torch.no_grad(), capture_residuals(tiny.anatomy, [1]) as full:
        tiny.model(ids)
    assert kept[1].shape == (1, 2, tiny.anatomy.d_model)
    assert torch.equal(kept[1][0, 1], full[1][0, -1])


def hook_counts(anatomy) -> list[int]:
    return [len(b._forward_hooks) + len(b._forward_pre_hooks) for b in anatomy.blocks]


def test_hooks_removed_after_exception(tiny):
    before = hook_counts(tiny.anatomy)
    with pytest.raises(RuntimeError):
        with capture_residuals(tiny.anatomy, [0, 1, 2]):
            assert hook_counts(tiny.anatomy) != before
            raise RuntimeError("boom")
    assert hook_counts(tiny.anatomy) == before


def test_token_logprobs_chunking_is_exact(tiny):
    L = tiny.anatomy.n_layers
    h = torch.randn(7, tiny.anatomy.d_model)
    targets = torch.arange(7)
    whole = tiny.anatomy.token_logprobs(h, L, targets)
    vocab = tiny.anatomy.unembed_weight.shape[0]
    chunked = tiny.anatomy.token_logprobs(h, L, targets, max_elements=vocab * 2)  # 2 rows at a time
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_layers_out_of_range(tiny):
    with pytest.raises(ValueError, match="out of range"):
        tiny.anatomy.check_layers([tiny.anatomy.n_layers + 1])


def test_unsupported_family_is_one_clear_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="unsupported model family 'gpt2'.*FAMILIES"):
        Anatomy.of(model)

"""Packed microbatches (shared prompt, two branches, no padding) against the padded sequences."""

import pytest
import torch

from alignment.config import KTOConfig
from alignment.data import collate, tokenize_rows
from alignment.logps import packed_logps, sequence_logps, supports_packing
from alignment.lora import attach_lora

# Sums of ~100 fp32 log-probs: one ulp there is 7.6e-6, and packed rows round differently from padded
# ones (other matmul shapes), so 1e-5 plus one part in a million of the value.
TOL = {"atol": 1e-5, "rtol": 1e-6}


def batch_of(tokenizer, rows, *, pairing="next", max_length=128, prompt_budget=64):
    examples = tokenize_rows(rows, tokenizer)
    return collate(examples, list(range(len(examples))), max_length=max_length, prompt_budget=prompt_budget,
                   pad_id=tokenizer.pad_token_id, pairing=pairing, packed=True)


def lora_model(tiny_model, *, dropout: float = 0.0):
    """LoRA with non-zero B matrices, so the adapter changes the log-probs."""
    model = attach_lora(tiny_model, KTOConfig(lora_dropout=dropout))
    generator = torch.Generator().manual_seed(1)
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    with torch.no_grad():
        for p in lora_b:
            p.copy_(0.5 * torch.randn(p.shape, generator=generator))
    return model


@pytest.mark.parametrize("pairing", ["next", "previous"])
def test_packed_matches_padded_sequences(tiny_model, tiny_tokenizer, rows, pairing):
    batch = batch_of(tiny_tokenizer, rows[:8], pairing=pairing)
    packed = batch.packed
    assert packed.input_ids.shape[0] <= 8 and packed.input_ids.shape[1] <= batch.matched.input_ids.shape[1] * 2
    # Every prompt token once, every matched and KL completion token once: no padding beyond the last row's.
    real = int((packed.segment >= 0).sum())
    prompts = int(batch.matched.attention_mask.sum() - batch.matched.completion_mask.sum())
    assert real == prompts + int(batch.matched.completion_mask.sum() + batch.kl.completion_mask.sum())
    with torch.no_grad():
        matched, kl = packed_logps(tiny_model, packed)
        assert torch.allclose(matched, sequence_logps(tiny_model, batch.matched), **TOL)
        assert torch.allclose(kl, sequence_logps(tiny_model, batch.kl), **TOL)


def test_packed_gradients_match_and_eager_agrees(tiny_model, tiny_tokenizer, rows):
    model = lora_model(tiny_model)
    assert supports_packing(model)
    batch = batch_of(tiny_tokenizer, rows[:6], pairing="previous")
    params = [p for p in model.parameters() if p.requires_grad]
    matched, kl = packed_logps(model, batch.packed)
    g_packed = torch.autograd.grad(matched.sum(), params)
    padded = sequence_logps(model, batch.matched)
    g_padded = torch.autograd.grad(padded.sum(), params)
    assert torch.allclose(matched, padded, **TOL)
    for a, b in zip(g_packed, g_padded, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        assert torch.allclose(kl, sequence_logps(model, batch.kl), **TOL)
        model.get_base_model().config._attn_implementation = "eager"
        eager, eager_kl = packed_logps(model, batch.packed)
    assert torch.allclose(eager, padded.detach(), **TOL)
    assert torch.allclose(eager_kl, kl, **TOL)


def rows_with_a_cut_kl_prompt() -> list[dict]:
    """With max_length 48 and prompt_budget 8, example 0's KL pair (its long prompt with example 1's long
    completion, "next" pairing) keeps less of the prompt than its matched pair does."""
    long_answer = "Two plus two equals four. Three times three is nine. " * 3
    return [{"prompt": "Write a haiku about the sea and the moon. " * 2, "completion": "Sea.", "label": True},
            {"prompt": "Capital of France?", "completion": long_answer, "label": False},
            {"prompt": "Hi", "completion": "Sure! Here is a short answer.", "label": True}]


def test_kl_pair_truncated_differently_is_its_own_segment(tiny_model, tiny_tokenizer):
    batch = batch_of(tiny_tokenizer, rows_with_a_cut_kl_prompt(), max_length=48, prompt_budget=8)
    segments = int(batch.packed.segment.max()) + 1
    assert segments > 3  # the long KL completion cut example 0's prompt shorter than its matched pair's
    with torch.no_grad():
        matched, kl = packed_logps(tiny_model, batch.packed)
        assert torch.allclose(matched, sequence_logps(tiny_model, batch.matched), **TOL)
        assert torch.allclose(kl, sequence_logps(tiny_model, batch.kl), **TOL)


def test_branches_do_not_see_each_other(tiny_model, tiny_tokenizer, rows):
    """Changing example 1's completion changes only the sums that score it."""
    batch = batch_of(tiny_tokenizer, rows[:4], pairing="next")
    other = [dict(r) for r in rows[:4]]
    other[1]["completion"] = "Thanks for the feedback, I will try again."
    changed = batch_of(tiny_tokenizer, other, pairing="next")
    with torch.no_grad():
        m0, k0 = packed_logps(tiny_model, batch.packed)
        m1, k1 = packed_logps(tiny_model, changed.packed)
    # Completion 1 is matched with prompt 1 and is the KL partner of prompt 0 ("next").
    assert m0[1] != m1[1] and k0[0] != k1[0]
    assert torch.equal(m0[[0, 2, 3]], m1[[0, 2, 3]]) or torch.allclose(m0[[0, 2, 3]], m1[[0, 2, 3]], atol=1e-6)
    assert torch.allclose(k0[[1, 2, 3]], k1[[1, 2, 3]], atol=1e-6)

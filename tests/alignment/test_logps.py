"""Completion log-probs: fast path (head at completion positions only) vs naive."""

import torch

from alignment.config import KTOConfig
from alignment.data import collate, tokenize_rows
from alignment.logps import naive_sequence_logps, sequence_logps
from alignment.lora import attach_lora


def batch_of(tokenizer, rows):
    examples = tokenize_rows(rows, tokenizer)
    return collate(examples, list(range(len(examples))), max_length=128, prompt_budget=64,
                   pad_id=tokenizer.pad_token_id)


def test_fast_path_matches_naive_log_softmax(tiny_model, tiny_tokenizer, rows):
    batch = batch_of(tiny_tokenizer, rows[:6])
    assert not bool(batch.matched.attention_mask.all())  # padding is exercised
    with torch.no_grad():
        fast = sequence_logps(tiny_model, batch.matched)
        naive = naive_sequence_logps(tiny_model, batch.matched)
    assert fast.shape == (6,) and fast.dtype == torch.float32
    assert torch.allclose(fast, naive, atol=1e-5, rtol=0)
    assert (fast < 0).all()


def test_fast_path_with_active_lora_matches_and_gives_same_gradients(tiny_model, tiny_tokenizer, rows):
    model = attach_lora(tiny_model, KTOConfig(lora_dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    batch = batch_of(tiny_tokenizer, rows[:4])
    params = [p for p in model.parameters() if p.requires_grad]
    fast = sequence_logps(model, batch.matched)
    g_fast = torch.autograd.grad(fast.sum(), params)
    naive = naive_sequence_logps(model, batch.matched)
    g_naive = torch.autograd.grad(naive.sum(), params)
    assert torch.allclose(fast, naive, atol=1e-5, rtol=0)
    # The fast path forms the head's gradient in another order (alignment.head): ~1e-7 of each tensor's norm.
    for a, b in zip(g_fast, g_naive):
        assert float((a - b).norm()) <= 1e-5 * float(b.norm())
    with torch.no_grad(), model.disable_adapter():
        assert not torch.allclose(sequence_logps(model, batch.matched), fast, atol=1e-3)


def test_vocabulary_projection_only_at_completion_positions(tiny_model, tiny_tokenizer, rows):
    batch = batch_of(tiny_tokenizer, rows[:4])
    seen = []
    hook = tiny_model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(out.shape))
    try:
        with torch.no_grad():
            sequence_logps(tiny_model, batch.matched)
    finally:
        hook.remove()
    assert seen == [(int(batch.matched.completion_mask.sum()), tiny_model.config.vocab_size)]


def test_changing_prompt_tokens_leaves_completion_scores_positions_right(tiny_model, tiny_tokenizer):
    rows = [{"prompt": "Hi", "completion": "Sea and moon.", "label": True},
            {"prompt": "Write a haiku about the sea and the moon.", "completion": "Sea and moon.", "label": True}]
    batch = batch_of(tiny_tokenizer, rows)
    m = batch.matched
    assert m.completion_mask[0].sum() == m.completion_mask[1].sum()
    # Scored targets are the same completion tokens, whatever the prompt length.
    assert m.input_ids[0][m.completion_mask[0]].tolist() == m.input_ids[1][m.completion_mask[1]].tolist()
    # Replacing one prompt token by another changes the prompt only: same mask, other log-probs.
    changed = m.input_ids.clone()
    first_prompt_token = 1
    changed[1, first_prompt_token] = (changed[1, first_prompt_token] + 5) % tiny_model.config.vocab_size
    from alignment.data import Sequences
    other = Sequences(changed, m.attention_mask, m.completion_mask)
    with torch.no_grad():
        a, b = sequence_logps(tiny_model, m), sequence_logps(tiny_model, other)
    assert a[0] == b[0] and a[1] != b[1]

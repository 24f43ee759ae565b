"""The paths a GPU job takes, checked on the CPU: the chunked LM head, the packed policy forward,
gradient checkpointing and the NF4-quantized base (QLoRA)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alignment.config import ConfigError, KTOConfig
from alignment.data import collate, tokenize_rows
from alignment.head import token_logps
from alignment.logps import sequence_logps
from alignment.train import Collator, pair_logps, train_kto


def _max_saved_numel(fn) -> int:
    """The largest tensor autograd keeps for the backward while ``fn`` runs."""
    sizes = [0]

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return max(sizes)


def test_chunked_head_matches_autograd_and_keeps_no_logits():
    torch.manual_seed(0)
    n, hidden, vocab = 17, 24, 300
    head = torch.nn.Linear(hidden, vocab, bias=False).requires_grad_(False)
    states = torch.randn(n, hidden, dtype=torch.float64).float()
    targets = torch.randint(0, vocab, (n,))
    upstream = torch.randn(n)

    def plain():
        s = states.clone().requires_grad_()
        out = -F.cross_entropy(head(s).float(), targets, reduction="none")
        out.backward(upstream)
        return out.detach(), s.grad

    def chunked():
        s = states.clone().requires_grad_()
        out = token_logps(head, s, targets, chunk=5)  # 4 chunks, the last one short
        out.backward(upstream)
        return out.detach(), s.grad

    (want, want_grad), (got, got_grad) = plain(), chunked()
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    assert torch.allclose(got_grad, want_grad, atol=1e-6, rtol=1e-5)
    # Autograd's path keeps (N, V) logits for the backward; the chunked one only the (N, H) gradient.
    assert _max_saved_numel(plain) >= n * vocab
    assert _max_saved_numel(chunked) <= n * hidden
    with torch.no_grad():
        assert torch.allclose(token_logps(head, states, targets, chunk=4), want, atol=1e-6, rtol=0)


def test_chunked_head_falls_back_for_a_head_it_cannot_fuse():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 40, bias=True).requires_grad_(False)  # a bias: not the fused case
    states, targets = torch.randn(6, 8, requires_grad=True), torch.randint(0, 40, (6,))
    got = token_logps(head, states, targets, chunk=2)
    assert torch.allclose(got, -F.cross_entropy(head(states), targets, reduction="none"), atol=1e-6)
    got.sum().backward()
    assert states.grad is not None


def _packed_batch(tokenizer, rows, model):
    config = KTOConfig(sequence_layout="batched", lora_dropout=0.0)
    examples = tokenize_rows(rows, tokenizer)
    collator = Collator(examples, tokenizer, config, torch.device("cpu"), model)
    assert collator.packed and not collator.per_sequence
    return collator(list(range(len(examples))))


def test_the_policy_forward_is_packed_on_the_batched_layout(tiny_model, tiny_tokenizer, rows):
    from alignment.lora import attach_lora

    model = attach_lora(tiny_model, KTOConfig(lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    # Completions of very different lengths: most of a padded batch would be padding.
    uneven = [{**row, "completion": " ".join([row["completion"]] * (1 + 3 * (i % 4)))}
              for i, row in enumerate(rows[:8])]
    batch = _packed_batch(tiny_tokenizer, uneven, model)
    computed = []
    embed = model.get_base_model().get_input_embeddings()
    handle = embed.register_forward_hook(lambda m, args, out: computed.append(args[0].numel()))
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        matched, kl = pair_logps(model, batch)
    finally:
        handle.remove()
    grads = torch.autograd.grad(matched.sum(), params)
    # Two forwards (matched with a graph, KL without), neither as wide as the padded batch.
    real = sum(len(p) + len(c) for p, c in batch.matched_pairs)
    assert len(computed) == 2 and real <= computed[0] < 0.8 * batch.matched.input_ids.numel()
    assert computed[1] < 0.8 * batch.kl.input_ids.numel()
    want = sequence_logps(model, batch.matched)
    want_grads = torch.autograd.grad(want.sum(), params)
    assert torch.allclose(matched, want, atol=1e-5, rtol=1e-6)
    with torch.no_grad():
        assert torch.allclose(kl, sequence_logps(model, batch.kl), atol=1e-5, rtol=1e-6)
    # Gradients up to ~400 here: fp32 sums in other matmul shapes differ by ~1e-6 of the tensor's norm.
    for a, b in zip(grads, want_grads, strict=True):
        assert float((a - b).norm()) <= 1e-5 * float(b.norm())


def _train(model, tokenizer, rows, **overrides):
    config = KTOConfig(max_steps=2, batch_size=4, seed=3, **overrides)
    return train_kto(model, tokenizer, rows[:8], config)


def test_gradient_checkpointing_trains_the_same_with_dropout(tiny_dir, tiny_tokenizer, rows):
    from transformers import AutoModelForCausalLM

    def run(**overrides):
        # lora_dropout at its default (0.05): the recompute must draw the forward's masks again.
        result = _train(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows, **overrides)
        return result, {n: p.detach().clone() for n, p in result.model.named_parameters() if "lora_" in n}

    plain, plain_adapter = run(sequence_layout="batched")
    checked, checked_adapter = run(gradient_checkpointing=True)  # auto: batched on a CPU with checkpointing
    assert checked.metrics["sequence_layout"] == "batched"
    for a, b in zip(plain.history, checked.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    for name, value in plain_adapter.items():
        assert torch.allclose(checked_adapter[name], value, atol=1e-6), name


def test_gradient_checkpointing_is_batched_only_and_a_recompute_is_seen(tiny_dir, tiny_tokenizer, rows):
    from transformers import AutoModelForCausalLM

    with pytest.raises(ConfigError, match="gradient_checkpointing needs sequence_layout 'batched'"):
        KTOConfig(gradient_checkpointing=True, sequence_layout="per_sequence")

    def layer_calls(checkpointing: bool) -> int:
        model = AutoModelForCausalLM.from_pretrained(tiny_dir)
        calls = []
        # A submodule: the layer's own hooks run once (transformers checkpoints its forward inside them).
        model.model.layers[0].input_layernorm.register_forward_pre_hook(lambda *_: calls.append(1))
        _train(model, tiny_tokenizer, rows, sequence_layout="batched", gradient_checkpointing=checkpointing,
               lora_dropout=0.0)
        return len(calls)

    plain, checked = layer_calls(False), layer_calls(True)
    # 2 steps x (matched forward with a graph): recomputed once each in the backward.
    assert checked == plain + 2


def test_nf4_base_trains_an_adapter_for_the_full_precision_base(tiny_tokenizer, rows):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from tests.tiny import build_tiny_model

    # bitsandbytes' CPU kernels want output widths in multiples of 32: hidden 64 (k/v projections 32 wide).
    def model():
        return build_tiny_model(tiny_tokenizer, hidden_size=64)

    full = _train(model(), tiny_tokenizer, rows, sequence_layout="batched")
    quant = _train(model(), tiny_tokenizer, rows, sequence_layout="batched", quantization="nf4")
    base = quant.model.get_base_model()
    four_bit = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 7 * len(base.model.layers)  # q k v o gate up down; the LM head stays
    assert not isinstance(base.get_output_embeddings(), bnb.nn.Linear4bit)
    layer = four_bit[0]
    assert layer.weight.numel() * layer.weight.element_size() * 2 == layer.in_features * layer.out_features  # 4 bits
    assert all(h["loss"] == h["loss"] for h in quant.history)  # finite, not NaN
    # The adapter has the same tensors as a full-precision run's, so it loads on the unquantized base.
    names = sorted(n for n, p in quant.model.named_parameters() if p.requires_grad)
    assert names == sorted(n for n, p in full.model.named_parameters() if p.requires_grad)
    # The reference is the quantized base: its log-probs differ from the full-precision base's.
    examples = tokenize_rows(rows[:4], tiny_tokenizer)
    batch = collate(examples, [0, 1, 2, 3], max_length=128, prompt_budget=64, pad_id=tiny_tokenizer.pad_token_id)
    with torch.no_grad(), quant.model.disable_adapter(), full.model.disable_adapter():
        q = sequence_logps(quant.model, batch.matched)
        f = sequence_logps(full.model, batch.matched)
    assert not torch.allclose(q, f, atol=1e-3)
    assert torch.allclose(q, f, rtol=0.2)  # but close: 4-bit weights, not other weights


def test_nf4_without_bitsandbytes_says_how_to_fix(tiny_model, tiny_tokenizer, rows, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'prospect\[qlora\]'"):
        _train(tiny_model, tiny_tokenizer, rows, quantization="nf4")


def test_nf4_gradients_match_finite_differences_after_an_eval_pass(tiny_tokenizer, rows):
    """The reference pass runs the quantized base in eval mode first; the gradient of the policy's
    log-probs with respect to the lowest LoRA weight must still flow through every 4-bit layer above it."""
    pytest.importorskip("bitsandbytes")
    from tests.tiny import build_tiny_model

    result = _train(build_tiny_model(tiny_tokenizer, hidden_size=64), tiny_tokenizer, rows,
                    sequence_layout="batched", quantization="nf4", lora_dropout=0.0)
    model = result.model.train()
    batch = _packed_batch(tiny_tokenizer, rows[:4], model)
    weight = next(p for n, p in model.named_parameters() if "layers.0." in n and "q_proj.lora_A" in n)
    (grad,) = torch.autograd.grad(pair_logps(model, batch)[0].sum(), weight)
    i = int(grad.abs().argmax())
    eps, flat = 1e-2, weight.data.view(-1)

    def total(delta: float) -> float:
        flat[i] += delta
        try:
            with torch.no_grad():
                return float(pair_logps(model, batch)[0].double().sum())
        finally:
            flat[i] -= delta

    numeric = (total(eps) - total(-eps)) / (2 * eps)
    assert abs(float(grad.view(-1)[i])) > 1e-3
    assert float(grad.view(-1)[i]) == pytest.approx(numeric, rel=2e-2)

"""The per-sequence layout (one unpadded forward per example, KL pair from the cached prompt)
against the padded sequences, and a training run in each layout."""

import math
import threading
from contextlib import contextmanager

import pytest
import torch

from alignment.config import KTOConfig
from alignment.data import collate, tokenize_rows
from alignment.logps import per_sequence_logps, sequence_logps, supports_per_sequence
from alignment.lora import MaskStream, SeededDropout, dropout_generator, dropout_seed
from alignment.train import train_kto
from tests.alignment.test_packing import TOL, lora_model, rows_with_a_cut_kl_prompt


def batch_of(tokenizer, rows, *, pairing="next", max_length=128, prompt_budget=64):
    examples = tokenize_rows(rows, tokenizer)
    return collate(examples, list(range(len(examples))), max_length=max_length, prompt_budget=prompt_budget,
                   pad_id=tokenizer.pad_token_id, pairing=pairing)


def count_decoder_tokens(model):
    """A list that collects the number of tokens each embedding lookup sees."""
    seen = []
    embeddings = model.get_input_embeddings()
    hook = embeddings.register_forward_hook(lambda m, args, out: seen.append(args[0].numel()))
    return seen, hook


@pytest.mark.parametrize("pairing", ["next", "previous"])
def test_matches_padded_and_computes_each_prompt_once(tiny_model, tiny_tokenizer, rows, pairing):
    batch = batch_of(tiny_tokenizer, rows[:8], pairing=pairing)
    assert supports_per_sequence(tiny_model)
    seen, hook = count_decoder_tokens(tiny_model)
    try:
        with torch.no_grad():
            matched, kl = per_sequence_logps(tiny_model, batch.matched_pairs, batch.kl_pairs, "cpu")
    finally:
        hook.remove()
    with torch.no_grad():
        assert torch.allclose(matched, sequence_logps(tiny_model, batch.matched), **TOL)
        assert torch.allclose(kl, sequence_logps(tiny_model, batch.kl), **TOL)
    # Every matched pair in full, then only the partner's completion: no padding, no second prompt.
    real_matched = int(batch.matched.attention_mask.sum())
    assert sum(seen) == real_matched + int(batch.kl.completion_mask.sum())
    assert len(seen) == 16


def test_gradients_match_padded_and_kl_has_none(tiny_model, tiny_tokenizer, rows):
    model = lora_model(tiny_model)
    batch = batch_of(tiny_tokenizer, rows[:6], pairing="previous")
    params = [p for p in model.parameters() if p.requires_grad]
    matched, kl = per_sequence_logps(model, batch.matched_pairs, batch.kl_pairs, "cpu")
    assert matched.requires_grad and not kl.requires_grad
    g_ours = torch.autograd.grad(matched.sum(), params)
    padded = sequence_logps(model, batch.matched)
    g_padded = torch.autograd.grad(padded.sum(), params)
    assert torch.allclose(matched, padded, **TOL)
    for a, b in zip(g_ours, g_padded, strict=True):
        # fp32 rounding of other matmul shapes: ~1e-6 of the gradient's norm (elements reach ~100).
        assert float((a - b).norm() / b.norm()) < 1e-5
    with torch.no_grad():
        # The adapter matters, and the KL sums are the adapted model's.
        assert torch.allclose(kl, sequence_logps(model, batch.kl), **TOL)
        with model.disable_adapter():
            assert not torch.allclose(sequence_logps(model, batch.kl), kl, atol=1e-3)


def test_kl_pair_truncated_differently_gets_its_own_forward(tiny_model, tiny_tokenizer):
    batch = batch_of(tiny_tokenizer, rows_with_a_cut_kl_prompt(), max_length=48, prompt_budget=8)
    assert batch.kl_pairs[0][0] != batch.matched_pairs[0][0]  # the long partner cut prompt 0 shorter
    with torch.no_grad():
        matched, kl = per_sequence_logps(tiny_model, batch.matched_pairs, batch.kl_pairs, "cpu")
        assert torch.allclose(matched, sequence_logps(tiny_model, batch.matched), **TOL)
        assert torch.allclose(kl, sequence_logps(tiny_model, batch.kl), **TOL)


def test_without_kl_pairs(tiny_model, tiny_tokenizer, rows):
    examples = tokenize_rows(rows[:4], tiny_tokenizer)
    batch = collate(examples, [0, 1, 2, 3], max_length=128, prompt_budget=64, pad_id=tiny_tokenizer.pad_token_id,
                    with_kl=False)
    with torch.no_grad():
        matched, kl = per_sequence_logps(tiny_model, batch.matched_pairs, None, "cpu")
        assert kl is None
        assert torch.allclose(matched, sequence_logps(tiny_model, batch.matched), **TOL)


def test_training_in_both_layouts_gives_the_same_run(tiny_dir, tiny_tokenizer, rows):
    from transformers import AutoModelForCausalLM

    def run(layout):
        config = KTOConfig(max_steps=4, batch_size=4, learning_rate=1e-2, lora_dropout=0.0, warmup_ratio=0.0,
                           sequence_layout=layout, kl_pairing="previous", shuffle=False)
        return train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows, config)

    ours, padded = run("per_sequence"), run("batched")
    assert [h["tokens"] for h in ours.history] == [h["tokens"] for h in padded.history]
    for a, b in zip(ours.history, padded.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["kl"] == pytest.approx(b["kl"], abs=1e-5)
    # The run moved: the last step's loss is not the fresh adapter's 0.5.
    assert abs(ours.history[-1]["loss"] - 0.5) > 1e-3


def test_threads_give_the_same_sums_and_gradients(tiny_model, tiny_tokenizer, rows):
    model = lora_model(tiny_model)
    batch = batch_of(tiny_tokenizer, rows[:7], pairing="next")
    params = [p for p in model.parameters() if p.requires_grad]
    threads = torch.get_num_threads()
    weights = torch.linspace(-1.0, 1.0, 7)  # a loss that weighs examples differently

    def run(workers):
        matched, kl = per_sequence_logps(model, batch.matched_pairs, batch.kl_pairs, "cpu", workers=workers)
        grads = torch.autograd.grad((matched * weights).sum(), params)
        return matched.detach(), kl, grads

    serial, parallel = run(1), run(3)
    assert torch.get_num_threads() == threads  # the workers' one-thread setting is undone
    assert torch.allclose(parallel[0], serial[0], **TOL) and torch.allclose(parallel[1], serial[1], **TOL)
    assert not parallel[1].requires_grad
    for a, b in zip(parallel[2], serial[2], strict=True):
        assert float((a - b).norm() / b.norm()) < 1e-5
    # Without autograd (the reference pass) the workers build no graph either.
    with torch.inference_mode():
        matched, _ = per_sequence_logps(model, batch.matched_pairs, batch.kl_pairs, "cpu", workers=3)
    assert not matched.requires_grad and torch.allclose(matched, serial[0], **TOL)


def test_an_error_in_a_worker_reaches_the_caller(tiny_model, tiny_tokenizer, rows):
    batch = batch_of(tiny_tokenizer, rows[:4])
    bad = list(batch.matched_pairs)
    bad[2] = (bad[2][0], [10 ** 9])  # a token id outside the vocabulary
    with pytest.raises(IndexError), torch.no_grad():
        per_sequence_logps(tiny_model, bad, None, "cpu", workers=2)


def test_training_with_threads_matches_one_thread(tiny_dir, tiny_tokenizer, rows):
    from transformers import AutoModelForCausalLM

    def run(workers):
        config = KTOConfig(max_steps=3, batch_size=4, learning_rate=1e-2, lora_dropout=0.0, warmup_ratio=0.0,
                           sequence_layout="per_sequence", sequence_workers=workers, shuffle=False)
        return train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows, config)

    one, two = run(1), run(2)
    for a, b in zip(one.history, two.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


def test_dropout_runs_repeat_exactly_with_threads(tiny_dir, tiny_tokenizer, rows):
    """LoRA dropout draws random numbers: two seeded runs on threads give the same losses."""
    from transformers import AutoModelForCausalLM

    def run():
        config = KTOConfig(max_steps=3, batch_size=4, learning_rate=1e-2, lora_dropout=0.3, warmup_ratio=0.0,
                           sequence_layout="per_sequence", sequence_workers=2)
        return [h["loss"] for h in train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer,
                                             rows, config).history]

    assert run() == run()


@contextmanager
def intra_op_threads(n):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def test_dropout_masks_follow_the_example_not_the_thread(tiny_model, tiny_tokenizer, rows):
    """With per-example seeds, LoRA dropout runs on threads and gives the same bits on any number of them."""
    model = lora_model(tiny_model, dropout=0.3)
    assert any(isinstance(m, SeededDropout) for m in model.modules())
    model.train()
    batch = batch_of(tiny_tokenizer, rows[:7], pairing="next")
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.linspace(-1.0, 1.0, 7)
    seeds = [dropout_seed(0, 5, i) for i in range(7)]
    threads = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda m, args, out: threads.append(threading.current_thread().name))

    def run(workers, seeds=seeds):
        rng = torch.get_rng_state()
        matched, kl = per_sequence_logps(model, batch.matched_pairs, batch.kl_pairs, "cpu", workers=workers,
                                         seeds=seeds)
        grads = torch.autograd.grad((matched * weights).sum(), params)
        assert torch.equal(torch.get_rng_state(), rng)  # the global generator is left alone
        return matched.detach(), kl, grads

    try:
        with intra_op_threads(1):
            one = run(1)  # one thread in all
        threads.clear()
        several = [run(2), run(3), run(7)]
        assert all(name.startswith("prospect-seq") for name in threads)  # the forwards ran on the workers
    finally:
        hook.remove()
    for other in several:
        assert torch.equal(other[0], one[0]) and torch.equal(other[1], one[1])
        assert all(torch.equal(a, b) for a, b in zip(other[2], one[2], strict=True))
    # Dropout is active: other seeds, or no dropout, give other sums.
    assert not torch.equal(run(2, [s + 1 for s in seeds])[0], one[0])
    model.eval()
    with torch.no_grad():
        plain, _ = per_sequence_logps(model, batch.matched_pairs, batch.kl_pairs, "cpu", workers=2, seeds=seeds)
    assert not torch.allclose(plain, one[0], atol=1e-3)


def test_training_with_dropout_is_the_same_on_one_thread_or_several(tiny_dir, tiny_tokenizer, rows):
    from transformers import AutoModelForCausalLM

    def run(workers, dropout=0.3):
        config = KTOConfig(max_steps=4, batch_size=8, grad_accumulation=1, learning_rate=1e-2, lora_dropout=dropout,
                           warmup_ratio=0.0, sequence_layout="per_sequence", sequence_workers=workers)
        result = train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows, config)
        adapter = {n: p.detach().clone() for n, p in result.model.named_parameters() if p.requires_grad}
        return [(h["loss"], h["kl"], h["grad_norm"]) for h in result.history], adapter

    with intra_op_threads(1):
        one = run(1)
    for workers in (2, 3):
        history, adapter = run(workers)
        assert history == one[0]  # exactly
        assert all(torch.equal(adapter[n], one[1][n]) for n in adapter)
    # The dropout is real: without it the same run moves differently (step 1's gradient already differs).
    assert run(2, dropout=0.0)[0][0][2] != one[0][0][2]


def test_seeded_dropout_scales_the_kept_inputs_and_their_gradient():
    dropout = SeededDropout(0.25).train()
    x = torch.randn(64, 32, requires_grad=True)
    with dropout_generator(MaskStream(3)):
        out = dropout(x)
    keep = MaskStream(3).keep(x.shape, 0.25).bool()  # the same stream gives the same mask
    assert 0.6 < keep.float().mean() < 0.9
    assert torch.allclose(out, x.detach() * keep / 0.75)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.allclose(grad, keep / 0.75)
    # Without a generator it is nn.Dropout (the global generator); in eval mode, the identity.
    torch.manual_seed(0)
    plain = dropout(x)
    torch.manual_seed(0)
    assert torch.equal(plain, torch.nn.functional.dropout(x, 0.25, True))
    assert torch.equal(dropout.eval()(x), x)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.3, 0.5])
def test_mask_stream_drops_at_its_rate_and_keeps_the_expectation(p):
    """The drop rate is p to 2**-16 (a 99.99 % binomial interval over 4M draws), streams of other seeds
    differ, and the scale makes E[dropout(x)] = x exactly for the rounded rate."""
    n = 2**22
    keep = MaskStream(11).keep(torch.Size([n]), p)
    assert keep.dtype == torch.uint8 and set(keep.unique().tolist()) == {0, 1}
    q = MaskStream.drop_probability(p)
    assert abs(q - p) <= 2**-17
    dropped = n - int(keep.sum())
    half_width = 3.9 * math.sqrt(n * q * (1 - q))
    assert abs(dropped - n * q) < half_width
    assert not torch.equal(keep[:1000], MaskStream(12).keep(torch.Size([1000]), p))
    dropout = SeededDropout(p).train()
    with dropout_generator(MaskStream(11)):
        out = dropout(torch.ones(n))
    assert torch.equal(out, keep.float() / (1 - q))
    # Nearly 1 still keeps something (the scale stays finite).
    assert MaskStream.drop_probability(0.99999999) < 1

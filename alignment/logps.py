"""Summed completion log-probs: log pi(y|x) = sum_t log p(y_t | x, y_<t).

The vocabulary projection (a 49k-wide matmul for SmolLM2) runs only at the
positions that predict a completion token: the decoder's hidden states are
gathered there first and the LM head is applied to those rows alone, a chunk
at a time, keeping the gradient instead of the logits (``alignment.head``). Models
whose logits are more than ``head(hidden)`` (soft-capping, logit scaling) use
the plain full-logits path.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from alignment.data import Packed, Pair, Sequences
from alignment.head import token_logps as head_logps
from alignment.lora import MaskStream, SeededDropout, dropout_generator

# Config attributes that post-process logits after the LM head.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _split_head(model):
    """(decoder, lm_head) of a causal LM, PEFT-wrapped or not; None if unsafe."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_POSTPROCESSING):
        return None
    get_decoder = getattr(base, "get_decoder", None)
    decoder = get_decoder() if get_decoder is not None else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None or decoder is base:
        return None
    return decoder, head


def _attention_mask(seqs: Sequences):
    # All ones: let attention take its causal fast path.
    return None if bool(seqs.attention_mask.all()) else seqs.attention_mask


def _sum_per_row(token_logps: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    # Scatter back to (B, T-1) and reduce along T: the same summation order as
    # the naive path (a sequential index_add drifts by ~1e-4 on long sums in fp32).
    dense = torch.zeros(scored.shape, dtype=token_logps.dtype, device=token_logps.device)
    dense[scored] = token_logps
    return dense.sum(-1)


def sequence_logps(model, seqs: Sequences) -> torch.Tensor:
    """(B,) summed log-probs of the completion tokens of ``seqs`` under ``model``.

    Gradients flow when called with autograd on; the result is fp32.
    """
    split = _split_head(model)
    if split is None:
        return naive_sequence_logps(model, seqs)
    decoder, head = split
    hidden = decoder(input_ids=seqs.input_ids, attention_mask=_attention_mask(seqs)).last_hidden_state
    # Position t predicts token t+1: score hidden[:, t] where token t+1 is a completion token.
    scored = seqs.completion_mask[:, 1:]
    # (N,), N = completion tokens in the batch; the (N, V) logits exist a chunk at a time (alignment.head)
    token_logps = head_logps(head, hidden[:, :-1][scored], seqs.input_ids[:, 1:][scored])
    return _sum_per_row(token_logps, scored)


def supports_packing(model) -> bool:
    """Whether :func:`packed_logps` can run ``model``: a plain head, and an attention that takes our 4D mask."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    implementation = getattr(getattr(base, "config", None), "_attn_implementation", None)
    return _split_head(model) is not None and implementation in ("sdpa", "eager")


def packed_logps(model, packed: Packed) -> tuple[torch.Tensor, torch.Tensor | None]:
    """((B,), (B,) or None): summed completion log-probs of the matched and of the KL pairs.

    One forward over the packed rows (see :class:`alignment.data.Packed`).
    Gradients flow into both when autograd is on; the trainer detaches the
    KL sums (z0 is a baseline). Results are fp32, summed in the same layout
    as :func:`sequence_logps` sums the padded sequences.
    """
    decoder, head = _split_head(model)
    mask = packed.attention_mask()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base.config._attn_implementation == "eager":  # eager adds the mask to the scores
        dtype = next(head.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    hidden = decoder(input_ids=packed.input_ids, position_ids=packed.position_ids,
                     attention_mask=mask).last_hidden_state
    states = hidden.reshape(-1, hidden.shape[-1])[packed.score_from]
    token_logps = head_logps(head, states, packed.targets)
    b, (width_m, width_k) = packed.size, packed.widths
    grid = torch.zeros(b * (width_m + width_k), dtype=token_logps.dtype, device=token_logps.device)
    grid = grid.index_put((packed.score_slot,), token_logps)
    matched = grid[: b * width_m].view(b, width_m).sum(-1)
    kl = grid[b * width_m:].view(b, width_k).sum(-1) if packed.has_kl else None
    return matched, kl


def supports_per_sequence(model) -> bool:
    """Whether :func:`per_sequence_logps` can run ``model``: a plain head and a decoder with a KV cache."""
    split = _split_head(model)
    return split is not None and getattr(split[0].config, "use_cache", None) is not None


def _completion_logp(head, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed log-prob of ``targets`` (N,) predicted by ``states`` (N, H); a 0-dim fp32 tensor."""
    if targets.numel() == 0:
        return states.new_zeros((), dtype=torch.float32)
    token_logps = head_logps(head, states, targets)
    # fp64 accumulation: a long fp32 sum in another order than the padded path's would drift by ~1e-5.
    return token_logps.double().sum().float()


def _cache_kwarg(decoder) -> str:
    # transformers 5 renamed past_key_values to cache (the old name warns, then goes).
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def _returned_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _score_example(decoder, head, pair: Pair, kl_pair: Pair | None, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(matched, kl) summed log-probs of one example: its own forward, then its KL pair."""
    prompt, completion = pair
    ids = torch.tensor([list(prompt) + list(completion)], dtype=torch.long, device=device)
    p = len(prompt)
    share = kl_pair is not None and list(kl_pair[0]) == list(prompt) and p > 0
    out = decoder(input_ids=ids, use_cache=share)
    hidden = out.last_hidden_state[0]
    # Position t predicts token t+1; the first token of a sequence is never scored.
    first = max(p, 1)
    matched = _completion_logp(head, hidden[first - 1:-1], ids[0, first:])
    if kl_pair is None:
        return matched, None
    with torch.no_grad():
        kl_prompt, kl_completion = kl_pair
        kl_ids = torch.tensor([list(kl_completion)], dtype=torch.long, device=device)
        cache = _returned_cache(out) if share else None
        if cache is not None and hasattr(cache, "crop"):
            cache.crop(p - ids.shape[1])  # negative: drop the own completion (both transformers APIs)
            tail = decoder(input_ids=kl_ids, use_cache=True, **{_cache_kwarg(decoder): cache}).last_hidden_state[0]
            states = torch.cat([hidden[p - 1:p].detach(), tail[:-1]])
            kl = _completion_logp(head, states, kl_ids[0])
        else:  # no cache to share, or the prompt was truncated differently for the partner's completion
            full = torch.tensor([list(kl_prompt) + list(kl_completion)], dtype=torch.long, device=device)
            states = decoder(input_ids=full, use_cache=False).last_hidden_state[0]
            start = max(len(kl_prompt), 1)
            kl = _completion_logp(head, states[start - 1:-1], full[0, start:])
    return matched, kl


def _draws_global_random(model, *, seeded: bool) -> bool:
    """Whether a forward of ``model`` as it is now (train mode, dropout) draws from torch's global
    generator. With ``seeded``, LoRA's :class:`~alignment.lora.SeededDropout` draws from the example's own."""
    if not model.training:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if any(getattr(base.config, name, 0) or 0 for name in ("attention_dropout", "attn_pdrop", "dropout")):
        return True
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 and not (seeded and isinstance(m, SeededDropout))
               for m in model.modules())


def _balanced_chunks(sizes: Sequence[int], workers: int) -> list[list[int]]:
    """Indices split into <= ``workers`` chunks of similar total size (longest first to the lightest)."""
    chunks: list[list[int]] = [[] for _ in range(max(1, min(workers, len(sizes))))]
    load = [0] * len(chunks)
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        k = load.index(min(load))
        chunks[k].append(i)
        load[k] += sizes[i]
    return [sorted(c) for c in chunks if c]


def _in_order(parts: Sequence[tuple[Sequence[int], Sequence[torch.Tensor]]], n: int, device) -> torch.Tensor:
    """(n,) fp32: each chunk's values put back at its example indices."""
    out = torch.empty(n, dtype=torch.float32, device=device)
    for idx, values in parts:
        for i, value in zip(idx, values, strict=True):
            out[i] = value
    return out


class _Inline:
    """The caller's thread, with torch's own intra-op threads (one chunk: nothing to run side by side)."""

    @staticmethod
    def map(fn, items):
        return [fn(item) for item in items]


class _OneThreadEach:
    """Run functions on a few threads, each with one intra-op thread; restores torch's setting after."""

    def __init__(self, workers: int):
        self.workers = workers

    def map(self, fn, items):
        saved = torch.get_num_threads()
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def run(item):
            torch.set_num_threads(1)
            # Grad and inference mode are thread-local: carry the caller's into the worker.
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return fn(item)

        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="prospect-seq") as pool:
                return list(pool.map(run, items))
        finally:
            torch.set_num_threads(saved)


class _ParallelBackward(torch.autograd.Function):
    """Joins per-example graphs into one (B,) tensor whose backward runs on the same threads.

    Each example's backward is its own ``torch.autograd.grad`` into the
    trainable parameters (never ``.grad`` from two threads at once: that
    would race), and the examples' gradients are summed in example order:
    the result is the same bits whichever thread ran which example, and
    however many threads there were.
    """

    @staticmethod
    def forward(ctx, parts, pool, *params):
        ctx.parts, ctx.pool = parts, pool  # [(indices, [0-dim tensor with its graph, ...])]
        ctx.save_for_backward(*params)
        return _in_order([(idx, [v.detach() for v in values]) for idx, values in parts],
                         sum(len(idx) for idx, _ in parts), params[0].device)

    @staticmethod
    def backward(ctx, grad_output):
        inputs = ctx.needs_input_grad[2:]
        targets = [p for p, needed in zip(ctx.saved_tensors, inputs, strict=True) if needed]

        def example_grads(part):
            idx, values = part
            out = []
            for i, value in zip(idx, values, strict=True):
                if not value.requires_grad:  # an example without scored tokens
                    continue
                grads = torch.autograd.grad(value, targets, grad_output[i], allow_unused=True)
                out.append((i, grads))
            return out

        per_example = sorted((g for chunk in ctx.pool.map(example_grads, ctx.parts) for g in chunk),
                             key=lambda item: item[0])
        ctx.parts = None  # free the graphs
        summed = [torch.zeros_like(t) for t in targets]
        for _, grads in per_example:
            for total, g in zip(summed, grads, strict=True):
                if g is not None:
                    total += g
        summed = iter(summed)
        return (None, None, *[next(summed) if needed else None for needed in inputs])


def per_sequence_logps(model, matched: Sequence[Pair], kl: Sequence[Pair] | None, device, *,
                       workers: int = 1, seeds: Sequence[int] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """((B,), (B,) or None): summed completion log-probs, one forward per example.

    No padding and no attention mask (attention takes its causal fast path),
    so the work is the real tokens and nothing else: on a CPU, where time
    follows the token count, this beats a padded batch. The KL pair of
    example i (its prompt, the partner's completion) continues from the KV
    cache of i's own forward cut back to the prompt, so the prompt is
    computed once for both pairs. The KL forward never carries a gradient
    (z0 is a baseline); the matched sums do when autograd is on.

    ``workers`` > 1 scores the examples on that many threads with one
    intra-op thread each (small matmuls scale better across examples than
    inside one), and runs the backward of the matched sums on them too.
    ``seeds`` (one per example) gives each example its own LoRA dropout
    generator, so a training forward with dropout runs on threads too and
    gives the same result with any number of workers.
    """
    decoder, head = _split_head(model)
    kl_of = (lambda i: kl[i]) if kl is not None else (lambda i: None)

    def one(i):
        if seeds is None:
            return _score_example(decoder, head, matched[i], kl_of(i), device)
        with dropout_generator(MaskStream(seeds[i])):
            return _score_example(decoder, head, matched[i], kl_of(i), device)

    def score(chunk):
        return [one(i) for i in chunk]

    chunks = _balanced_chunks([len(p) + len(c) for p, c in matched], workers)
    pool = _OneThreadEach(len(chunks)) if len(chunks) > 1 else _Inline()
    # Dropout drawing from the global generator would draw in thread order, and a run would no longer
    # repeat (nor resume) exactly: such forwards stay serial. The backward draws nothing.
    serial = len(chunks) == 1 or _draws_global_random(model, seeded=seeds is not None)
    results = [score(chunk) for chunk in chunks] if serial else pool.map(score, chunks)
    parts = [(chunk, [m for m, _ in scored]) for chunk, scored in zip(chunks, results, strict=True)]
    kl_out = None
    if kl is not None:
        kl_out = _in_order([(chunk, [k for _, k in scored]) for chunk, scored in zip(chunks, results, strict=True)],
                           len(matched), device)
    if not any(v.requires_grad for _, values in parts for v in values):
        return _in_order(parts, len(matched), device), kl_out
    params = [p for p in model.parameters() if p.requires_grad]
    return _ParallelBackward.apply(parts, pool, *params), kl_out


def naive_sequence_logps(model, seqs: Sequences) -> torch.Tensor:
    """Reference implementation: log_softmax over the full logits, then gather."""
    logits = model(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask).logits[:, :-1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(-1, seqs.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (logps * seqs.completion_mask[:, 1:]).sum(-1)

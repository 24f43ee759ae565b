"""Log-probs of the scored tokens through the LM head, a chunk of tokens at a time.

The plain way, ``log_softmax(head(states))`` under autograd, keeps an (N, V)
fp32 logits tensor alive from the forward to the backward: for 4,000
completion tokens and a 128k vocabulary that is 2 GB, more than a 1B model's
LoRA activations. The head is frozen (LoRA never targets it), so the only
gradient needed is the one with respect to ``states``, and it is linear in the
upstream gradient of each token's log-prob:

    d logp_t / d states_t = W[y_t] - softmax(W states_t) @ W     (W: (V, H))

:class:`CompletionLogps` computes that (N, H) gradient in the forward pass,
chunk by chunk, and keeps it instead of the logits; the backward multiplies it
by the upstream gradient. Same FLOPs as autograd's backward, no recompute, and
peak memory of one (chunk, V) block (the same idea as Liger's fused linear
cross-entropy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_TOKENS = 1024  # rows of the (chunk, V) logits block: 200 MB in fp32 at V = 49k


def _chunked(states: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, *,
             want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """((N,) fp32 log-probs, (N, H) d logp / d states or None), one (chunk, V) logits block at a time.

    states (N, H) in the model's dtype, weight (V, H) in the same dtype, targets (N,) long.
    """
    out = torch.empty(states.shape[0], dtype=torch.float32, device=states.device)
    grad_states = torch.empty_like(states) if want_grad else None
    for start in range(0, states.shape[0], chunk):
        rows = slice(start, start + chunk)
        logits = (states[rows] @ weight.T).float()  # (c, V)
        logps = torch.log_softmax(logits, dim=-1)
        out[rows] = logps.gather(-1, targets[rows, None]).squeeze(-1)
        if want_grad:
            # d logp / d logits = onehot(y) - softmax; then back through the head.
            probs = logps.exp_().neg_()
            probs.scatter_add_(-1, targets[rows, None], torch.ones_like(out[rows, None]))
            grad_states[rows] = (probs.to(weight.dtype) @ weight).to(states.dtype)
    return out, grad_states


class CompletionLogps(torch.autograd.Function):
    """(N,) fp32 log p(targets | states) through a bias-free, frozen ``weight`` (V, H)."""

    @staticmethod
    def forward(ctx, states: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int):
        out, grad_states = _chunked(states, weight, targets, chunk, want_grad=ctx.needs_input_grad[0])
        ctx.save_for_backward(grad_states)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (grad_states,) = ctx.saved_tensors
        grad = grad_states * grad_out[:, None].to(grad_states.dtype) if grad_states is not None else None
        return grad, None, None, None


def token_logps(head, states: torch.Tensor, targets: torch.Tensor, *, chunk: int = CHUNK_TOKENS) -> torch.Tensor:
    """(N,) fp32 log-probs of ``targets`` predicted by ``states`` (N, H) through ``head``.

    The chunked function above for a plain frozen ``nn.Linear`` head (the case of every decoder we
    train); anything else (a bias, a trainable head, a wrapped module) through autograd as it is.
    """
    weight = getattr(head, "weight", None)
    plain = (type(head) is torch.nn.Linear and head.bias is None and weight is not None
             and not weight.requires_grad)
    if not plain:
        return -F.cross_entropy(head(states).float(), targets, reduction="none")
    if not torch.is_grad_enabled() or not states.requires_grad:
        with torch.no_grad():
            return _chunked(states, weight, targets, chunk, want_grad=False)[0]
    return CompletionLogps.apply(states, weight, targets, chunk)

"""evaluate_kto: how an adapter does on held-out feedback.

Rewards and z0 are computed per microbatch exactly as in training, with the
adapter (policy) and without it (reference), no dropout, no autograd.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch

from alignment.config import KTOConfig
from alignment.data import adds_bos, plan_batches, render_prompt, tokenize_rows
from alignment.loss import kto_loss
from alignment.train import Collator, pair_logps, reference_logps, summarize
from alignment.weights import class_weights

log = logging.getLogger(__name__)


def evaluate_kto(
    model,
    tokenizer,
    rows: Sequence[Mapping],
    config: KTOConfig,
    *,
    desirable_weight: float | None = None,
    undesirable_weight: float | None = None,
    length_sample: int = 0,
    max_new_tokens: int = 64,
    return_examples: bool = False,
) -> dict:
    """Metrics of the PeftModel ``model`` on held-out ``rows``.

    Returns ``n``, ``loss``, ``kl`` (mean z0 over microbatches), mean reward
    and log-prob per class, ``reward_margin``, and reward accuracy: a
    desirable example counts when r - z0 > 0, an undesirable one when
    r - z0 < 0 (``accuracy``, and per class). Class weights for the loss are
    the given ones, else the config's, else from the rows' counts (single
    class allowed here: evaluation may see one class).

    With ``length_sample`` > 0, the first that many prompts are answered
    greedily with the adapter off and on (``length_before`` /
    ``length_after``, mean new tokens): length drift, which the KTO paper
    warns about when beta is badly tuned.

    With ``return_examples``, ``examples`` holds per-row lists in the order of
    ``rows``: ``label``, ``loss`` (weighted, as in the mean) and ``reward``
    (beta * (policy - reference) log-prob): what the publish gate resamples.
    """
    if not hasattr(model, "disable_adapter"):
        raise TypeError("evaluate_kto needs the PeftModel returned by train_kto (or PeftModel.from_pretrained)")
    device = next(model.parameters()).device
    examples = tokenize_rows(rows, tokenizer)
    if len(examples) < 2 and config.kl_mode == "estimate":
        raise ValueError("evaluation needs at least 2 rows (the KL estimate pairs examples)")
    n_desirable = sum(e.label for e in examples)
    if desirable_weight is None:
        desirable_weight, undesirable_weight = config.desirable_weight, config.undesirable_weight
    weights = class_weights(n_desirable, len(examples) - n_desirable, desirable_weight=desirable_weight,
                            undesirable_weight=undesirable_weight, allow_single_class=True,
                            max_class_weight=config.max_class_weight)
    collate_fn = Collator(examples, tokenizer, config, device, model)
    batches = plan_batches([e.num_tokens for e in examples], config.batch_size, seed=config.seed,
                           group_by_length=config.group_by_length, shuffle=False)

    was_training = model.training
    model.eval()
    losses, rewards, logps, labels, kls, margins, order = [], [], [], [], [], [], []
    try:
        for indices in batches:
            batch = collate_fn(indices)
            ref, ref_kl = reference_logps(model, batch)
            with torch.inference_mode():
                policy, policy_kl = pair_logps(model, batch)
            out = kto_loss(policy, ref, policy_kl, ref_kl, batch.labels, beta=config.beta,
                           desirable_weight=weights.desirable, undesirable_weight=weights.undesirable)
            # Per-example loss weight: a microbatch's mean counts by its size.
            losses.extend(out.losses)
            rewards.append(out.rewards)
            logps.append(policy)
            labels.append(batch.labels)
            kls.append(out.kl)
            margins.append(out.rewards - config.beta * out.kl)  # beta * (r - z0)
            order.extend(indices)
        metrics = summarize([torch.stack(losses).mean()], rewards, logps, labels, kls)
        margin, label = torch.cat(margins), torch.cat(labels)
        correct = torch.where(label, margin > 0, margin < 0)
        metrics.update({
            "n": len(examples),
            "n_desirable": n_desirable,
            "n_undesirable": len(examples) - n_desirable,
            "accuracy": float(correct.float().mean()),
            "accuracy_desirable": float(correct[label].float().mean()) if bool(label.any()) else None,
            "accuracy_undesirable": float(correct[~label].float().mean()) if bool((~label).any()) else None,
        })
        if return_examples:
            metrics["examples"] = _in_row_order(order, label, torch.stack(losses), torch.cat(rewards))
        if length_sample > 0:
            metrics.update(length_drift(model, tokenizer, rows[:length_sample], max_new_tokens=max_new_tokens))
    finally:
        model.train(was_training)
    return metrics


def _in_row_order(order: list[int], labels, losses, rewards) -> dict[str, list]:
    position = [0] * len(order)
    for i, row in enumerate(order):
        position[row] = i
    return {"label": [bool(labels[i]) for i in position], "loss": [float(losses[i]) for i in position],
            "reward": [float(rewards[i]) for i in position]}


def _mean_new_tokens(model, tokenizer, prompts: list[str], max_new_tokens: int) -> float:
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    lengths = []
    for text in prompts:  # one at a time: no padding side to get wrong
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos, pad_token_id=eos)
        new = out[0, ids.shape[1]:].tolist()
        lengths.append(new.index(eos) + 1 if eos in new else len(new))
    return sum(lengths) / len(lengths)


def length_drift(model, tokenizer, rows: Sequence[Mapping], *, max_new_tokens: int = 64) -> dict:
    """Mean greedy answer length (new tokens) without and with the adapter."""
    prompts = []
    for row in rows:
        prompt = row.get("prompt", row.get("messages"))
        text = render_prompt(prompt, tokenizer)
        # The same single BOS as in training.
        if adds_bos(tokenizer) and not text.startswith(tokenizer.bos_token):
            text = tokenizer.bos_token + text
        prompts.append(text)
    with torch.inference_mode():
        with model.disable_adapter():
            before = _mean_new_tokens(model, tokenizer, prompts, max_new_tokens)
        after = _mean_new_tokens(model, tokenizer, prompts, max_new_tokens)
    return {"length_before": before, "length_after": after,
            "length_ratio": after / before if before else None}

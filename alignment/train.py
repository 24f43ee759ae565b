"""train_kto: rows in, a KTO-aligned LoRA adapter and its metrics out.

The loop reads top to bottom: tokenise, plan microbatches, attach LoRA,
precompute the reference, then per optimiser step: poll for cancellation,
forward/backward each microbatch, clip, step, report, checkpoint.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignment.checkpoints import (  # noqa: F401 - CHECKPOINT_FILE, CheckpointMismatch: part of this API
    CHECKPOINT_FILE,
    CheckpointMismatch,
    _fingerprint,
    _runtime,
    load_checkpoint,
    save_checkpoint,
)
from alignment.config import KTOConfig
from alignment.data import Batch, Example, collate, pack, pad_token_id, plan_batches, tokenize_rows
from alignment.distributed import World, check_shards, shards
from alignment.logps import (
    packed_logps,
    per_sequence_logps,
    sequence_logps,
    supports_packing,
    supports_per_sequence,
)
from alignment.lora import attach_lora, dropout_seed
from alignment.loss import kto_loss
from alignment.quantize import quantize_base
from alignment.weights import ClassWeights, class_weights

log = logging.getLogger(__name__)

class TrainingCancelled(Exception):
    """Raised by train_kto when ``should_stop()`` returned True: there is no
    result, and nothing may be published. ``step`` optimiser steps were done."""

    def __init__(self, step: int):
        super().__init__(f"training cancelled after {step} step(s)")
        self.step = step


@dataclass
class TrainResult:
    model: object  # the PeftModel; ``model.save_pretrained(dir)`` writes the adapter
    history: list[dict]  # one metrics dict per optimiser step
    metrics: dict  # final figures: the last step's, plus totals
    weights: ClassWeights  # lambda_D, lambda_U used, and why
    config: KTOConfig
    target_modules: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- runtime

def resolve_device(config: KTOConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def resolve_dtype(config: KTOConfig, device: torch.device) -> torch.dtype:
    if config.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, config.dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- data plan

class Plan:
    """Which microbatches make up which optimiser step.

    The composition of microbatches is fixed for the job (so each example
    has one KL partner and the reference log-probs are computed once); their
    order is reshuffled every epoch. Microbatch k of the job is a pure
    function of k, so a resumed run sees exactly the same data.
    """

    def __init__(self, examples: Sequence[Example], config: KTOConfig):
        if len(examples) < 2 and config.kl_mode == "estimate":
            raise ValueError("KTO needs at least 2 rows (the KL estimate pairs examples within a microbatch)")
        # On N processes a microbatch is the global one, N shards of batch_size (alignment.distributed).
        self.processes = config.processes
        self.batches = plan_batches([e.num_tokens for e in examples], config.batch_size * config.processes,
                                    seed=config.seed, group_by_length=config.group_by_length,
                                    shuffle=config.shuffle,
                                    labels=[e.label for e in examples] if config.stratify else None,
                                    min_size=2 * config.processes)
        if config.kl_mode == "estimate":
            check_shards(self.batches, config.processes, batch_size=config.batch_size)
        self.seed = config.seed
        self.shuffle = config.shuffle
        self.grad_accumulation = config.grad_accumulation
        n = len(self.batches)
        if config.max_steps is not None:
            self.total_steps = config.max_steps
            self.total_microbatches = config.max_steps * config.grad_accumulation
        else:
            self.total_microbatches = config.num_epochs * n
            self.total_steps = math.ceil(self.total_microbatches / config.grad_accumulation)
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.batches)))
            if self.shuffle:
                random.Random(f"{self.seed}:{epoch}").shuffle(order)
            self._orders[epoch] = order
        return self._orders[epoch]

    def microbatch(self, k: int) -> list[int]:
        epoch, position = divmod(k, len(self.batches))
        return self.batches[self._order(epoch)[position]]

    def step_microbatches(self, step: int) -> range:
        start = step * self.grad_accumulation
        return range(start, min(start + self.grad_accumulation, self.total_microbatches))


# ---------------------------------------------------------------- forward helpers

def use_per_sequence(config: KTOConfig, device: torch.device, model) -> bool:
    """The layout the config asks for, where the model allows it (else batched)."""
    wanted = config.sequence_layout == "per_sequence" or (
        config.sequence_layout == "auto" and device.type == "cpu" and not config.gradient_checkpointing)
    return wanted and model is not None and supports_per_sequence(model)


class Collator:
    """Microbatches on the device, in the layout the config and the model allow:
    per sequence, or padded (with a packed reference pass)."""

    def __init__(self, examples: Sequence[Example], tokenizer, config: KTOConfig, device: torch.device,
                 model=None):
        self.examples = examples
        self.pad_id = pad_token_id(tokenizer)
        self.config = config
        self.device = device
        self.per_sequence = use_per_sequence(config, device, model)
        # Threads only help on a CPU; a GPU runs one kernel at a time anyway.
        self.workers = (config.sequence_workers or torch.get_num_threads()) if device.type == "cpu" else 1
        self.packed = not self.per_sequence and config.packing and model is not None and supports_packing(model)

    def __call__(self, indices: Sequence[int], *, microbatch: int | None = None) -> Batch:
        """Microbatch ``indices``; ``microbatch`` (its number in the job) seeds each example's LoRA dropout."""
        c = self.config
        batch = collate(self.examples, indices, max_length=c.max_length, prompt_budget=c.prompt_budget,
                        pad_id=self.pad_id, pairing=c.kl_pairing, with_kl=c.kl_mode == "estimate",
                        packed=self.packed)
        batch.matched = batch.matched.to(self.device)
        batch.kl = batch.kl.to(self.device) if batch.kl is not None else None
        batch.labels = batch.labels.to(self.device)
        batch.packed = batch.packed.to(self.device) if batch.packed is not None else None
        batch.per_sequence = self.per_sequence
        batch.workers = self.workers
        batch.pad_id = self.pad_id
        if microbatch is not None:
            batch.dropout_seeds = [dropout_seed(c.seed, microbatch, i) for i in batch.indices]
        return batch


def pair_logps(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(matched, kl) summed log-probs under ``model`` as it is (autograd as the caller set it).

    Per sequence: one unpadded forward per example, the KL pair continuing
    from its cached prompt (see :func:`alignment.logps.per_sequence_logps`).
    Batched and packed: without autograd (the reference, evaluation) one packed
    forward per microbatch computes each prompt once for both of its pairs.
    With autograd (the policy) the matched pairs are packed alone (a shared
    forward would also backpropagate through every KL branch), and the KL
    pairs in a second packed forward. Without packing, the padded sequences.
    The KL sums never carry a gradient (z0 is a baseline), so their forward
    runs without a graph.
    """
    if batch.per_sequence:
        return per_sequence_logps(model, batch.matched_pairs, batch.kl_pairs, batch.labels.device,
                                  workers=batch.workers, seeds=batch.dropout_seeds)
    if batch.packed is not None and not torch.is_grad_enabled():
        return packed_logps(model, batch.packed)
    if batch.packed is not None:
        device = batch.labels.device
        matched, _ = packed_logps(model, pack(batch.matched_pairs, None, batch.pad_id, rows_of=2).to(device))
        kl = None
        if batch.kl_pairs is not None:
            with torch.no_grad():
                kl, _ = packed_logps(model, pack(batch.kl_pairs, None, batch.pad_id, rows_of=2).to(device))
        return matched, kl
    matched = sequence_logps(model, batch.matched)
    with torch.no_grad():
        kl = sequence_logps(model, batch.kl) if batch.kl is not None else None
    return matched, kl


def reference_logps(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(matched, kl) summed log-probs under pi_ref: the adapter disabled, eval mode, no autograd."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), model.disable_adapter():
            matched, kl = pair_logps(model, batch)
    finally:
        model.train(was_training)
    # Plain tensors (not inference tensors): they enter the loss's autograd graph.
    return matched.clone(), kl.clone() if kl is not None else None


class ReferenceCache:
    """pi_ref log-probs of every example's matched and KL pair, computed once."""

    def __init__(self, n: int):
        self.matched = torch.full((n,), float("nan"))
        self.kl = torch.full((n,), float("nan"))

    def fill(self, model, collator: Collator, batches: Sequence[Sequence[int]],
             should_stop: Callable[[], bool] | None,
             on_rows: Callable[[int, int], None] | None = None, world: World | None = None) -> None:
        """``on_rows(done, total)`` after each microbatch (rows whose reference log-probs are known).
        On several processes each fills the shards it owns (``batches``), then the caches are summed."""
        done, total = 0, sum(len(b) for b in batches)
        for indices in batches:
            if should_stop is not None and should_stop():
                raise TrainingCancelled(0)
            batch = collator(indices)
            matched, kl = reference_logps(model, batch)
            idx = torch.tensor(batch.indices)
            self.matched[idx] = matched.float().cpu()
            if kl is not None:
                self.kl[idx] = kl.float().cpu()
            done += len(indices)
            if on_rows is not None:
                on_rows(done, total)
        if world is not None and world.size > 1:  # every example is in exactly one process's shards
            self.matched = world.all_reduce_(self.matched.nan_to_num(0.0))
            self.kl = world.all_reduce_(self.kl.nan_to_num(0.0))

    def get(self, batch: Batch, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = torch.tensor(batch.indices)
        kl = self.kl[idx].to(device) if batch.kl is not None else None
        return self.matched[idx].to(device), kl

    def state_dict(self) -> dict:
        return {"matched": self.matched, "kl": self.kl}

    def load_state_dict(self, state: Mapping) -> None:
        self.matched, self.kl = state["matched"].clone(), state["kl"].clone()


def lr_lambda(config: KTOConfig, total_steps: int) -> Callable[[int], float]:
    """Linear warmup (never a zero-lr step), then cosine / linear decay or constant."""
    warmup = math.ceil(config.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if config.lr_schedule == "linear":
            return 1 - progress
        return 1.0

    return factor


def _class_means(values: torch.Tensor, labels: torch.Tensor) -> tuple[float | None, float | None]:
    def mean(mask):
        return float(values[mask].mean()) if bool(mask.any()) else None
    return mean(labels), mean(~labels)


def summarize(losses, rewards, logps, labels, kls, kl_estimates=None) -> dict:
    """Per-class means of one step's (or one evaluation's) examples. ``kl`` is z0 as the loss used it
    (clamped at 0); ``kl_estimate``, when given, the unclamped estimate."""
    rewards, logps, labels = torch.cat(rewards), torch.cat(logps), torch.cat(labels)
    reward_d, reward_u = _class_means(rewards, labels)
    logps_d, logps_u = _class_means(logps, labels)
    summary = {
        "loss": float(torch.stack(losses).mean()),
        "kl": float(torch.stack(kls).mean()),
        "reward_desirable": reward_d,
        "reward_undesirable": reward_u,
        "reward_margin": reward_d - reward_u if reward_d is not None and reward_u is not None else None,
        "logps_desirable": logps_d,
        "logps_undesirable": logps_u,
    }
    if kl_estimates is not None:
        summary["kl_estimate"] = float(torch.stack(kl_estimates).mean())
    return summary


def sharded_microbatch(model, collate_fn: Collator, reference: ReferenceCache | None, indices: Sequence[int],
                       k: int, *, scale: float, config: KTOConfig, weights: ClassWeights, world: World) -> tuple:
    """Forward and backward of this process's shards of global microbatch ``k`` (see
    ``alignment.distributed`` for the semantics); returns the figures of the whole microbatch, as
    (loss, rewards, logps, labels, z0, kl estimate, tokens), identical in every process.

    Each process writes its values into its examples' slots of zero tensors, which are then summed
    over processes: adding zeros is exact, so the figures (and z0) do not depend on who computed what.
    """
    parts, m = shards(indices, config.processes), len(indices)
    starts = [sum(len(p) for p in parts[:s]) for s in range(len(parts))]
    device = collate_fn.device
    kl_sums = torch.zeros(len(parts), dtype=torch.float64, device=device)
    local = []
    for s, part in enumerate(parts):
        if not world.mine(s):
            continue
        batch = collate_fn(part, microbatch=k)
        if not batch.per_sequence:  # padded forwards draw dropout from torch's generator: seed it per shard
            torch.manual_seed(dropout_seed(config.seed, k, -1 - s))
        ref, ref_kl = reference.get(batch, device) if reference is not None else reference_logps(model, batch)
        policy, policy_kl = pair_logps(model, batch)
        if policy_kl is not None:
            kl_sums[s] = (policy_kl.detach() - ref_kl.detach()).double().sum()
        local.append((s, batch, policy, ref, policy_kl, ref_kl))
    with_kl = config.kl_mode == "estimate"
    estimate = world.all_reduce_(kl_sums).sum() / m if with_kl else None
    # rows: loss, reward, logp of each example of the microbatch; plus the tokens of each shard
    figures = torch.zeros(3, m, dtype=torch.float32, device=device)
    tokens = torch.zeros(len(parts), dtype=torch.float64, device=device)
    for s, batch, policy, ref, policy_kl, ref_kl in local:
        out = kto_loss(policy, ref, policy_kl, ref_kl, batch.labels, beta=config.beta,
                       desirable_weight=weights.desirable, undesirable_weight=weights.undesirable,
                       kl_estimate=estimate)
        (out.losses.sum() * (scale / m)).backward()
        span = slice(starts[s], starts[s] + len(batch.indices))
        figures[0, span], figures[1, span], figures[2, span] = out.losses.detach(), out.rewards, policy.detach()
        tokens[s] = batch.num_tokens
    world.all_reduce_(figures)
    world.all_reduce_(tokens)
    labels = torch.tensor([collate_fn.examples[i].label for i in indices], device=device)
    if estimate is None:
        z0 = est = torch.zeros((), device=device)
    else:
        est = estimate.float()
        z0 = est.clamp(min=0)
    return figures[0].mean(), figures[1], figures[2], labels, z0, est, int(tokens.sum())


# ---------------------------------------------------------------- the trainer

def train_kto(
    model,
    tokenizer,
    rows: Sequence[Mapping],
    config: KTOConfig,
    *,
    on_progress: Callable[[int, int, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    on_phase: Callable[[str], None] | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    world: World | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``rows`` with the KTO loss.

    ``model`` is a causal LM: a plain base model gets a fresh LoRA adapter
    (PEFT injects it in place; the base weights stay frozen and unchanged),
    a PeftModel has its active adapter trained further. The reference
    pi_ref is the same network with the adapter disabled.

    ``on_progress(step, total_steps, metrics)`` is called after every
    optimiser step; ``on_phase("reference pass 120/240")`` while the reference
    log-probs are precomputed (rows done/total). ``should_stop()`` is polled before every step (and while
    the reference is precomputed); when it returns True, :class:`TrainingCancelled`
    is raised: no result exists and nothing may be published.

    With ``checkpoint_dir`` and ``config.checkpoint_every`` > 0 a checkpoint
    (adapter, optimizer, scheduler, step, RNG state, history) is written
    every N steps; ``resume=True`` continues from it (a fresh start when there
    is none), giving the same losses as an uninterrupted run. ``on_checkpoint(file)`` is called
    after each one is written (the worker copies it to the artifact store, for another host).

    ``config.processes`` > 1: data parallel (``alignment.distributed``); ``world`` says which process this
    is (default: one process computing every shard). Only the main process writes checkpoints.
    """
    world = world or World()
    device = resolve_device(config)
    dtype = resolve_dtype(config, device)
    seed_everything(config.seed)

    examples = tokenize_rows(rows, tokenizer)
    n_desirable = sum(e.label for e in examples)
    weights = class_weights(n_desirable, len(examples) - n_desirable,
                            desirable_weight=config.desirable_weight, undesirable_weight=config.undesirable_weight,
                            allow_single_class=config.allow_single_class,
                            max_class_weight=config.max_class_weight)
    plan = Plan(examples, config)
    log.info("KTO: %d rows (%d desirable), %d microbatches, %d steps; weights %.3f/%.3f (%s)",
             len(examples), n_desirable, len(plan.batches), plan.total_steps,
             weights.desirable, weights.undesirable, weights.reason)

    # Cast the base before attaching LoRA: PEFT then keeps the adapter in fp32.
    if config.quantization == "nf4":
        model = quantize_base(model.to(dtype=dtype), compute_dtype=dtype, device=device)
    model = attach_lora(model.to(device=device, dtype=dtype), config).to(device)
    if config.gradient_checkpointing:
        # Non-reentrant: it restores the RNG state in the recompute, so dropout draws the same masks.
        # transformers 5.24 renamed it activation_checkpointing_enable (the old name warns).
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    collate_fn = Collator(examples, tokenizer, config, device, model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, plan.total_steps))

    reference = ReferenceCache(len(examples)) if config.precompute_reference else None
    runtime = _runtime(device, dtype)
    fingerprint = _fingerprint(examples, config, runtime)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start_step, history = 0, []
    if resume and ckpt is not None and (ckpt / CHECKPOINT_FILE).is_file():
        start_step, history = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler,
                                              reference=reference, fingerprint=fingerprint, runtime=runtime)
    reference_s = 0.0
    if reference is not None and bool(reference.matched.isnan().any()):  # not restored from a checkpoint
        started = time.perf_counter()
        on_rows = (lambda done, total: on_phase(f"reference pass {done}/{total}")) if on_phase else None
        own = [part for b in plan.batches for s, part in enumerate(shards(b, config.processes)) if world.mine(s)]
        reference.fill(model, collate_fn, own, should_stop, on_rows, world)
        reference_s = time.perf_counter() - started
        log.info("reference log-probs of %d examples in %.1f s", len(examples), reference_s)

    run_started = time.perf_counter()
    for step in range(start_step, plan.total_steps):
        if should_stop is not None and should_stop():
            raise TrainingCancelled(step)
        step_started = time.perf_counter()
        micro = plan.step_microbatches(step)
        losses, rewards, logps, labels, kls, kl_estimates, tokens = [], [], [], [], [], [], 0
        for k in micro:
            if config.processes > 1:
                figures = sharded_microbatch(model, collate_fn, reference, plan.microbatch(k), k,
                                             scale=1 / len(micro), config=config, weights=weights, world=world)
                for out, figure in zip((losses, rewards, logps, labels, kls, kl_estimates), figures[:6],
                                       strict=True):
                    out.append(figure)
                tokens += figures[6]
                continue
            batch = collate_fn(plan.microbatch(k), microbatch=k)
            if reference is not None:
                ref, ref_kl = reference.get(batch, device)
            else:
                ref, ref_kl = reference_logps(model, batch)
            policy, policy_kl = pair_logps(model, batch)
            out = kto_loss(policy, ref, policy_kl, ref_kl, batch.labels, beta=config.beta,
                           desirable_weight=weights.desirable, undesirable_weight=weights.undesirable)
            (out.loss / len(micro)).backward()
            losses.append(out.loss.detach())
            rewards.append(out.rewards)
            logps.append(policy.detach())
            labels.append(batch.labels)
            kls.append(out.kl)
            kl_estimates.append(out.kl_estimate)
            tokens += batch.num_tokens
        world.all_reduce_grads_(params)  # the global microbatch's gradient, in every process

        clip = config.max_grad_norm if config.max_grad_norm is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        elapsed = time.perf_counter() - step_started
        metrics = {
            "step": step + 1,
            "epoch": (micro.stop) / len(plan.batches),
            **summarize(losses, rewards, logps, labels, kls, kl_estimates),
            "grad_norm": float(grad_norm),
            "learning_rate": lr,
            "tokens": tokens,
            "tokens_per_s": tokens / elapsed if elapsed > 0 else None,
        }
        history.append(metrics)
        if on_progress is not None:
            on_progress(step + 1, plan.total_steps, metrics)
        if ckpt is not None and world.is_main and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            save_checkpoint(ckpt, step=step + 1, model=model, optimizer=optimizer, scheduler=scheduler,
                            history=history, reference=reference, fingerprint=fingerprint, runtime=runtime)
            if on_checkpoint is not None:
                on_checkpoint(ckpt / CHECKPOINT_FILE)

    model.eval()
    runtime = time.perf_counter() - run_started
    total_tokens = sum(h["tokens"] for h in history)
    final = dict(history[-1]) if history else {}
    final.update({
        "steps": plan.total_steps,
        "train_loss_mean": sum(h["loss"] for h in history) / len(history) if history else None,
        "total_tokens": total_tokens,
        "runtime_s": runtime,
        "reference_s": reference_s,  # the precomputed reference pass, before the steps
        # From the steps' own timings: right across a resume too.
        "train_tokens_per_s": total_tokens / sum(h["tokens"] / h["tokens_per_s"] for h in history)
        if history and all(h["tokens_per_s"] for h in history) else None,
        # How the work was laid out (auto resolves by device): what a throughput figure depends on.
        "sequence_layout": "per_sequence" if collate_fn.per_sequence else "batched",
        "sequence_workers": collate_fn.workers if collate_fn.per_sequence else 1,
        "processes": config.processes,
    })
    targets = sorted(next(iter(model.peft_config.values())).target_modules or [])
    return TrainResult(model=model, history=history, metrics=final, weights=weights, config=config,
                       target_modules=targets)

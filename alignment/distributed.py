"""Data parallelism for train_kto: N processes, one KTO batch.

``KTOConfig.processes`` = N makes a global microbatch of N x ``batch_size`` examples (planned exactly as
one process would plan a microbatch of that size), cut into N contiguous shards, one per process.

KTO semantics under this split (DESIGN.md's loss, arXiv 2402.01306 eq. 8):

- KL partners: each example's KL partner comes from its own shard (``alignment.data.kl_partners`` on the
  shard), so a process never needs another's sequences; hence >= 2 examples per shard.
- z0: the mean of (kl_policy - kl_reference) over the *whole* global microbatch, its per-shard sums
  all-reduced, then clamped at 0: the same batch statistic one process computes on N x batch_size.
- loss: sum over the shard's examples / the global microbatch size, backpropagated per process; the
  LoRA gradients are then all-reduced (summed): the gradient of the global microbatch's mean loss.
  Clipping and the AdamW step then run on identical gradients in every process, so the adapters stay
  identical without broadcasting weights.

With N = 1 nothing changes. ``World`` of size 1 with N > 1 computes every shard in the one process:
the same numbers (and KL pairs) as N processes, used by the tests as the reference.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch


class ShardError(ValueError):
    """Too few examples for the shards; the message says how to fix it."""


def shard_sizes(m: int, n: int) -> list[int]:
    """Sizes of n contiguous shards of a microbatch of m (as even as possible, larger first)."""
    return [m // n + (1 if r < m % n else 0) for r in range(n)]


def shards(indices: Sequence[int], n: int) -> list[list[int]]:
    out, start = [], 0
    for size in shard_sizes(len(indices), n):
        out.append(list(indices[start:start + size]))
        start += size
    return out


def check_shards(batches: Sequence[Sequence[int]], n: int, *, batch_size: int) -> None:
    """Every shard of every planned microbatch must hold >= 2 examples (a KL partner of its own)."""
    if n == 1:
        return
    smallest = min(len(b) for b in batches)
    if smallest < 2 * n:
        rows = sum(len(b) for b in batches)
        raise ShardError(
            f"processes={n} splits each microbatch into {n} shards, and every shard needs >= 2 examples "
            f"(KL partners come from the process's own shard), but a microbatch of {smallest} exists "
            f"({rows} rows, batch_size {batch_size} per process): use processes <= {max(1, smallest // 2)}, "
            "or train on more rows"
        )


class World:
    """Rank, size and the collectives train_kto needs; size 1 is a no-op (no torch.distributed)."""

    def __init__(self, rank: int = 0, size: int = 1):
        self.rank, self.size = rank, size

    @classmethod
    def from_env(cls) -> World:
        """Under torchrun: join the process group (NCCL on GPUs, gloo on CPU)."""
        import torch.distributed as dist

        if "RANK" not in os.environ:
            return cls()
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, shard: int) -> bool:
        """Whether this process computes shard ``shard`` of a microbatch."""
        return shard % self.size == self.rank

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over processes, in place. Callers put each process's part in its own slots (zeros
        elsewhere): a sum with zeros is exact, so the result does not depend on the reduction order."""
        if self.size > 1:
            import torch.distributed as dist

            device = tensor.device
            work = tensor.cuda() if dist.get_backend() == "nccl" and device.type != "cuda" else tensor
            dist.all_reduce(work)
            if work is not tensor:
                tensor.copy_(work.to(device))
        return tensor

    def all_reduce_grads_(self, params: Sequence[torch.Tensor]) -> None:
        """Sum the gradients over processes (one flat buffer: one collective)."""
        if self.size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.all_reduce_(torch.cat([g.reshape(-1) for g in grads]))
        offset = 0
        for p, g in zip(params, grads, strict=True):
            p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

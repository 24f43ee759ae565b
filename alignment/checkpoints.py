"""Training checkpoints: adapter, optimizer, scheduler, step, RNG state, reference log-probs and
history, written atomically; refused when written for other rows, settings, device type or dtype."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import secrets
from collections.abc import Sequence
from pathlib import Path

import torch

from alignment.config import KTOConfig
from alignment.data import Example

log = logging.getLogger("alignment.train")

CHECKPOINT_FILE = "checkpoint.pt"


class CheckpointMismatch(ValueError):
    """The checkpoint was written for other rows, hyper-parameters, device type or dtype: it cannot
    continue this run (the caller may delete it and start afresh)."""


def _runtime(device: torch.device, dtype: torch.dtype) -> dict:
    # The device type and dtype a run computes in: a bf16 GPU checkpoint (adapter moments, reference
    # log-probs) must not continue as a CPU fp32 run, nor the reverse. cuda:0 and cuda:1 are alike.
    return {"device": device.type, "dtype": str(dtype).removeprefix("torch.")}


def _fingerprint(examples: Sequence[Example], config: KTOConfig, runtime: dict) -> str:
    """What must match for a checkpoint to continue this run."""
    how = ("checkpoint_every", "device", "sequence_layout", "sequence_workers",  # how, not what, is computed
           "gradient_checkpointing")
    settings = {k: v for k, v in config.to_dict().items() if k not in how}
    digest = hashlib.sha256(json.dumps([settings, runtime], sort_keys=True).encode())
    for e in examples:
        digest.update(json.dumps([e.prefix, e.prompt, e.completion, e.label]).encode())
    return digest.hexdigest()


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, *, step, model, optimizer, scheduler, history, reference, fingerprint,
                    runtime: dict | None = None) -> None:
    state = {
        "step": step,
        "fingerprint": fingerprint,
        "runtime": runtime,
        "adapter": {n: p.detach().cpu().clone() for n, p in _trainable(model).items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": history,
        "reference": reference.state_dict() if reference is not None else None,
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "rng_python": random.getstate(),
    }
    path.mkdir(parents=True, exist_ok=True)
    # A name of this process and attempt: two holders of one job (a reaped worker still alive and the
    # new one) never write into the same temporary file; the last complete one wins the rename.
    tmp = path / f".{CHECKPOINT_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path / CHECKPOINT_FILE)  # atomic: a crash leaves the previous checkpoint
    finally:
        tmp.unlink(missing_ok=True)
    log.info("checkpoint at step %d in %s", step, path)


def load_checkpoint(path: Path, *, model, optimizer, scheduler, reference, fingerprint,
                    runtime: dict | None = None) -> tuple[int, list[dict]]:
    state = torch.load(path / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    saved = state.get("runtime")
    if runtime is not None and saved is not None and saved != runtime:
        raise CheckpointMismatch(
            f"checkpoint in {path} was written on {saved['device']} in {saved['dtype']}, this run is on "
            f"{runtime['device']} in {runtime['dtype']}; resume with the same device and dtype, or delete it"
        )
    if state["fingerprint"] != fingerprint:
        raise CheckpointMismatch(
            f"checkpoint in {path} was written for other rows or hyper-parameters; "
            "delete it or train with resume=False"
        )
    params = _trainable(model)
    with torch.no_grad():
        for name, value in state["adapter"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if reference is not None and state["reference"] is not None:
        reference.load_state_dict(state["reference"])
    torch.set_rng_state(state["rng_torch"])
    if state["rng_cuda"]:
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    random.setstate(state["rng_python"])
    log.info("resumed from step %d in %s", state["step"], path)
    return state["step"], list(state["history"])

"""LoRA on a frozen base: the policy is base + adapter, the reference is the
same network with the adapter disabled (one copy of the weights).

LoRA dropout draws from a mask stream of the example being scored
(:func:`dropout_generator`, :class:`MaskStream`), not from torch's global generator: examples scored on
parallel threads then get the same masks whichever thread runs them, so a
run repeats (and resumes) exactly. Outside such a context it draws from the
global generator, as ``nn.Dropout`` does.
"""

from __future__ import annotations

import hashlib
import math
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from alignment.config import ConfigError, KTOConfig

_local = threading.local()


class MaskStream:
    """Dropout keep-masks of one example: a numpy SFC64 stream seeded by the example's seed.

    torch's CPU ``bernoulli_`` draws one Mersenne-Twister number per element and
    took longer than the LoRA matmul it masks (1.35 ms for a 200 x 576 input,
    more than that input's 576 x 576 projection). Here each element costs 16
    random bits from a much faster generator and one vectorised compare: the
    drop probability is ``p`` rounded to a multiple of 2**-16 (0.05 becomes
    3277 / 65536 = 0.0500031), and the kept inputs are scaled by 1 / (1 - that),
    so the expectation stays exact.
    """

    RESOLUTION = 1 << 16

    def __init__(self, seed: int):
        self._bits = np.random.SFC64(seed)

    @classmethod
    def threshold(cls, p: float) -> int:
        """Draws below this are dropped (never all of them: p < 1 must keep something)."""
        return min(round(p * cls.RESOLUTION), cls.RESOLUTION - 1)

    @classmethod
    def drop_probability(cls, p: float) -> float:
        """The probability an element is really dropped with nominal ``p``."""
        return cls.threshold(p) / cls.RESOLUTION

    def keep(self, shape: torch.Size, p: float) -> torch.Tensor:
        """A uint8 tensor of ``shape`` on the CPU: 1 keeps the element, 0 drops it."""
        n = math.prod(shape)
        words = self._bits.random_raw((n + 3) // 4)  # 4 x 16 bits per 64-bit word
        draws = words.view(np.uint16)[:n]
        keep = np.greater_equal(draws, self.threshold(p)).view(np.uint8)
        return torch.from_numpy(keep).view(shape)


@contextmanager
def dropout_generator(stream: MaskStream | None) -> Iterator[None]:
    """LoRA dropout in this thread draws its masks from ``stream`` inside the block."""
    saved = getattr(_local, "stream", None)
    _local.stream = stream
    try:
        yield
    finally:
        _local.stream = saved


def dropout_seed(seed: int, microbatch: int, example: int) -> int:
    """The dropout seed of one example in one microbatch of a job (the same on every thread and resume)."""
    digest = hashlib.blake2b(f"{seed}:{microbatch}:{example}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # < 2**63


class _Dropped(torch.autograd.Function):
    """x * keep * scale, keeping the uint8 mask for the backward (a quarter of a float mask: with dropout
    on every LoRA input, masks are a large share of a training step's memory). uint8, not bool: torch
    converts bool to float several times slower than uint8."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


class SeededDropout(torch.nn.Dropout):
    """``nn.Dropout`` that draws from the thread's :func:`dropout_generator` stream when one is set."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stream = getattr(_local, "stream", None)
        if stream is None or not self.training or self.p == 0:
            return super().forward(x)
        keep = stream.keep(x.shape, self.p).to(x.device)
        return _Dropped.apply(x, keep, 1.0 / (1 - MaskStream.drop_probability(self.p)))


def use_seeded_dropout(model) -> int:
    """Swap every LoRA dropout of ``model`` for a :class:`SeededDropout` of the same p; returns how many."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in list(dropouts.items()):
            if type(dropout) is torch.nn.Dropout:
                dropouts[name] = SeededDropout(dropout.p)
                swapped += 1
    return swapped

# Attention projections by architecture family, most common first.
ATTENTION_PROJECTIONS = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),  # Llama, Mistral, Qwen, Gemma, SmolLM
    ("q_proj", "k_proj", "v_proj", "out_proj"),  # OPT, BART-style
    ("q_proj", "k_proj", "v_proj", "dense"),  # Phi
    ("qkv_proj", "o_proj"),  # Phi-3
    ("query_key_value", "dense"),  # GPT-NeoX, Falcon, Bloom
    ("Wqkv", "out_proj"),  # MPT
    ("c_attn",),  # GPT-2
)


def default_target_modules(model) -> tuple[str, ...]:
    """The attention projections of ``model``'s architecture, by module name."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if type(module).__name__ in ("Linear", "Conv1D", "Linear4bit")}  # Linear4bit: an nf4 base
    for group in ATTENTION_PROJECTIONS:
        if all(n in names for n in group):
            return group
    raise ConfigError(
        f"cannot tell this architecture's attention projections; set lora_target_modules "
        f"(linear layers found: {', '.join(sorted(names)) or 'none'})"
    )


@contextmanager
def quiet_peft() -> Iterator[None]:
    """PEFT reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model: a FutureWarning
    in every job's log that we can do nothing about. Silenced here, only that warning, only around PEFT."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def attach_lora(model, config: KTOConfig):
    """A PeftModel with a fresh trainable LoRA adapter on ``model``.

    ``model`` is changed in place (PEFT injects the LoRA layers); its own
    weights are frozen and never updated. A model that already is a
    PeftModel is returned as it is, its active adapter being trained further.
    Either way its LoRA dropouts become :class:`SeededDropout` (same p).
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if not isinstance(model, PeftModel):
        targets = config.lora_target_modules or default_target_modules(model)
        lora = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=list(targets), bias="none", task_type="CAUSAL_LM",
        )
        with quiet_peft():
            model = get_peft_model(model, lora)
    use_seeded_dropout(model)
    return model

"""KTOConfig: every hyper-parameter of a KTO + LoRA job, typed and validated.

Torch-free on purpose: the API validates a job's JSON overrides with
``KTOConfig.from_dict`` without loading torch. ``device`` and ``dtype`` stay
strings here and are resolved by ``alignment.train`` when training starts.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal


class ConfigError(ValueError):
    """A KTOConfig value is wrong; the message says how to fix it."""


KLMode = Literal["estimate", "zero"]
KLPairing = Literal["next", "previous"]
Schedule = Literal["cosine", "linear", "constant"]
Layout = Literal["auto", "per_sequence", "batched"]
Quantization = Literal["none", "nf4"]


@dataclass(frozen=True)
class KTOConfig:
    """Hyper-parameters of one KTO alignment job (LoRA on a frozen base).

    Learning rate: the paper's 5e-6 is for full fine-tuning. LoRA's B matrix
    starts at zero and only a few million weights move, so it needs a larger
    step. Measured with ``bench/lr_sweep.py`` on the bundled
    SmolLM2-135M-Instruct (fp32, CPU, batch 8, 12 steps on 48 synthetic
    right/wrong-answer rows, beta 0.1, LoRA r16/alpha32 on q/k/v/o, cosine,
    10% warmup; scored on 32 held-out rows):

    ====== ================ ============ ============= =================
    lr     train loss, last  held-out     held-out      held-out reward
           4 steps           loss         accuracy      margin / z0
    ====== ================ ============ ============= =================
    5e-5   0.493            0.494        0.72          0.04 / 0.06
    2e-4   0.469            0.473        0.75          0.21 / 0.17
    1e-3   0.367            0.387        0.78          1.21 / 0.00
    5e-3   0.403            0.388        0.72          3.01 / 0.78
    ====== ================ ============ ============= =================

    (5e-6, 16 steps on 64 rows: held-out loss 0.499, margin 0.007: the
    adapter barely moves.) 1e-3 gives the lowest training and held-out loss
    and the best accuracy; 5e-3 overshoots (training loss back up, accuracy
    down, z0 up), so 1e-3 is the default. Long jobs on much more data may
    prefer a smaller rate; the held-out gate catches an adapter that drifts.

    batch_size must be >= 2: the KL estimate z0 pairs each prompt with
    another example's completion in the same microbatch; with one example
    that "mismatched" pair is the matched pair, so z0 equals the reward and
    the loss stops carrying signal. For the same reason a KL partner never
    has its example's prompt (paired imports and ``aggregation="all"`` put
    several responses of one prompt in a snapshot) unless the microbatch
    holds a single prompt.

    Class imbalance: the minority class is up-weighted (``alignment.weights``)
    but never beyond ``max_class_weight`` (default 10, about the imbalance
    the paper tested); past it the job record's class weights say
    ``capped``. With ``stratify`` (default) every microbatch holds both
    classes where the counts allow: at 1:100 with batches of 8 the ~1 %
    of minority rows are spread one per microbatch instead of clumping
    (shuffled, most microbatches would hold none).

    Single-class snapshots (only thumbs-up, or only thumbs-down): by default
    the job fails before training with a message naming the missing class.
    With ``allow_single_class`` it trains with both weights 1: the loss then
    only pushes that class's rewards above (desirable) or below
    (undesirable) the KL baseline z0, with nothing on the other side to
    contrast, so the adapter mostly learns "more / less like these answers".
    Such a job cannot pass the held-out gate, which needs both classes on
    the held-out side (the reward margin is undefined without them); it
    publishes only with ``force_publish``.
    """

    # KTO
    beta: float = 0.1
    desirable_weight: float | None = None  # None: from the class counts (alignment.weights)
    undesirable_weight: float | None = None
    kl_mode: KLMode = "estimate"  # "zero": z0 = 0, the paper's SFT-then-KTO case
    kl_pairing: KLPairing = "next"  # KL partner of i: "next" = (i+1) mod m, "previous" = (i-1) mod m (TRL)
    allow_single_class: bool = False  # train on a snapshot with one class only (weights 1, 1; see the docstring)
    max_class_weight: float = 10.0  # cap on the minority class's weight from the counts (explicit weights: as given)

    # Optimisation
    learning_rate: float = 1e-3  # measured: see the class docstring
    num_epochs: int = 1
    max_steps: int | None = None  # optimiser steps; when set, overrides num_epochs (epochs repeat)
    batch_size: int = 8  # examples per microbatch (the KL estimate is per microbatch)
    grad_accumulation: int = 1  # microbatches per optimiser step
    warmup_ratio: float = 0.1
    lr_schedule: Schedule = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0  # None: no clipping
    seed: int = 0

    # Data
    max_length: int = 512  # prompt + completion tokens
    max_prompt_length: int | None = None  # prompt share kept when both are long; None = max_length // 2
    group_by_length: bool = True  # microbatches of similar length: less padding
    shuffle: bool = True  # False: microbatches take the rows in order, epochs too (benchmarks, comparisons)
    stratify: bool = True  # every microbatch holds both classes where the counts allow (False: as the order falls)

    # LoRA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] | None = None  # None: the architecture's attention projections

    # Runtime
    precompute_reference: bool = True  # reference log-probs once per job, reused by every epoch
    # "per_sequence": one unpadded forward per example, its KL pair continuing from the cached prompt
    # (fastest on a CPU, where time follows the token count); "batched": right-padded microbatches
    # (a GPU wants large kernels); "auto": per_sequence on CPU, batched elsewhere.
    sequence_layout: Layout = "auto"
    # per_sequence on a CPU: examples scored at once, one thread each (a small matmul scales better across
    # examples than inside one: +43% tokens/s on 2 cores, README); None = torch's intra-op thread count.
    sequence_workers: int | None = None
    # Batched layout: sequences packed into rows with a 4D block mask instead of padded: the reference pass
    # computes each prompt once for both pairs, the policy's forward spends no FLOP on padding rows.
    packing: bool = True
    # Recompute each decoder layer's activations in the backward instead of keeping them: less memory for
    # long sequences, ~1/3 more compute. Batched layout only (a per-sequence forward re-drawing its
    # dropout masks in the recompute would train on other masks than it scored).
    gradient_checkpointing: bool = False
    # "nf4": the frozen base's linear layers in 4-bit NormalFloat (QLoRA; needs bitsandbytes): about a
    # quarter of the base's memory. The reference is then the quantized base, the adapter trains against it.
    quantization: Quantization = "none"
    # Data-parallel processes (alignment.distributed): each takes batch_size examples of a global microbatch
    # of processes x batch_size, KL partners from its own share, z0 over the whole microbatch.
    processes: int = 1
    checkpoint_every: int = 0  # optimiser steps between checkpoints; 0 = none
    device: str = "auto"  # "auto" (cuda when present, else cpu), "cpu", "cuda", "cuda:1", ...
    dtype: str = "auto"  # "auto" (bf16 on cuda, fp32 on cpu), "float32", "bfloat16", "float16"

    def __post_init__(self) -> None:
        _check_types(self)
        _check_values(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, overrides: dict[str, Any] | None = None, *, base: KTOConfig | None = None) -> KTOConfig:
        """Defaults (or ``base``) with ``overrides`` applied; unknown keys are an error."""
        if overrides is not None and not isinstance(overrides, dict):
            raise ConfigError(f"config overrides must be a JSON object, got {type(overrides).__name__}")
        overrides = dict(overrides or {})
        known = set(cls.field_names())
        unknown = sorted(k for k in overrides if k not in known)
        if unknown:
            raise ConfigError(
                f"unknown config key(s): {', '.join(map(repr, unknown))}; valid keys are: {', '.join(sorted(known))}"
            )
        if isinstance(overrides.get("lora_target_modules"), list):
            overrides["lora_target_modules"] = tuple(overrides["lora_target_modules"])
        start = base if base is not None else cls()
        return dataclasses.replace(start, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what a job records as the hyper-parameters it used."""
        out = dataclasses.asdict(self)
        if out["lora_target_modules"] is not None:
            out["lora_target_modules"] = list(out["lora_target_modules"])
        return out

    @property
    def prompt_budget(self) -> int:
        return self.max_prompt_length if self.max_prompt_length is not None else self.max_length // 2


_NUMBER_TYPES = {float: (int, float), int: (int,), bool: (bool,), str: (str,)}


def _check_types(config: KTOConfig) -> None:
    hints = typing.get_type_hints(KTOConfig)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        hint = hints[f.name]
        args = typing.get_args(hint)
        optional = type(None) in args
        if value is None:
            if not optional:
                raise ConfigError(f"{f.name} may not be null; the default is {f.default!r}")
            continue
        base = next((a for a in args if a is not type(None)), hint) if optional else hint
        if typing.get_origin(base) is Literal:
            choices = typing.get_args(base)
            if value not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
            continue
        if typing.get_origin(base) is tuple:
            if not isinstance(value, tuple) or not value or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(
                    f"{f.name} must be a non-empty list of module names (e.g. [\"q_proj\", \"v_proj\"]) or null"
                )
            continue
        allowed = _NUMBER_TYPES[base]
        # bool is an int subclass: a JSON `true` is not a learning rate.
        if isinstance(value, bool) and base is not bool or not isinstance(value, allowed):
            raise ConfigError(f"{f.name} must be of type {base.__name__}, got {value!r} ({type(value).__name__})")
        if base is float and not isinstance(value, float):
            object.__setattr__(config, f.name, float(value))  # JSON 1 means 1.0


def _positive(name: str, value: float | None, *, strict: bool = True) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if strict and not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    if not strict and value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value!r}")


def _check_values(c: KTOConfig) -> None:
    for name in ("beta", "learning_rate", "num_epochs", "max_steps", "grad_accumulation", "max_length",
                 "max_prompt_length", "lora_r", "lora_alpha", "max_grad_norm", "desirable_weight",
                 "undesirable_weight", "sequence_workers", "processes"):
        _positive(name, getattr(c, name))
    for name in ("weight_decay", "checkpoint_every", "seed"):
        _positive(name, getattr(c, name), strict=False)
    if c.batch_size < 2:
        raise ConfigError(
            f"batch_size must be >= 2, got {c.batch_size}: the KL estimate pairs each prompt with another "
            "example's completion in the same microbatch; with one example it equals the reward"
        )
    if not 0 <= c.warmup_ratio < 1:
        raise ConfigError(f"warmup_ratio must be in [0, 1), got {c.warmup_ratio}")
    _positive("max_class_weight", c.max_class_weight)
    if c.max_class_weight < 1:
        raise ConfigError(
            f"max_class_weight must be >= 1, got {c.max_class_weight}: it caps how far the minority class is "
            "up-weighted (the majority keeps weight 1); the default 10 covers the imbalances the KTO paper tested"
        )
    if not 0 <= c.lora_dropout < 1:
        raise ConfigError(f"lora_dropout must be in [0, 1), got {c.lora_dropout}")
    if (c.desirable_weight is None) != (c.undesirable_weight is None):
        raise ConfigError(
            "set both desirable_weight and undesirable_weight, or neither (then they come from the class counts)"
        )
    if c.max_length < 2:
        raise ConfigError(f"max_length must be >= 2 (one prompt and one completion token), got {c.max_length}")
    if not 1 <= c.prompt_budget < c.max_length:
        raise ConfigError(
            f"max_prompt_length must be in [1, max_length) = [1, {c.max_length}), got {c.prompt_budget}: "
            "the completion needs room"
        )
    if not (c.device in ("auto", "cpu", "cuda", "mps") or c.device.startswith("cuda:")):
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {c.device!r}")
    if c.gradient_checkpointing and c.sequence_layout == "per_sequence":
        raise ConfigError(
            "gradient_checkpointing needs sequence_layout 'batched' (or 'auto', which then picks batched): "
            "the per-sequence layout's recompute would draw other dropout masks than its forward"
        )
    if c.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16', got {c.dtype!r}")


__all__ = ["ConfigError", "KTOConfig"]

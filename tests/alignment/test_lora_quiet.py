"""Attaching LoRA logs no deprecation warning the user can do nothing about."""

from __future__ import annotations

import warnings

from alignment.config import KTOConfig
from alignment.lora import attach_lora


def test_attach_lora_warns_nothing(tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = attach_lora(tiny_model, KTOConfig())
    assert any(p.requires_grad for p in model.parameters())

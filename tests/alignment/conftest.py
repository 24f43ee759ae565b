"""Fixtures for the alignment engine: a tiny random model (fast) and the
bundled SmolLM2 converted once per session (slow tests only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import build_tiny_model_dir, tiny_rows  # the repo root is on pythonpath (pyproject)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def tiny_tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture
def tiny_model(tiny_dir):
    """A fresh copy per test: training injects LoRA into it."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir)


@pytest.fixture
def rows() -> list[dict]:
    return tiny_rows(16)


@pytest.fixture(scope="session")
def bundled_dir(tmp_path_factory) -> Path:
    from alignment.bundled import convert_bundled

    return convert_bundled(tmp_path_factory.mktemp("bundled") / "smollm2")

"""The worker loads a base model from its safetensors only, after checking every pinned file."""

from __future__ import annotations

import pytest
import transformers

from core.base_models import BaseModelTampered, register_base_model
from core.db import session_scope
from tests.tiny import build_tiny_model_dir
from worker.pipeline import _Run


def test_load_base_verifies_then_loads_safetensors_only(settings, engine, tmp_path, monkeypatch):
    folder = build_tiny_model_dir(tmp_path / "tiny")
    with session_scope(engine) as s:
        base = register_base_model(s, settings=settings, name="tiny", source=str(folder))
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(base.files)
    calls = []

    def spy(path, **kwargs):
        calls.append(kwargs)
        return "model"

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    run = _Run(job_id="j", settings=settings, engine=engine, token="t", attempt=1)
    model, tokenizer = run._load_base(base, folder)
    assert model == "model" and tokenizer.chat_template
    assert calls[0]["use_safetensors"] is True  # a pickle beside the weights is never unpickled

    (folder / "tokenizer_config.json").write_text("{}")
    with pytest.raises(BaseModelTampered, match=r"tokenizer_config.json changed"):
        run._load_base(base, folder)
    assert len(calls) == 1

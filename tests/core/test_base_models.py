"""Base models: registration (local folder, hub id without a network), weight hashing, tamper detection."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from alignment.hashing import weights_sha256 as alignment_weights_sha256
from core.base_models import (
    BaseModelTampered,
    get_base_model,
    list_base_models,
    register_base_model,
    verify_base_model,
    weights_sha256,
)
from core.db import session_scope
from core.errors import Conflict, InvalidInput, NotFound, Unavailable
from tests.artifacts import make_model_dir


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_weights_sha256_hashes_names_and_bytes_of_top_level_safetensors_only(tmp_path):
    folder = make_model_dir(tmp_path / "m", b"AAAA")
    (folder / "b.safetensors").write_bytes(b"BB")
    expected = _sha(f"{_sha(b'BB')}  b.safetensors\n{_sha(b'AAAA')}  model.safetensors\n".encode())
    assert weights_sha256(folder) == expected == alignment_weights_sha256(folder)
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"ignored: never loaded")
    (folder / "sub").mkdir()
    (folder / "sub" / "c.safetensors").write_bytes(b"ignored: transformers loads top-level files")
    assert weights_sha256(folder) == expected
    (folder / "b.safetensors").rename(folder / "c.safetensors")
    assert weights_sha256(folder) != expected


def test_register_a_local_folder(engine, settings, tmp_path):
    folder = make_model_dir(tmp_path / "m")
    with session_scope(engine) as s:
        rec = register_base_model(s, settings=settings, name="tiny-llama", source=str(folder))
    with session_scope(engine) as s:
        got = get_base_model(s, name="tiny-llama")
        assert (got.path, got.sha256, got.architecture, got.source) == (
            str(folder.resolve()), weights_sha256(folder), "LlamaForCausalLM", str(folder))
        assert [r.name for r in list_base_models(s)] == ["tiny-llama"]
        with pytest.raises(NotFound, match="no base model named 'other'"):
            get_base_model(s, name="other")
    verify_base_model(rec)


@pytest.mark.parametrize(
    ("name", "source", "error", "message"),
    [
        ("Bad Name", "m", InvalidInput, "invalid base model name"),
        ("taken", "m", Conflict, "already registered"),
        ("ok", "m/config.json", InvalidInput, "is a file"),
        ("ok", "nowhere/at/all", InvalidInput, "neither an existing folder nor a hub id"),
        ("ok", "empty", InvalidInput, "no config.json"),
        ("ok", "no-weights", InvalidInput, "no top-level \\*.safetensors"),
        ("ok", "pickle-only", InvalidInput, "no top-level \\*.safetensors"),
        ("ok", "nested-only", InvalidInput, "no top-level \\*.safetensors"),
    ],
)
def test_bad_registrations_are_refused(engine, settings, tmp_path, monkeypatch, name, source, error, message):
    monkeypatch.chdir(tmp_path)
    make_model_dir(tmp_path / "m")
    (tmp_path / "empty").mkdir()
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text("{}")
    make_model_dir(tmp_path / "pickle-only").joinpath("model.safetensors").rename(
        tmp_path / "pickle-only" / "pytorch_model.bin")
    (make_model_dir(tmp_path / "nested-only") / "sub").mkdir()
    (tmp_path / "nested-only" / "model.safetensors").rename(tmp_path / "nested-only" / "sub" / "model.safetensors")
    with session_scope(engine) as s:
        register_base_model(s, settings=settings, name="taken", source="m")
    with session_scope(engine) as s, pytest.raises(error, match=message):
        register_base_model(s, settings=settings, name=name, source=source)
    with session_scope(engine) as s:
        assert [r.name for r in list_base_models(s)] == ["taken"]


def test_tampered_or_missing_weights_are_detected(engine, settings, tmp_path):
    folder = make_model_dir(tmp_path / "m", b"original")
    with session_scope(engine) as s:
        rec = register_base_model(s, settings=settings, name="base", source=str(folder))
    (folder / "model.safetensors").write_bytes(b"changed!")
    with pytest.raises(BaseModelTampered) as info:
        verify_base_model(rec)
    message = info.value.message
    assert "'base' changed on disk: sha256 expected" in message
    assert "(model.safetensors changed)" in message and "re-register" in message
    (folder / "model.safetensors").unlink()
    with pytest.raises(BaseModelTampered, match="missing on disk"):
        verify_base_model(rec)


def test_a_hub_id_is_downloaded_into_the_models_dir(engine, settings, monkeypatch):
    calls = []

    def fake_download(repo_id, *, revision, local_dir, allow_patterns):
        calls.append((repo_id, revision, Path(local_dir)))
        # Only what is pinned and loaded is fetched: no pickles, no custom code.
        assert "*.safetensors" in allow_patterns and "tokenizer.json" in allow_patterns
        assert not any(p.endswith((".bin", ".py", ".pt")) for p in allow_patterns)
        return str(make_model_dir(Path(local_dir)))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    with session_scope(engine) as s:
        rec = register_base_model(s, settings=settings, name="smol", source="org/smol", revision="abc123")
    assert calls == [("org/smol", "abc123", settings.models_dir / "smol")]
    assert (rec.path, rec.revision, rec.source) == (str(settings.models_dir / "smol"), "abc123", "org/smol")
    assert json.loads((Path(rec.path) / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_a_hub_id_without_a_network_is_unavailable(engine, settings, monkeypatch):
    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("connection error and no local cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with session_scope(engine) as s, pytest.raises(Unavailable, match="unreachable"):
        register_base_model(s, settings=settings, name="smol", source="org/smol")
    with session_scope(engine) as s, pytest.raises(InvalidInput, match="prospect models add"):
        register_base_model(s, settings=settings, name="smol", source="org/smol", allow_download=False)

"""Base models are confined to allowed folders, pin every file a job loads, and hash outside any transaction."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from core import base_models
from core.base_models import BaseModelTampered, register_base_model, verify_base_model
from core.db import session_scope
from core.errors import InvalidInput
from core.models import BaseModelRecord
from tests.api_client import make_api
from tests.artifacts import make_model_dir

LOADED = {
    "generation_config.json": '{"do_sample": false}',
    "tokenizer.json": '{"model": {}}',
    "tokenizer_config.json": '{"chat_template": "{{ messages }}"}',
    "special_tokens_map.json": "{}",
    "chat_template.jinja": "{{ messages }}",
    "model.safetensors.index.json": '{"weight_map": {}}',
}


def _full_model(path: Path) -> Path:
    folder = make_model_dir(path)
    for name, text in LOADED.items():
        (folder / name).write_text(text)
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "tool_use.jinja").write_text("{{ tools }}")
    (folder / "README.md").write_text("not loaded")
    return folder


def _strict(settings, *extra: Path):
    return settings.model_copy(update={"base_model_dirs": list(extra)})


def test_only_folders_under_the_models_dir_or_the_allow_list_register(engine, settings, tmp_path):
    strict = _strict(settings)
    strict.ensure_dirs()
    outside = make_model_dir(tmp_path / "elsewhere" / "m")
    inside = make_model_dir(strict.models_dir / "m")
    link = strict.models_dir / "link"
    link.symlink_to(outside, target_is_directory=True)  # a link out of the models folder does not count
    for source in (str(outside), str(link), str(strict.models_dir / ".." / ".." / "elsewhere" / "m")):
        with session_scope(engine) as s, pytest.raises(InvalidInput, match="outside the folders"):
            register_base_model(s, settings=strict, name="x", source=source)
    with session_scope(engine) as s:
        assert register_base_model(s, settings=strict, name="inside", source=str(inside)).path == str(inside)
    allowed = _strict(settings, tmp_path / "elsewhere")
    with session_scope(engine) as s:
        assert register_base_model(s, settings=allowed, name="listed", source=str(outside)).path == str(outside)


def test_every_loaded_file_is_pinned_and_nothing_else(engine, settings, tmp_path):
    folder = _full_model(tmp_path / "m")
    with session_scope(engine) as s:
        rec = register_base_model(s, settings=settings, name="base", source=str(folder))
    assert sorted(rec.files) == sorted([*LOADED, "config.json", "model.safetensors",
                                        "additional_chat_templates/tool_use.jinja"])
    assert rec.files["chat_template.jinja"] == hashlib.sha256(b"{{ messages }}").hexdigest()
    (folder / "README.md").write_text("edited: not loaded")
    (folder / "pytorch_model.bin").write_bytes(b"a pickle: never loaded (use_safetensors=True)")
    verify_base_model(rec)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda f: (f / "config.json").write_text('{"architectures": ["Other"]}'), "config.json changed"),
        (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json missing"),
        (lambda f: (f / "chat_template.jinja").write_text("{{ evil }}"), "chat_template.jinja changed"),
        (lambda f: (f / "generation_config.json").write_text("{}"), "generation_config.json changed"),
        (lambda f: (f / "vocab.json").write_text("{}"), "vocab.json added"),
        (lambda f: (f / "extra.safetensors").write_bytes(b"x"), "extra.safetensors added"),
        (lambda f: (f / "additional_chat_templates" / "t.jinja").write_text("x"),
         "additional_chat_templates/t.jinja added"),
    ],
)
def test_a_changed_added_or_removed_loaded_file_fails_verification(engine, settings, tmp_path, change, expected):
    folder = _full_model(tmp_path / "m")
    with session_scope(engine) as s:
        rec = register_base_model(s, settings=settings, name="base", source=str(folder))
    change(folder)
    with pytest.raises(BaseModelTampered, match=f"changed on disk: .* \\({expected}\\)"):
        verify_base_model(rec)


def test_a_row_from_before_the_file_pins_is_checked_on_its_weights(tmp_path):
    folder = make_model_dir(tmp_path / "m", b"w1")
    rec = BaseModelRecord(name="old", source=str(folder), path=str(folder),
                          sha256=base_models.weights_sha256(folder), files=None)
    verify_base_model(rec)
    (folder / "model.safetensors").write_bytes(b"w2")
    with pytest.raises(BaseModelTampered, match=r"changed on disk: .* \(weights changed\)"):
        verify_base_model(rec)


def test_registration_over_http_hashes_without_holding_the_write_lock(settings, tmp_path, monkeypatch):
    if not settings.sqlalchemy_url.startswith("sqlite"):
        pytest.skip("the write lock is SQLite's")
    client, h = make_api(settings)
    folder = _full_model(tmp_path / "m")
    db_file = settings.sqlalchemy_url.removeprefix("sqlite:///")
    writes = []
    real = base_models.file_sha256

    def hashing_while_another_process_writes(path):
        # What ingestion does meanwhile: take the write lock, without waiting for it.
        conn = sqlite3.connect(db_file, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            writes.append("ok")
        except sqlite3.OperationalError as exc:
            writes.append(str(exc))
        finally:
            conn.close()
        return real(path)

    monkeypatch.setattr(base_models, "file_sha256", hashing_while_another_process_writes)
    r = client.post("/v1/base-models", json={"name": "tiny", "source": str(folder)}, headers=h["admin"])
    assert r.status_code == 201, r.text
    assert writes == ["ok"] * 9

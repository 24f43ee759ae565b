"""Kept refused adapters expire; publishing one that expired says what to do instead."""

from __future__ import annotations

import time

import pytest

from core.db import session_factory, session_scope
from core.errors import NotFound
from core.models import AlignmentJob, BaseModelRecord
from core.refused import expire_refused, keep_refused, publish_refused, refused_dir
from core.settings import Settings


def _save(folder):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"w")


def test_keep_and_expire(settings):
    kept = keep_refused(settings, job_id="j1", save=_save, hyperparameters={}, class_counts={}, class_weights={})
    assert kept == refused_dir(settings, "j1") and (kept / "adapter" / "adapter_model.safetensors").is_file()
    assert expire_refused(settings) == []  # fresh
    later = time.time() + settings.refused_adapter_keep_hours * 3600 + 60
    assert expire_refused(settings, now=later) == ["j1"] and not kept.exists()
    off = Settings(**{**settings.model_dump(), "refused_adapter_keep_hours": 0})
    assert keep_refused(off, job_id="j2", save=_save, hyperparameters={}, class_counts={}, class_weights={}) is None


def test_publishing_an_expired_one_says_what_to_do(settings, engine):
    with session_scope(engine) as s:
        s.add(BaseModelRecord(name="tiny", source="/m", path="/m", sha256="0" * 64))
        s.flush()
        base_id = s.query(BaseModelRecord.id).scalar()
        s.add(AlignmentJob(id="j3", adapter_name="bot", base_model_id=base_id, status="failed",
                           eval_metrics={"gate": {"passed": False, "reasons": ["r"]}}))
    with pytest.raises(NotFound, match="no longer kept .* force_publish"):
        publish_refused(session_factory(engine), settings=settings, job_id="j3", key_id=1, reason="why")


def test_kept_in_s3_by_the_worker_published_by_an_api_on_another_host(settings, engine, s3_server, s3_bucket,
                                                                       tmp_path):
    from core.artifact_store import get_store
    from core.base_models import register_base_model
    from core.models import AdapterVersion
    from tests.artifacts import make_model_dir
    from tests.s3kit import s3_settings

    worker = s3_settings(settings, s3_server, s3_bucket, data_dir=tmp_path / "worker-host")
    api = worker.model_copy(update={"data_dir": tmp_path / "api-host"})
    with session_scope(engine) as s:
        base = register_base_model(s, settings=worker, name="base", source=str(make_model_dir(tmp_path / "m")))
        s.add(AlignmentJob(id="j4", adapter_name="bot", base_model_id=base.id, status="failed",
                           eval_metrics={"gate": {"passed": False, "reasons": ["r"]}}))
    assert keep_refused(worker, job_id="j4", save=_save, hyperparameters={"beta": 0.1}, class_counts={},
                        class_weights={}) == "refused/j4"
    assert not (worker.data_path / "refused").exists()
    version = publish_refused(session_factory(engine), settings=api, job_id="j4", key_id=1, reason="why")
    assert isinstance(version, AdapterVersion) and version.manifest["hyperparameters"] == {"beta": 0.1}
    store = get_store(api)
    assert store.read_bytes(f"{version.path}/adapter_model.safetensors") == b"w"
    assert list(store.list("refused")) == []  # published: no longer kept
    keep_refused(worker, job_id="j5", save=_save, hyperparameters={}, class_counts={}, class_weights={})
    assert expire_refused(api) == []
    assert expire_refused(api, now=time.time() + api.refused_adapter_keep_hours * 3600 + 60) == ["j5"]
    assert list(store.list("refused")) == []

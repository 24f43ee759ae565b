"""Base models registered from object storage (SeaweedFS): the worker fetches the pinned files into a
cache keyed by their sha256, verifies them before training, and reuses the cache for later jobs."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core import jobs
from core.artifact_store import S3Store
from core.base_model_store import cache_folder
from core.base_models import file_hashes, register_base_model
from core.db import session_scope
from core.models import AlignmentJob
from tests.s3kit import client, s3_settings
from tests.tiny import build_tiny_model_dir
from tests.worker.jobkit import (
    TINY_CONFIG,
    TaskRetries,
    api_keys,
    closed_port,
    feedback_events,
    post_feedback,
)
from worker.pipeline import run_job


@pytest.fixture
def stored_model(settings, engine, s3_server, s3_bucket, tmp_path):
    """The tiny model's files uploaded to s3://bucket/models/tiny and registered from there, the local
    copy deleted: the worker host (its own data folder) can only get it from the store."""
    api_host = s3_settings(settings, s3_server, s3_bucket, data_dir=tmp_path / "api-host")
    worker_host = api_host.model_copy(update={"data_dir": tmp_path / "worker-host"})
    folder = build_tiny_model_dir(tmp_path / "upload")
    pinned = file_hashes(folder)
    s3 = client(s3_server)
    for name in pinned:
        s3.upload_file(str(folder / name), s3_bucket, f"models/tiny/{name}")
    s3.put_object(Bucket=s3_bucket, Key="models/tiny/pytorch_model.bin", Body=b"never loaded")
    shutil.rmtree(folder)
    post_feedback(TestClient(create_app(api_host)), api_keys(engine)["ingest"], feedback_events())
    with session_scope(engine) as s:
        record = register_base_model(s, settings=api_host, name="tiny", source=f"s3://{s3_bucket}/models/tiny")
        assert (record.files, record.path) == (pinned, f"s3://{s3_bucket}/models/tiny")
    return worker_host, s3, s3_bucket, pinned


def _job(engine) -> str:
    with session_scope(engine) as s:
        return jobs.create_job(s, adapter_name="bot", base_model_name="tiny", config=TINY_CONFIG).id


def _downloads(monkeypatch) -> list[str]:
    keys: list[str] = []
    real = S3Store.get_file

    def counting(self, key, dest):
        keys.append(key)
        return real(self, key, dest)

    monkeypatch.setattr(S3Store, "get_file", counting)
    return keys


def test_a_worker_fetches_verifies_and_trains_then_reuses_its_cache(stored_model, engine, monkeypatch):
    worker_host, _, _, pinned = stored_model
    downloads = _downloads(monkeypatch)
    assert run_job(_job(engine), settings=worker_host, worker="w:1").status == "succeeded"
    assert sorted(downloads) == sorted(f"tiny/{name}" for name in pinned)  # the pickle is never fetched
    cached = cache_folder(worker_host, pinned)
    assert file_hashes(cached) == pinned

    downloads.clear()
    assert run_job(_job(engine), settings=worker_host, worker="w:1").status == "succeeded"
    assert downloads == []  # the second job trains on the cached copy

    (cached / "config.json").write_text("{}")  # the cache is checked by every job too
    job_id = _job(engine)
    assert run_job(job_id, settings=worker_host, worker="w:1").status == "failed"
    with session_scope(engine) as s:
        assert f"delete the cached copy {cached}" in s.get(AlignmentJob, job_id).error


@pytest.mark.parametrize("attack", ["changed", "deleted"])
def test_an_object_changed_or_deleted_after_registration_fails_the_job(stored_model, engine, attack):
    worker_host, s3, bucket, pinned = stored_model
    if attack == "changed":
        s3.put_object(Bucket=bucket, Key="models/tiny/config.json", Body=b'{"architectures": ["Evil"]}')
    else:
        s3.delete_object(Bucket=bucket, Key="models/tiny/config.json")
    job_id = _job(engine)
    assert run_job(job_id, settings=worker_host, worker="w:1").status == "failed"
    with session_scope(engine) as s:
        error = s.get(AlignmentJob, job_id).error
    expected = "changed in the store" if attack == "changed" else "is missing from the store"
    assert expected in error and "config.json" in error, error
    assert not cache_folder(worker_host, pinned).exists()  # nothing unverified is kept


def test_registering_a_prefix_without_weights_is_refused(settings, engine, s3_server, s3_bucket):
    api_host = s3_settings(settings, s3_server, s3_bucket)
    admin = api_keys(engine)["admin"]
    resp = TestClient(create_app(api_host)).post("/v1/base-models", headers=admin,
                                                 json={"name": "empty", "source": f"s3://{s3_bucket}/nothing"})
    assert resp.status_code == 422 and "safetensors" in resp.json()["detail"], resp.text


def test_two_jobs_fetching_at_once_and_a_full_disk_leave_one_verified_copy(stored_model, engine, monkeypatch):
    """Concurrency 2 on one host: both fetch into their own .part folder and rename; the loser's rename
    fails on the winner's folder, which it then uses. A fetch that fails mid-way (disk full) leaves
    nothing a later job would take for the cache."""
    import errno
    import threading

    from core.base_model_store import fetch_store_model
    from core.base_models import get_base_model_or_none

    worker_host, _, _, pinned = stored_model
    with session_scope(engine) as s:
        record = get_base_model_or_none(s, name="tiny")
        s.expunge(record)
    target = cache_folder(worker_host, pinned)
    real = S3Store.get_file
    full = {"on": True}

    def disk_full(self, key, dest):
        if full["on"] and key.endswith("config.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, key, dest)

    monkeypatch.setattr(S3Store, "get_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        fetch_store_model(worker_host, record)
    assert not target.exists() and list(target.parent.iterdir()) == []

    full["on"] = False
    both_downloading = threading.Barrier(2, timeout=30)

    def in_step(self, key, dest):
        if key.endswith("config.json"):
            both_downloading.wait()
        return real(self, key, dest)

    monkeypatch.setattr(S3Store, "get_file", in_step)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(fetch_store_model(worker_host, record)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [target, target]
    assert [p.name for p in target.parent.iterdir()] == [target.name] and file_hashes(target) == pinned


def test_a_store_outage_during_the_fetch_requeues_the_job_and_the_task_retries_it(stored_model, engine,
                                                                                   monkeypatch):
    """The store refusing connections while a job fetches its base model: the job goes back to the queue
    (its attempt given back) and the Celery task retries it like a database blip; with the store back the
    same job trains to the end. Before: the job failed for good, as if the model had been tampered with."""
    from worker import tasks

    worker_host, _, _, pinned = stored_model
    up = worker_host.model_copy(update={"artifact_url": ""})  # artifacts on local disk: only the model is in S3
    down = up.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{closed_port()}", "s3_max_attempts": 1})
    current = {"settings": down}
    monkeypatch.setattr(tasks, "get_settings", lambda: current["settings"])
    retries = TaskRetries(monkeypatch)
    job_id = _job(engine)
    for _delivery in (1, 2):  # the outage outlasts a retry: each delivery puts the job back
        retries.deliver(job_id)
        with session_scope(engine) as s:
            job = s.get(AlignmentJob, job_id)
            assert (job.status, job.attempts, job.claim_token, job.finished_at) == ("queued", 0, None, None)
            assert "the store cannot serve" in job.error and "EndpointConnectionError" in job.error, job.error
        assert not cache_folder(up, pinned).exists()

    current["settings"] = up  # the store is back
    assert tasks.run_job(job_id) == "succeeded"
    with session_scope(engine) as s:
        job = s.get(AlignmentJob, job_id)
        assert (job.status, job.attempts, job.error, job.adapter_version_id is not None) == (
            "succeeded", 1, None, True)
    assert file_hashes(cache_folder(up, pinned)) == pinned


def test_adapters_try_fetches_a_store_registered_base_on_a_host_without_it(stored_model, engine, monkeypatch,
                                                                             tmp_path):
    from typer.testing import CliRunner

    import core.cli_try
    from core.cli import app

    worker_host, s3, bucket, pinned = stored_model
    assert run_job(_job(engine), settings=worker_host, worker="w:1").status == "succeeded"
    # An operator's host: its own data folder, no copy of the model yet.
    operator = worker_host.model_copy(update={"data_dir": tmp_path / "operator-host"})
    monkeypatch.setattr(core.cli_try, "get_settings", lambda: operator)
    monkeypatch.setattr(core.cli_try, "database_engine", lambda settings: engine)
    shown = CliRunner().invoke(app, ["adapters", "try", "bot", "latest", "p3", "--max-new-tokens", "4"])
    assert shown.exit_code == 0, shown.output
    assert "tiny (base)" in shown.stdout and "bot v1" in shown.stdout
    assert file_hashes(cache_folder(operator, pinned)) == pinned  # fetched and verified there

    # The store's copy changed since registration: a clear refusal, not a traceback.
    s3.put_object(Bucket=bucket, Key="models/tiny/config.json", Body=b"{}")
    elsewhere = operator.model_copy(update={"data_dir": tmp_path / "another-host"})
    monkeypatch.setattr(core.cli_try, "get_settings", lambda: elsewhere)
    refused = CliRunner().invoke(app, ["adapters", "try", "bot", "latest", "p3"])
    assert refused.exit_code == 2 and "changed in the store" in refused.output, refused.output

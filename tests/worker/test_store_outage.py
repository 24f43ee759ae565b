"""The S3 artifact store (SeaweedFS) going down while a job runs: each phase that needs it (writing or
reading the snapshot, fetching the checkpoint, keeping a refused adapter, publishing) puts the job back in the queue, and the
same job finishes once the store is back; a checkpoint upload or delete that fails is only logged; a wrong
bucket fails the job for good. An outage is the real thing: the store's client pointed at a closed port."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from core import adapter_publish, jobs
from core.artifact_store import get_store
from core.base_models import register_base_model
from core.db import session_scope
from core.errors import Unavailable
from core.models import AdapterAlias, AdapterVersion, AlignmentJob, Snapshot
from tests.s3kit import s3_settings
from tests.tiny import build_tiny_model_dir
from tests.worker import jobkit
from worker import pipeline
from worker.checkpoints import CheckpointMirror
from worker.job_dirs import checkpoint_dir
from worker.pipeline import _Run, run_job


class Outage:
    """Takes the job's store down and back: its client swapped for one that connects to a closed port."""

    def __init__(self, settings) -> None:
        self.store = get_store(settings)
        self.down = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{jobkit.closed_port()}",
                                                "s3_max_attempts": 1})
        self.up_client = self.store.client

    def start(self) -> None:
        self.store.client = get_store(self.down).client

    def end(self) -> None:
        self.store.client = self.up_client

    def starts_at(self, monkeypatch, owner, name: str):
        """The outage starts as ``owner.name`` is called (which then runs against the store down); returns
        the real one, to put back."""
        real = getattr(owner, name)

        def store_down_first(*args, **kwargs):
            self.start()
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, store_down_first)
        return real


@pytest.fixture
def host(settings, engine, s3_server, s3_bucket, tmp_path):
    """A worker whose artifacts are in the bucket; the tiny model on its disk; feedback collected."""
    up = s3_settings(settings, s3_server, s3_bucket, checkpoint_every_steps=4)
    jobkit.post_feedback(TestClient(create_app(up)), jobkit.api_keys(engine)["ingest"], jobkit.feedback_events())
    with session_scope(engine) as s:
        register_base_model(s, settings=up, name="tiny", source=str(build_tiny_model_dir(tmp_path / "tiny")))
    outage = Outage(up)
    yield up, outage
    outage.end()


def _job(engine, **extra) -> str:
    with session_scope(engine) as s:
        return jobs.create_job(s, adapter_name="bot", base_model_name="tiny", config=jobkit.TINY_CONFIG,
                               **extra).id


def _queued_for(engine, job_id: str, doing: str) -> AlignmentJob:
    """The job is back in the queue, its attempt given back, with the reason; nothing was published."""
    with session_scope(engine) as s:
        job = s.get(AlignmentJob, job_id)
        assert (job.status, job.attempts, job.claim_token, job.adapter_version_id) == ("queued", 0, None, None)
        assert f"the artifact store cannot serve {doing} now" in job.error, job.error
        assert "EndpointConnectionError" in job.error, job.error
        assert s.scalar(select(func.count()).select_from(AdapterVersion)) == 0
        return job


def _published_once(engine, up, job_id: str) -> AdapterVersion:
    """The job succeeded on its next attempt and published one whole version: every file the manifest
    lists, the manifest and the tarball are in the store."""
    with session_scope(engine) as s:
        job = s.get(AlignmentJob, job_id)
        assert (job.status, job.attempts, job.error) == ("succeeded", 1, None)
        versions = s.scalars(select(AdapterVersion)).all()
        assert [(v.version, v.job_id) for v in versions] == [(1, job_id)]
        assert s.get(AdapterAlias, ("bot", "latest")).version == 1
        version = versions[0]
        s.expunge(version)
    keys = {e.key for e in get_store(up).list(version.path)}
    assert keys == {f"{version.path}/{f['name']}" for f in version.manifest["files"]} | {
        f"{version.path}/manifest.json", f"{version.path}/.prospect-download.tar.gz"}
    return version


def test_an_outage_while_writing_the_snapshot_requeues_the_job_and_the_task_retries_it(host, engine,
                                                                                        monkeypatch):
    """The store down from the start: the snapshot cannot be written. Each delivery of the Celery task puts
    the job back and retries it like a database blip; with the store back the same job trains to the end.
    Before: the job failed for good on the raw botocore error."""
    from worker import tasks

    up, outage = host
    monkeypatch.setattr(tasks, "get_settings", lambda: up)
    retries = jobkit.TaskRetries(monkeypatch)
    job_id = _job(engine)
    outage.start()
    for _delivery in (1, 2):  # the outage outlasts a retry: each delivery puts the job back
        retries.deliver(job_id)
        assert _queued_for(engine, job_id, "the job's snapshot").snapshot_id is None
        with session_scope(engine) as s:
            assert s.scalar(select(func.count()).select_from(Snapshot)) == 0  # no row without its file

    outage.end()
    assert tasks.run_job(job_id) == "succeeded"
    _published_once(engine, up, job_id)


@pytest.mark.parametrize(("owner", "name", "doing"), [
    (pipeline, "split_snapshot", "the job's snapshot"),
    (CheckpointMirror, "restore", "the job's snapshot and checkpoint"),
], ids=["reading-the-snapshot", "fetching-the-checkpoint"])
def test_an_outage_while_reading_the_snapshot_or_the_checkpoint_requeues_the_job(host, engine, monkeypatch, owner,
                                                                                 name, doing):
    """The snapshot written, then the store goes down as the split reads it, or as the checkpoint is
    fetched (without the store a delivery cannot know whether another host left a newer one): the job
    waits untrained, and the next delivery trains on the same snapshot."""
    up, outage = host
    job_id = _job(engine)
    real = outage.starts_at(monkeypatch, owner, name)
    with pytest.raises(Unavailable):
        run_job(job_id, settings=up, worker="w:1")
    job = _queued_for(engine, job_id, doing)
    assert job.snapshot_id is not None and job.progress_step in (None, 0)

    monkeypatch.setattr(owner, name, real)
    outage.end()
    assert run_job(job_id, settings=up, worker="w:1").status == "succeeded"
    assert _published_once(engine, up, job_id).snapshot_id == job.snapshot_id  # the same rows


def test_an_outage_in_the_middle_of_the_publish_leaves_no_version_and_the_retry_publishes_once(host, engine,
                                                                                               monkeypatch):
    """The version's files are uploaded, then the store goes down before the tarball: no version row, the
    job back in the queue; the next delivery publishes v1 whole (the half-uploaded files are never
    referenced), and a third delivery publishes nothing."""
    up, outage = host
    job_id = _job(engine)
    real_upload = adapter_publish.upload_tarball
    half: list[str] = []

    def store_down_after_the_files(store, row, chunks):
        half.append(row.path)
        assert store.list(row.path) and not outage.store.exists(f"{row.path}/.prospect-download.tar.gz")
        outage.start()
        return real_upload(store, row, chunks)

    monkeypatch.setattr(adapter_publish, "upload_tarball", store_down_after_the_files)
    with pytest.raises(Unavailable):
        run_job(job_id, settings=up, worker="w:1")
    _queued_for(engine, job_id, "the adapter's files")
    with session_scope(engine) as s:
        assert s.get(AdapterAlias, ("bot", "latest")) is None

    monkeypatch.setattr(adapter_publish, "upload_tarball", real_upload)
    outage.end()
    assert run_job(job_id, settings=up, worker="w:1").status == "succeeded"
    version = _published_once(engine, up, job_id)
    assert half and version.path != half[0]  # a fresh staging id: the failed upload's objects are orphans
    assert run_job(job_id, settings=up, worker="w:1").claim != "run"  # finished: never published twice
    _published_once(engine, up, job_id)


def test_an_outage_while_keeping_a_refused_adapter_requeues_the_job(host, engine, monkeypatch):
    """The gate refuses, and the store goes down as the refused adapter is kept for a later publish: the
    job waits rather than losing the adapter (and its refusal message to a botocore one); with the store
    back it is refused again, the adapter kept whole."""
    from core import refused

    up, outage = host
    job_id = _job(engine, options={"gate_min_reward_margin": 1e6})
    real_keep = outage.starts_at(monkeypatch, pipeline, "keep_refused")
    with pytest.raises(Unavailable):
        run_job(job_id, settings=up, worker="w:1")
    _queued_for(engine, job_id, "the refused adapter")

    monkeypatch.setattr(pipeline, "keep_refused", real_keep)
    outage.end()
    assert run_job(job_id, settings=up, worker="w:1").status == "failed"
    with session_scope(engine) as s:
        job = s.get(AlignmentJob, job_id)
        assert (job.attempts, job.error.startswith("the gate refused to publish")) == (1, True), job.error
    assert get_store(up).exists(f"refused/{job_id}/{refused.META}")


def test_checkpoint_uploads_and_the_final_delete_failing_do_not_stop_the_job(host, engine, monkeypatch, caplog):
    """The store goes down after step 1: the checkpoints of steps 4 and 8 are not copied (logged) and
    training goes on to the cancel asked at step 10; the cancelled delivery's delete of the store's copy
    fails too, and is logged. Before: the delete's botocore error escaped run_job."""
    up, outage = host
    job_id = _job(engine)
    real_progress = _Run._on_progress

    def outage_then_cancel(self, step, total, metrics):
        real_progress(self, step, total, metrics)
        if step == 1:
            outage.start()
        if step == 10:
            with session_scope(engine) as s:
                jobs.request_cancel(s, job_id=job_id)

    monkeypatch.setattr(_Run, "_on_progress", outage_then_cancel)
    with caplog.at_level(logging.WARNING, logger="worker.checkpoints"):
        assert run_job(job_id, settings=up, worker="w:1").status == "cancelled"
    with session_scope(engine) as s:
        job = s.get(AlignmentJob, job_id)
        assert (job.status, job.progress_step) == ("cancelled", 10)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("could not upload its checkpoint" in m for m in messages) == 2, messages
    assert sum("could not delete its checkpoint" in m for m in messages) == 1, messages
    assert not checkpoint_dir(up, job_id).exists()  # the local copy is gone all the same


def test_a_wrong_bucket_fails_the_job_for_good_with_a_clear_message(host, engine):
    """Not an outage: retrying will not help. Before: the failure's cleanup raised the raw error again."""
    up, _ = host
    wrong = up.model_copy(update={"artifact_url": "s3://no-such-bucket-here/prospect"})
    job_id = _job(engine)
    assert run_job(job_id, settings=wrong, worker="w:1").status == "failed"
    with session_scope(engine) as s:
        job = s.get(AlignmentJob, job_id)
        assert (job.status, job.attempts) == ("failed", 1)
        assert job.error.startswith("the artifact store refused the job's snapshot: "), job.error
        # SeaweedFS answers AccessDenied for a bucket that does not exist (AWS: NoSuchBucket); both are permanent.
        assert "AccessDenied" in job.error and "PROSPECT_ARTIFACT_URL" in job.error, job.error

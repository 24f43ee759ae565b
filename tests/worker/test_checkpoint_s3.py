"""A job whose worker died resumes on another host from the checkpoint in the S3 store (SeaweedFS):
the two deliveries share the database and the bucket, not a disk."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from core import jobs
from core.artifact_store import get_store
from core.base_models import register_base_model
from core.db import session_scope
from core.models import AdapterVersion, AlignmentJob, utcnow
from tests.s3kit import s3_settings
from tests.tiny import build_tiny_model_dir
from tests.worker.jobkit import TINY_CONFIG, api_keys, feedback_events, post_feedback
from worker.checkpoints import CheckpointMirror
from worker.job_dirs import checkpoint_dir
from worker.pipeline import _Run, run_job


class WorkerDied(BaseException):
    """Not an Exception: it escapes run_job as a kill -9 would, leaving the job 'running'."""


@pytest.fixture
def hosts(settings, engine, s3_server, s3_bucket, tmp_path):
    """Host A and host B: one database and one bucket, each its own data folder."""
    a = s3_settings(settings, s3_server, s3_bucket, checkpoint_every_steps=4, data_dir=tmp_path / "host-a")
    b = a.model_copy(update={"data_dir": tmp_path / "host-b"})
    model_dir = build_tiny_model_dir(tmp_path / "tiny")
    post_feedback(TestClient(create_app(a)), api_keys(engine)["ingest"], feedback_events())
    with session_scope(engine) as s:
        register_base_model(s, settings=a, name="tiny", source=str(model_dir))
    return a, b


def _dies_on_host_a(engine, a, monkeypatch, *, processes: int = 1, steps: int = 12) -> str:
    """A job whose delivery on host A dies after step 6 (a checkpoint was written at step 4)."""
    with session_scope(engine) as s:
        job_id = jobs.create_job(s, adapter_name="bot", base_model_name="tiny",
                                 config={**TINY_CONFIG, "processes": processes, "max_steps": steps}).id
    real_progress = _Run._on_progress

    def dies_after_step_6(self, step, total, metrics):
        real_progress(self, step, total, metrics)
        if step == 6 and self.settings.data_dir == a.data_dir:
            raise WorkerDied

    monkeypatch.setattr(_Run, "_on_progress", dies_after_step_6)
    with pytest.raises(WorkerDied):
        run_job(job_id, settings=a, worker="host-a:1")
    return job_id


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-processes"])
def test_a_job_resumes_on_another_host_from_the_store(hosts, engine, monkeypatch, processes):
    """On 2 processes rank 0 writes the checkpoint and the task copies it to the store, as on one."""
    a, b = hosts
    # On 2 processes rank 0 runs on while the task reads its reports (every 0.5 s): enough steps that it
    # cannot have finished, and checkpointed the last step, before the task is killed at step 6.
    steps = 12 if processes == 1 else 60
    job_id = _dies_on_host_a(engine, a, monkeypatch, processes=processes, steps=steps)
    store = get_store(a)
    assert store.exists(f"checkpoints/{job_id}/checkpoint.pt")  # written at step 4, copied to the bucket
    with session_scope(engine) as s:
        reaped = jobs.reap_stale_jobs(s, heartbeat_timeout_s=a.heartbeat_timeout_s,
                                      now=utcnow() + timedelta(seconds=a.heartbeat_timeout_s + 1))
    assert reaped.requeued == [job_id]

    shutil.rmtree(a.data_path)  # host A is gone with its disk
    assert not checkpoint_dir(b, job_id).exists()
    outcome = run_job(job_id, settings=b, worker="host-b:1")
    assert outcome.status == "succeeded"
    with session_scope(engine) as s:
        job = s.get(AlignmentJob, job_id)
        n_versions = s.scalar(select(func.count()).select_from(AdapterVersion))
        version = s.get(AdapterVersion, job.adapter_version_id)
    assert (job.status, job.attempts, job.progress_step) == ("succeeded", 2, steps)
    # One process copies step 4's file before step 6. On two, the task copies the file when it reads rank 0's
    # report, by which time rank 0 may have replaced it with a later one (written atomically): still a resume.
    if processes == 1:
        assert job.resumed_from_step == 4
    else:
        assert job.resumed_from_step % 4 == 0 and 4 <= job.resumed_from_step < steps
    assert n_versions == 1 and version.path.startswith("adapters/bot/1.")
    assert not store.exists(f"checkpoints/{job_id}/checkpoint.pt")  # a finished job's checkpoint is dropped
    assert not checkpoint_dir(b, job_id).exists()


def test_without_the_store_copy_another_host_starts_afresh(hosts, engine, monkeypatch):
    """The same crash, with the checkpoint left only on host A's disk (the local store's behaviour)."""
    a, b = hosts
    monkeypatch.setattr(CheckpointMirror, "push", lambda self, file: None)
    job_id = _dies_on_host_a(engine, a, monkeypatch)
    with session_scope(engine) as s:
        jobs.reap_stale_jobs(s, heartbeat_timeout_s=a.heartbeat_timeout_s,
                             now=utcnow() + timedelta(seconds=a.heartbeat_timeout_s + 1))
    assert run_job(job_id, settings=b, worker="host-b:1").status == "succeeded"
    with session_scope(engine) as s:
        assert s.get(AlignmentJob, job_id).resumed_from_step is None

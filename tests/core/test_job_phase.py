"""A running job says what it does before its first step; the phase is fenced like progress."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from core import jobs
from core.db import make_engine, session_scope
from core.migrate import downgrade, upgrade
from core.models import BaseModelRecord


@pytest.fixture
def job(engine):
    with session_scope(engine) as s:
        s.add(BaseModelRecord(name="tiny", source="/m", path="/m", sha256="0" * 64))
        s.flush()
        job = jobs.create_job(s, adapter_name="bot", base_model_name="tiny")
        return job.id


def test_phases_of_a_run(engine, job):
    with session_scope(engine) as s:
        assert jobs.get_job(s, job_id=job).phase is None  # queued
        token = jobs.claim_job(s, job_id=job, worker="w:1", heartbeat_timeout_s=60).token
        assert jobs.get_job(s, job_id=job).phase == "preparing"
        for phase in ("loading model", "reference pass 8/16"):
            jobs.set_phase(s, job_id=job, token=token, phase=phase)
            assert jobs.get_job(s, job_id=job).phase == phase
        jobs.record_progress(s, job_id=job, token=token, step=1, total=2, metrics={"loss": 0.5}, attempt=1)
        assert jobs.get_job(s, job_id=job).phase == "training"
        jobs.set_phase(s, job_id=job, token=token, phase="evaluating")
        with pytest.raises(ValueError, match="unknown phase"):
            jobs.set_phase(s, job_id=job, token=token, phase="napping")
        jobs.succeed(s, job_id=job, token=token, adapter_version_id=None)
        assert jobs.get_job(s, job_id=job).phase is None


def test_a_stale_delivery_cannot_set_the_phase(engine, job):
    with session_scope(engine) as s:
        jobs.claim_job(s, job_id=job, worker="w:1", heartbeat_timeout_s=60)
    with session_scope(engine) as s, pytest.raises(jobs.LostClaim):
        jobs.set_phase(s, job_id=job, token="not-the-token", phase="training")


def test_migration_0005_down_and_up(db_url):
    engine = make_engine(db_url)
    try:
        downgrade(db_url, "0004_live_loop")
        assert "phase" not in {c["name"] for c in inspect(engine).get_columns("alignment_jobs")}
        upgrade(db_url)
        assert "phase" in {c["name"] for c in inspect(engine).get_columns("alignment_jobs")}
    finally:
        engine.dispose()

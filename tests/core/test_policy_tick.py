"""The beat tick: a job per due policy, watermark and interval respected, no second active job."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from core import jobs
from core.db import session_scope
from core.keys import create_key
from core.models import AlignmentJob, BaseModelRecord, Snapshot, TrainingPolicy, Vote, utcnow
from core.policy_tick import tick_policies


@pytest.fixture
def api(settings, engine):
    with session_scope(engine) as s:
        s.add(BaseModelRecord(name="tiny", source="/m", path="/m", sha256="0" * 64))
        _, key = create_key(s, name="i", scopes="ingest")
    client = TestClient(create_app(settings))
    client.headers["Authorization"] = f"Bearer {key}"
    return client


def _votes(api, start: int, n: int) -> None:
    events = [{"event_id": f"e{i}", "prompt": f"q{i}", "response": "r", "label": "up" if i % 2 else "down"}
              for i in range(start, start + n)]
    assert api.post("/v1/feedback/batch", json={"events": events}).json()["created"] == n


def _policy(engine, **kwargs) -> str:
    with session_scope(engine) as s:
        base_id = s.scalar(select(BaseModelRecord.id))
        policy = TrainingPolicy(adapter_name=kwargs.pop("adapter", "bot"), base_model_id=base_id,
                                config={"beta": 0.2}, **kwargs)
        s.add(policy)
        s.flush()
        return policy.id


def test_tick_queues_a_job_when_enough_new_feedback_and_respects_interval(api, settings, engine):
    policy_id = _policy(engine, min_new_feedback=5, min_interval_minutes=60)
    _policy(engine, adapter="off", min_new_feedback=1, enabled=False)
    _votes(api, 0, 4)
    assert tick_policies(engine, settings=settings) == []  # 4 < 5

    _votes(api, 4, 2)
    now = utcnow()
    [job_id] = tick_policies(engine, settings=settings, now=now)
    with session_scope(engine) as s:
        job = s.get(AlignmentJob, job_id)
        policy = s.get(TrainingPolicy, policy_id)
        snapshot = s.get(Snapshot, job.snapshot_id)
        max_vote = s.scalar(select(func.max(Vote.id)))
        assert (job.status, job.adapter_name, job.policy_id, job.config) == ("queued", "bot", policy_id, {"beta": 0.2})
        assert (snapshot.n_desirable, snapshot.n_undesirable) == (3, 3)
        assert (policy.last_job_id, policy.last_vote_watermark, policy.last_triggered_at) == (job_id, max_vote, now)

    # An active job of the adapter blocks the next one, even with enough new votes and the interval passed.
    _votes(api, 6, 5)
    assert tick_policies(engine, settings=settings, now=now + timedelta(minutes=61)) == []
    with session_scope(engine) as s:
        jobs.request_cancel(s, job_id=job_id)
    # Finished, enough new votes, but the interval has not passed.
    assert tick_policies(engine, settings=settings, now=now + timedelta(minutes=30)) == []
    [second] = tick_policies(engine, settings=settings, now=now + timedelta(minutes=61))
    with session_scope(engine) as s:
        assert s.get(Snapshot, s.get(AlignmentJob, second).snapshot_id).n_rows == 11
        assert s.scalar(select(func.count()).select_from(AlignmentJob)) == 2
    # No new votes since: nothing more.
    with session_scope(engine) as s:
        jobs.request_cancel(s, job_id=second)
    assert tick_policies(engine, settings=settings, now=now + timedelta(days=1)) == []

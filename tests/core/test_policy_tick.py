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


def _bulk_votes_sqlite(path: str, n: int) -> None:
    """``n`` anonymous events, each its own counted vote, written straight into the SQLite file."""
    import sqlite3

    t0 = utcnow().replace(tzinfo=None) - timedelta(days=1)
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO feedback_events (id, event_id, content_hash, prompt, prompt_key, pair_key, response, "
            "label, created_at, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((i, f"bulk-{i}", f"{i:064x}", f"question {i} " * 8, f"{i:064x}", f"{i:064x}", f"answer {i} " * 16,
              i % 3 != 0, t0, t0) for i in range(1, n + 1)))
        conn.executemany(
            "INSERT INTO votes (voter_key, pair_key, prompt_key, event_pk, label, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            ((f"event:bulk-{i}", f"{i:064x}", f"{i:064x}", i, i % 3 != 0, t0, t0) for i in range(1, n + 1)))
    conn.close()


def test_ingestion_never_waits_on_a_policy_snapshot(settings, monkeypatch):
    """Embedded default: while a policy snapshots 100,000 events, feedback POSTs all succeed. The old
    tick built the snapshot inside the policy's transaction, i.e. under SQLite's write lock; with a
    250 ms busy timeout (30 s in production) every POST in that window was a 503."""
    import threading

    import core.db
    from core.db import make_engine

    monkeypatch.setattr(core.db, "SQLITE_BUSY_TIMEOUT_MS", 250)
    if not settings.sqlalchemy_url.startswith("sqlite"):
        pytest.skip("the write lock that ingestion would wait on is SQLite's")
    _bulk_votes_sqlite(settings.sqlalchemy_url.removeprefix("sqlite:///"), 100_000)
    engine = make_engine(settings.sqlalchemy_url)
    with session_scope(engine) as s:
        s.add(BaseModelRecord(name="tiny", source="/m", path="/m", sha256="0" * 64))
        _, key = create_key(s, name="i", scopes="ingest")
    policy_id = _policy(engine, min_new_feedback=1)
    client = TestClient(create_app(settings))
    client.headers["Authorization"] = f"Bearer {key}"

    result = {}
    tick = threading.Thread(target=lambda: result.update(jobs=tick_policies(engine, settings=settings)))
    statuses, during = [], 0
    tick.start()
    i = 0
    while tick.is_alive():
        resp = client.post("/v1/feedback", json={"event_id": f"live-{i}", "prompt": f"p{i}", "response": "r",
                                                 "label": "up"})
        statuses.append(resp.status_code)
        during += tick.is_alive()
        i += 1
    tick.join()
    assert len(result["jobs"]) == 1 and during >= 5, (result, during)
    assert set(statuses) == {201}, [s for s in statuses if s != 201][:3]
    with session_scope(engine) as s:
        job = s.get(AlignmentJob, result["jobs"][0])
        snapshot = s.get(Snapshot, job.snapshot_id)
        assert s.get(TrainingPolicy, policy_id).last_job_id == job.id
    assert snapshot.n_rows >= 100_000
    engine.dispose()


def test_policy_snapshots_take_the_policy_filters(api, settings, engine):
    events = [{"event_id": f"m{i}", "prompt": f"q{i}", "response": "r", "label": "up", "model": model}
              for i, model in enumerate(["shop-bot"] * 3 + ["help-bot"] * 2)]
    assert api.post("/v1/feedback/batch", json={"events": events}).json()["created"] == 5
    _policy(engine, min_new_feedback=1, snapshot_filters={"model": "help-bot"})
    (job_id,) = tick_policies(engine, settings=settings)
    with session_scope(engine) as s:
        snapshot = s.get(Snapshot, s.get(AlignmentJob, job_id).snapshot_id)
    assert (snapshot.filters["model"], snapshot.n_rows) == ("help-bot", 2)

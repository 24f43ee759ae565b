"""Who did what: the key behind each job, snapshot, policy, base model and alias move; keys' last use, coalesced."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from sqlalchemy import event, select

from api import auth
from api.main import create_app
from core.adapters import publish_adapter_version
from core.db import session_factory, session_scope
from core.keys import revoke_key
from core.models import ApiKey, BaseModelRecord
from tests.api_client import make_api
from tests.artifacts import make_model_dir, make_staged


def _key_ids(engine) -> dict[str, int]:
    with session_scope(engine) as s:
        return {k.name: k.id for k in s.scalars(select(ApiKey))}


def _settle(app) -> None:
    """Wait (bounded) for the background last_used_at writes."""
    for _ in range(500):
        if not app.state.authenticator.usage.pending:
            return
        time.sleep(0.01)
    raise AssertionError("last_used_at writes did not finish")


def test_every_created_row_names_its_key(settings, tmp_path):
    client, h = make_api(settings)
    engine = client.app.state.engine
    ids = _key_ids(engine)
    r = client.post("/v1/base-models", json={"name": "base", "source": str(make_model_dir(tmp_path / "m"))},
                    headers=h["admin"])
    assert r.json()["created_by_key_id"] == ids["admin"]
    snap = client.post("/v1/snapshots", json={}, headers=h["train"]).json()
    assert snap["created_by_key_id"] == ids["train"]
    assert client.get(f"/v1/snapshots/{snap['id']}", headers=h["read"]).json()["created_by_key_id"] == ids["train"]
    job = client.post("/v1/jobs", json={"adapter": "chat", "base_model": "base"}, headers=h["train"]).json()
    assert job["created_by_key_id"] == ids["train"]
    assert client.get(f"/v1/jobs/{job['id']}", headers=h["read"]).json()["created_by_key_id"] == ids["train"]
    policy = client.post("/v1/policies", json={"adapter": "other", "base_model": "base"}, headers=h["admin"]).json()
    assert policy["created_by_key_id"] == ids["admin"]
    assert client.get(f"/v1/policies/{policy['id']}", headers=h["read"]).json()["created_by_key_id"] == ids["admin"]

    with session_scope(engine) as s:
        base = s.scalar(select(BaseModelRecord))
    publish_adapter_version(session_factory(engine), settings=settings, adapter_name="chat",
                            staged_dir=make_staged(tmp_path / "s"), job_id=None, base_model=base, snapshot=None,
                            hyperparameters={}, class_counts={}, class_weights={}, eval_metrics={})
    assert client.put("/v1/adapters/chat/aliases/champion", json={"version": 1}, headers=h["train"]).status_code == 200
    history = client.get("/v1/adapters/chat/aliases/champion/history", headers=h["read"]).json()
    assert history[-1]["moved_by"] == f"key {ids['train']} (train)"


def test_last_used_at_is_written_once_per_key_per_minute_across_processes(settings, monkeypatch):
    client, h = make_api(settings)
    engine = client.app.state.engine
    other = TestClient(create_app(settings))  # a second API process on the same database
    now = [1000.0]
    for app in (client.app, other.app):
        app.state.authenticator.usage.clock = lambda: now[0]
    updates = []

    def count(conn, cursor, statement, *args):
        if statement.startswith("UPDATE api_keys"):
            updates.append(statement)

    for eng in {engine, other.app.state.engine}:  # one engine when both apps share the cached one
        event.listen(eng, "before_cursor_execute", count)

    def used() -> dict[str, object]:
        with session_scope(engine) as s:
            return {k.name: k.last_used_at for k in s.scalars(select(ApiKey))}

    assert used()["read"] is None
    for _ in range(30):
        assert client.get("/v1/feedback/stats", headers=h["read"]).status_code == 200
    _settle(client.app)
    first = used()["read"]
    assert first is not None and len(updates) == 1
    for _ in range(10):  # the other process writes once too, but the row was written within the minute: no change
        assert other.get("/v1/feedback/stats", headers=h["read"]).status_code == 200
    _settle(other.app)
    assert len(updates) == 2 and used()["read"] == first
    now[0] += auth.LAST_USED_EVERY_S + 1
    for _ in range(5):
        client.get("/v1/feedback/stats", headers=h["read"])
    _settle(client.app)
    assert len(updates) == 3 and used()["ingest"] is None


def test_a_revoked_key_stops_within_the_cache_lifetime(settings, monkeypatch):
    client, h = make_api(settings)
    engine = client.app.state.engine
    assert client.get("/v1/feedback/stats", headers=h["read"]).status_code == 200
    with session_scope(engine) as s:
        revoke_key(s, key_id=_key_ids(engine)["read"])
    fresh = TestClient(create_app(settings))
    assert fresh.get("/v1/feedback/stats", headers=h["read"]).status_code == 401  # no cached acceptance there
    assert client.get("/v1/feedback/stats", headers=h["read"]).status_code == 200  # still cached here
    later = time.monotonic() + auth.AUTH_CACHE_TTL_S + 1
    monkeypatch.setattr(auth.time, "monotonic", lambda: later)
    assert client.get("/v1/feedback/stats", headers=h["read"]).status_code == 401


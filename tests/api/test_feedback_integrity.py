"""Who may retract, future timestamps, namespaced voters, full-match ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.api_client import make_api


def ev(**kw) -> dict:
    return {"event_id": "e1", "prompt": "What is 2+2?", "response": "4", "label": "up", **kw}


@pytest.fixture
def api(settings):
    return make_api(settings)


def _ingest_key(client, name: str) -> dict:
    from core.db import session_scope
    from core.keys import create_key

    with session_scope(client.app.state.engine) as s:
        return {"Authorization": f"Bearer {create_key(s, name=name, scopes='ingest')[1]}"}


def test_only_the_creator_or_train_admin_may_retract(api):
    client, h = api
    other = _ingest_key(client, "other-ingest")
    assert client.post("/v1/feedback", json=ev(), headers=h["ingest"]).status_code == 201
    assert client.post("/v1/feedback", json=ev(event_id="e2"), headers=h["ingest"]).status_code == 201
    # Another ingest key: the same 404 as for an id that does not exist, and nothing changes.
    r = client.delete("/v1/feedback/e1", headers=other)
    assert r.status_code == 404 and "no feedback event" in r.json()["detail"]
    assert client.get("/v1/feedback/e1", headers=h["read"]).json()["retracted_at"] is None
    assert client.delete("/v1/feedback/e1", headers=h["ingest"]).status_code == 200
    assert client.delete("/v1/feedback/e2", headers=h["train"]).status_code == 200
    assert client.get("/v1/feedback/stats", headers=h["read"]).json()["total"] == 0


def test_created_at_in_the_future_is_422(api):
    client, h = api
    soon = (datetime.now(UTC) + timedelta(minutes=4)).isoformat()
    later = (datetime.now(UTC) + timedelta(minutes=6)).isoformat()
    assert client.post("/v1/feedback", json=ev(created_at=soon), headers=h["ingest"]).status_code == 201
    r = client.post("/v1/feedback", json=ev(event_id="e2", created_at=later), headers=h["ingest"])
    assert r.status_code == 422 and "created_at" in r.json()["detail"]
    r = client.post("/v1/feedback/batch", json={"events": [ev(event_id="e3", created_at="2999-01-01T00:00:00Z")]},
                    headers=h["ingest"])
    assert r.json()["results"][0]["status"] == "invalid" and "created_at" in r.json()["results"][0]["error"]


def test_a_user_named_like_an_anonymous_voter_does_not_replace_its_vote(api):
    client, h = api
    assert client.post("/v1/feedback", json=ev(event_id="x"), headers=h["ingest"]).status_code == 201
    r = client.post("/v1/feedback", json=ev(event_id="y", user_id="event:x", label="down"), headers=h["ingest"])
    assert r.status_code == 201
    stats = client.get("/v1/feedback/stats", headers=h["read"]).json()
    assert (stats["up"], stats["down"]) == (1, 1)
    assert client.get("/v1/feedback/x", headers=h["read"]).json()["counted"] is True


def test_event_id_must_match_in_full(api):
    client, h = api
    r = client.post("/v1/feedback", json=ev(event_id="abc\n"), headers=h["ingest"])
    assert r.status_code == 422 and "event_id" in r.json()["detail"]

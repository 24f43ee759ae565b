"""/v1/feedback over HTTP, on SQLite and Postgres: every status code the endpoints answer."""

from __future__ import annotations

import json
import os

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from api.main import create_app
from core import feedback_write
from core.db import session_scope
from core.keys import create_key
from core.models import FeedbackEvent, Vote
from core.settings import Settings

REDIS_URL = os.environ.get("PROSPECT_TEST_REDIS_URL")


def make_client(settings: Settings) -> tuple[TestClient, dict[str, dict[str, str]]]:
    app = create_app(settings)
    headers = {}
    with session_scope(app.state.engine) as s:
        for scope in ("ingest", "read", "train"):
            headers[scope] = {"Authorization": f"Bearer {create_key(s, name=scope, scopes=scope)[1]}"}
    return TestClient(app), headers


@pytest.fixture
def api(settings):
    return make_client(settings)


def ev(**kw) -> dict:
    base = {"event_id": "e1", "prompt": "What is 2+2?", "response": "4", "label": "up"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not ...}


def count(client: TestClient, table=FeedbackEvent) -> int:
    with client.app.state.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(table))


def test_create_duplicate_conflict(api):
    client, h = api
    r = client.post("/v1/feedback", json=ev(user_id="u1", metadata={"b": 1, "a": [1, 2]}), headers=h["ingest"])
    assert (r.status_code, r.json()) == (201, {"event_id": "e1", "status": "created"})
    # Same content, keys in another order: a duplicate, nothing written.
    again = {"label": "up", "response": "4", "metadata": {"a": [1, 2], "b": 1}, "user_id": "u1",
             "prompt": "What is 2+2?", "event_id": "e1"}
    r = client.post("/v1/feedback", content=json.dumps(again), headers=h["ingest"])
    assert (r.status_code, r.json()) == (200, {"event_id": "e1", "status": "duplicate"})
    r = client.post("/v1/feedback", json=ev(user_id="u1", label="down"), headers=h["ingest"])
    assert r.status_code == 409
    assert "e1" in r.json()["detail"]
    assert count(client) == 1 and count(client, Vote) == 1


def test_without_event_id_the_server_derives_one_from_the_content(api):
    client, h = api
    # A client retry without an id is a duplicate, not a second vote (was: a random id each time).
    first = client.post("/v1/feedback", json=ev(event_id=...), headers=h["ingest"])
    retry = client.post("/v1/feedback", json=ev(event_id=...), headers=h["ingest"])
    assert (first.status_code, retry.status_code) == (201, 200)
    assert first.json()["event_id"] == retry.json()["event_id"] and retry.json()["status"] == "duplicate"
    other = client.post("/v1/feedback", json=ev(event_id=..., user_id="u2"), headers=h["ingest"])
    assert other.status_code == 201 and other.json()["event_id"] != first.json()["event_id"]
    assert count(client) == 2


def test_auth_401_and_403(api):
    client, h = api
    assert client.post("/v1/feedback", json=ev()).status_code == 401
    r = client.post("/v1/feedback", json=ev(), headers={"Authorization": "Bearer pk_nope"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.post("/v1/feedback", json=ev(), headers=h["read"])
    assert r.status_code == 403 and "ingest" in r.json()["detail"]
    assert client.get("/v1/feedback/stats", headers=h["ingest"]).status_code == 403
    assert client.get("/v1/feedback/stats", headers=h["read"]).status_code == 200
    assert count(client) == 0


DEEP = {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}


@pytest.mark.parametrize(
    "body,field",
    [
        (ev(label="meh"), "label"),
        (ev(label=True), "label"),
        (ev(messages=[{"role": "user", "content": "hi"}]), "prompt"),
        (ev(prompt=None), "prompt"),
        (ev(prompt=..., messages=[{"role": "robot", "content": "hi"}]), "messages.0.role"),
        (ev(prompt=..., messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]),
         "messages"),
        (ev(prompt=..., messages=[]), "messages"),
        (ev(response=""), "response"),
        (ev(response="   "), "response"),
        (ev(response=...), "response"),
        (ev(response="a\x00b"), "response"),
        (ev(prompt="a\x00b"), "prompt"),
        (ev(metadata={"k": "a\x00"}), "metadata"),
        (ev(metadata=DEEP), "metadata"),
        (ev(metadata={"blob": "x" * 20_000}), "metadata"),
        (ev(metadata=[1, 2]), "metadata"),
        (ev(event_id="a/b"), "event_id"),
        (ev(event_id="stats"), "event_id"),
        (ev(user_id="u" * 201), "user_id"),
        (ev(lable="up"), "lable"),
        (ev(created_at="0001-01-01T00:00:00+05:00"), "created_at"),
        (ev(created_at="yesterday"), "created_at"),
    ],
)
def test_bad_input_is_422_naming_the_field(api, body, field):
    client, h = api
    r = client.post("/v1/feedback", json=body, headers=h["ingest"])
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]
    assert count(client) == 0


@pytest.mark.parametrize(
    "raw",
    [b'{"prompt": "\xff\xfe", "response": "r", "label": "up"}',
     b'{"prompt": "\\ud800", "response": "r", "label": "up"}',
     b"{not json", b"", b"[1, 2]", b"null"],
)
def test_undecodable_bodies_are_4xx(api, raw):
    client, h = api
    r = client.post("/v1/feedback", content=raw, headers={**h["ingest"], "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert "body" in r.json()["detail"] or "event" in r.json()["detail"]


def test_size_limits_are_413(tmp_path, db_url):
    settings = Settings(data_dir=tmp_path / "v", database_url=db_url, max_text_bytes=100, max_batch_events=3,
                        max_body_bytes=2048, broker_url=f"sqla+sqlite:///{tmp_path / 'b.db'}")
    client, h = make_client(settings)
    r = client.post("/v1/feedback", json=ev(response="é" * 51), headers=h["ingest"])  # 102 bytes
    assert r.status_code == 413 and "response" in r.json()["detail"]
    r = client.post("/v1/feedback", json=ev(prompt=..., messages=[{"role": "user", "content": "x" * 101}]),
                    headers=h["ingest"])
    assert r.status_code == 413 and "messages.0.content" in r.json()["detail"]
    # Declared too large: refused from the header alone.
    r = client.post("/v1/feedback", content=b"{}", headers={**h["ingest"], "Content-Length": "4096"})
    assert r.status_code == 413
    # No Content-Length (chunked): refused from the bytes received.
    big = json.dumps(ev(metadata={"k": "x" * 3000})).encode()
    r = client.post("/v1/feedback", content=iter([big[:1000], big[1000:]]), headers=h["ingest"])
    assert r.status_code == 413 and "body" in r.json()["detail"]
    r = client.post("/v1/feedback/batch", json={"events": [ev(event_id=f"b{i}") for i in range(4)]},
                    headers=h["ingest"])
    assert r.status_code == 413 and "events" in r.json()["detail"]
    # In a batch, an oversized field makes that item invalid, not the batch.
    r = client.post("/v1/feedback/batch", json={"events": [ev(event_id="ok"), ev(event_id="big", response="x" * 101)]},
                    headers=h["ingest"])
    assert r.status_code == 200
    assert [x["status"] for x in r.json()["results"]] == ["created", "invalid"]
    assert count(client) == 1


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_rate_limit_429_with_retry_after(tmp_path, db_url, backend):
    if backend == "redis" and not REDIS_URL:
        pytest.skip("PROSPECT_TEST_REDIS_URL is not set")
    settings = Settings(data_dir=tmp_path / "v", database_url=db_url, rate_limit_per_second=0.5, rate_limit_burst=2,
                        broker_url=f"sqla+sqlite:///{tmp_path / 'b.db'}",
                        redis_url=REDIS_URL if backend == "redis" else None)
    client, h = make_client(settings)
    codes = [client.post("/v1/feedback", json=ev(event_id=f"r{i}"), headers=h["ingest"]).status_code
             for i in range(3)]
    assert codes == [201, 201, 429]
    r = client.post("/v1/feedback", json=ev(event_id="r9"), headers=h["ingest"])
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    # The bucket is per key: another key is not limited.
    assert client.get("/v1/feedback/stats", headers=h["read"]).status_code == 200
    assert count(client) == 2


def test_batch_results_in_order(api):
    client, h = api
    client.post("/v1/feedback", json=ev(event_id="old"), headers=h["ingest"])
    events = [
        ev(event_id="a"),
        ev(event_id="old"),                      # duplicate of the stored one
        ev(event_id="old", label="down"),        # conflict with the stored one
        ev(event_id="b", label="sideways"),      # invalid (schema)
        ev(event_id="c", prompt=None),           # invalid (domain)
        ev(event_id="a"),                        # duplicate inside the batch
        ev(event_id="a", response="5"),          # conflict inside the batch
        "not an object",
        ev(event_id="d", user_id="u"),
    ]
    r = client.post("/v1/feedback/batch", json={"events": events}, headers=h["ingest"])
    assert r.status_code == 200
    body = r.json()
    assert [(x["index"], x["event_id"], x["status"]) for x in body["results"]] == [
        (0, "a", "created"), (1, "old", "duplicate"), (2, "old", "conflict"), (3, "b", "invalid"),
        (4, "c", "invalid"), (5, "a", "duplicate"), (6, "a", "conflict"), (7, None, "invalid"),
        (8, "d", "created"),
    ]
    assert "label" in body["results"][3]["error"] and "prompt" in body["results"][4]["error"]
    assert (body["created"], body["duplicate"], body["conflict"], body["invalid"]) == (2, 2, 2, 3)
    assert count(client) == 3
    # Re-sending the batch writes nothing more.
    again = client.post("/v1/feedback/batch", json={"events": events}, headers=h["ingest"]).json()
    assert again["created"] == 0 and count(client) == 3


@pytest.mark.parametrize("body", [[ev()], {"events": ev()}, {"events": [], "x": 1}, {}])
def test_batch_bad_envelope_is_422(api, body):
    client, h = api
    r = client.post("/v1/feedback/batch", json=body, headers=h["ingest"])
    assert r.status_code == 422 and "events" in r.json()["detail"]


def test_get_and_retract(api):
    client, h = api
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    client.post("/v1/feedback", json=ev(prompt=None, messages=msgs, model="m@1", created_at="2025-01-01T10:00:00+02:00"),
                headers=h["ingest"])
    r = client.get("/v1/feedback/e1", headers=h["read"])
    assert r.status_code == 200
    got = r.json()
    assert got["messages"] == msgs and got["label"] == "up" and got["counted"] is True
    assert got["created_at"].startswith("2025-01-01T08:00:00") and got["retracted_at"] is None
    assert client.get("/v1/feedback/nope", headers=h["read"]).status_code == 404
    assert client.delete("/v1/feedback/e1", headers=h["read"]).status_code == 403
    r = client.delete("/v1/feedback/e1", headers=h["ingest"])
    assert r.status_code == 200 and r.json()["status"] == "retracted"
    first = r.json()["retracted_at"]
    assert client.delete("/v1/feedback/e1", headers=h["ingest"]).json()["retracted_at"] == first
    got = client.get("/v1/feedback/e1", headers=h["read"]).json()
    assert got["retracted_at"] is not None and got["counted"] is False
    assert client.delete("/v1/feedback/nope", headers=h["ingest"]).status_code == 404
    assert count(client) == 1 and count(client, Vote) == 0


def _export(client, h, **params) -> list[dict]:
    r = client.get("/v1/feedback/export", params=params, headers=h["read"])
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines()]


def test_revote_and_retraction_change_stats_and_export(api):
    client, h = api
    post = lambda **kw: client.post("/v1/feedback", json=ev(**kw), headers=h["ingest"])
    post(event_id="u1-a", user_id="u1", label="up", created_at="2025-01-01T00:00:00Z", model="m1")
    post(event_id="u2-a", user_id="u2", label="up", created_at="2025-01-01T00:00:00Z", model="m1")
    post(event_id="anon", label="down", response="5", created_at="2025-01-02T00:00:00Z", model="m2")
    stats = client.get("/v1/feedback/stats", headers=h["read"]).json()
    assert (stats["up"], stats["down"], stats["total"]) == (2, 1, 3)
    # u1 changes their mind: the newer vote counts, the old event is kept.
    post(event_id="u1-b", user_id="u1", label="down", created_at="2025-01-01T01:00:00Z", model="m1")
    # An older vote arriving late does not override it.
    post(event_id="u1-late", user_id="u1", label="up", created_at="2024-12-31T00:00:00Z", model="m1")
    stats = client.get("/v1/feedback/stats", headers=h["read"]).json()
    assert stats == {"up": 1, "down": 2, "total": 3, "by_model": [
        {"model": "m1", "up": 1, "down": 1, "total": 2}, {"model": "m2", "up": 0, "down": 1, "total": 1}]}
    assert count(client) == 5
    client.delete("/v1/feedback/u2-a", headers=h["ingest"])
    stats = client.get("/v1/feedback/stats", headers=h["read"]).json()
    assert (stats["up"], stats["down"]) == (0, 2)
    assert sorted(map(json.dumps, _export(client, h))) == sorted(map(json.dumps, [
        {"prompt": "What is 2+2?", "completion": "4", "label": False},
        {"prompt": "What is 2+2?", "completion": "5", "label": False}]))
    # Filters: model, since (inclusive), until (exclusive).
    assert client.get("/v1/feedback/stats", params={"model": "m2"}, headers=h["read"]).json()["total"] == 1
    assert len(_export(client, h, model="m1")) == 1
    assert len(_export(client, h, since="2025-01-02T00:00:00Z")) == 1
    assert len(_export(client, h, until="2025-01-02T00:00:00Z")) == 1
    r = client.get("/v1/feedback/stats", params={"since": "garbage"}, headers=h["read"])
    assert r.status_code == 422 and "since" in r.json()["detail"]
    assert client.get("/v1/feedback/export", params={"format": "csv"}, headers=h["read"]).status_code == 422


def test_export_streams_many_rows_with_messages(api):
    client, h = api
    msgs = [{"role": "user", "content": "hi"}]
    events = [ev(event_id=f"x{i}", prompt=None, messages=msgs, response=f"r{i}", label="up" if i % 3 else "down")
              for i in range(1000)]
    assert client.post("/v1/feedback/batch", json={"events": events}, headers=h["ingest"]).json()["created"] == 1000
    rows = _export(client, h)
    assert len(rows) == 1000
    assert rows[0] == {"prompt": msgs, "completion": "r0", "label": False}
    assert sum(r["label"] for r in rows) == 666


def test_import_kto_and_paired(api):
    client, h = api
    lines = [
        {"prompt": "p1", "completion": "c1", "label": True},
        {"prompt": [{"role": "user", "content": "p2"}], "completion": "c2", "label": False},
        {"prompt": "p3", "chosen": "good", "rejected": "bad"},
        {"prompt": "p4", "completion": "c4", "label": "yes"},
        {"what": 1},
    ]
    body = "\n".join(json.dumps(x) for x in lines) + "\n{broken\n"
    r = client.post("/v1/feedback/import", content=body, params={"model": "seed"},
                    headers={**h["ingest"], "Content-Type": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["rows"], out["events"], out["created"], out["invalid"]) == (6, 4, 4, 3)
    assert [e["line"] for e in out["errors"]] == [4, 5, 6]
    assert "label" in out["errors"][0]["message"]
    exported = _export(client, h)
    assert {(json.dumps(x["prompt"]), x["completion"], x["label"]) for x in exported} == {
        ('"p1"', "c1", True), ('[{"role": "user", "content": "p2"}]', "c2", False),
        ('"p3"', "good", True), ('"p3"', "bad", False)}
    stats = client.get("/v1/feedback/stats", headers=h["read"]).json()
    assert stats["by_model"] == [{"model": "seed", "up": 2, "down": 2, "total": 4}]
    # Importing the same rows again (as a JSON list this time) stores nothing new.
    r = client.post("/v1/feedback/import", json=lines[:3], params={"model": "seed"}, headers=h["ingest"])
    assert (r.json()["created"], r.json()["duplicate"]) == (0, 4)
    assert count(client) == 4
    assert client.post("/v1/feedback/import", content=b"[{", headers=h["ingest"]).status_code == 422
    assert client.post("/v1/feedback/import", content=b"", headers=h["read"]).status_code == 403


def test_database_down_is_503_with_retry_after(tmp_path):
    settings = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://postgres@127.0.0.1:1/x?connect_timeout=1",
                        broker_url=f"sqla+sqlite:///{tmp_path / 'b.db'}")
    client = TestClient(create_app(settings))
    for method, path in [("post", "/v1/feedback"), ("get", "/v1/feedback/stats"), ("get", "/v1/feedback/export")]:
        r = client.request(method, path, json=ev(), headers={"Authorization": "Bearer pk_x"})
        assert r.status_code == 503, (path, r.text)
        assert r.headers["retry-after"] == "5"


def test_failure_mid_transaction_writes_nothing(api, monkeypatch):
    client, h = api
    # Warm the key cache first, then make the second statement of the transaction fail.
    assert client.get("/v1/feedback/stats", headers=h["ingest"]).status_code == 403
    client.post("/v1/feedback", json=ev(event_id="w"), headers=h["ingest"])

    def boom(*a, **k):
        raise OperationalError("INSERT INTO votes", {}, Exception("server closed the connection unexpectedly"))

    def insert_then_boom(engine, p):
        # The one-statement Postgres path: the write happens, then the connection dies before COMMIT.
        with engine.begin() as conn:
            conn.execute(feedback_write._PG_INGEST_ONE, {**p.row, "voter_key": p.voter_key})
            boom()

    monkeypatch.setattr(feedback_write, "_upsert_votes", boom)
    monkeypatch.setattr(feedback_write, "_ingest_one_pg", insert_then_boom)
    r = client.post("/v1/feedback", json=ev(event_id="x"), headers=h["ingest"])
    assert r.status_code == 503 and r.headers["retry-after"]
    r = client.post("/v1/feedback/batch", json={"events": [ev(event_id="y"), ev(event_id="z")]}, headers=h["ingest"])
    assert r.status_code == 503
    assert count(client) == 1 and count(client, Vote) == 1

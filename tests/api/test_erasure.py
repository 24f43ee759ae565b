"""DELETE /v1/users/{user_id}/feedback: the user's texts leave the database and the snapshot files, their votes
stop counting, the snapshots stay verifiable, and the answer names the versions trained on the erased rows."""

from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import select, text

from core import erasure
from core.adapters import publish_adapter_version
from core.base_models import register_base_model
from core.db import session_factory, session_scope
from core.models import Snapshot
from core.snapshots import iter_snapshot_rows, snapshot_path
from tests.api_client import make_api
from tests.artifacts import make_model_dir, make_staged

SECRET = "alice's secret prompt"
CHAT = [{"role": "user", "content": "alice's private chat"}]


def _ev(event_id: str, user: str | None, label: str, **content) -> dict:
    return {"event_id": event_id, "user_id": user, "label": label, "metadata": {"team": "x"}, **content}


@pytest.fixture
def world(settings, tmp_path):
    client, h = make_api(settings)
    engine = client.app.state.engine

    def post(ev):
        r = client.post("/v1/feedback", json=ev, headers=h["ingest"])
        assert r.status_code in (200, 201), r.text
        return r

    post(_ev("b1", "bob", "up", prompt="bob's prompt", response="bob's answer"))
    before = client.post("/v1/snapshots", json={"options": {"aggregation": "all"}}, headers=h["train"]).json()
    post(_ev("a1", "alice", "up", prompt=SECRET, response="answer one"))
    post(_ev("a2", "alice", "down", messages=CHAT, response="answer two"))
    post(_ev("n1", None, "down", prompt="anonymous prompt", response="answer three"))
    after = client.post("/v1/snapshots", json={"options": {"aggregation": "all"}}, headers=h["train"]).json()
    assert (before["n_rows"], after["n_rows"]) == (1, 4)
    with session_scope(engine) as s:
        base = register_base_model(s, settings=settings, name="base", source=str(make_model_dir(tmp_path / "m")))
        snap = s.get(Snapshot, after["id"])
    publish_adapter_version(session_factory(engine), settings=settings, adapter_name="chat",
                            staged_dir=make_staged(tmp_path / "s"), job_id=None, base_model=base, snapshot=snap,
                            hyperparameters={}, class_counts={}, class_weights={}, eval_metrics={})
    return {"client": client, "h": h, "engine": engine, "before": before, "after": after, "post": post,
            "settings": settings}


def test_erasure_removes_texts_votes_and_snapshot_rows(world):
    client, h, engine, settings = world["client"], world["h"], world["engine"], world["settings"]
    after_id, before_id = world["after"]["id"], world["before"]["id"]
    url = "/v1/users/alice/feedback"
    assert client.delete(url).status_code == 401
    assert client.delete(url, headers=h["train"]).status_code == 403

    r = client.delete(url, headers=h["admin"])
    assert r.status_code == 200, r.text
    assert r.json() == {
        "user_id": "alice", "events": 2, "events_erased": 2, "votes_removed": 2,
        "snapshots_redacted": [{"snapshot_id": after_id, "rows_removed": 2}], "snapshot_rows_removed": 2,
        "adapter_versions": [{"adapter": "chat", "version": 1, "snapshot_id": after_id}],
    }

    # The database holds none of the texts or metadata; the ids stay.
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT event_id, prompt, messages, response, metadata, erased_at IS NOT NULL "
                                 "FROM feedback_events WHERE user_id = 'alice' ORDER BY event_id")).all()
    assert [tuple(r) for r in rows] == [("a1", None, None, "", None, True), ("a2", None, None, "", None, True)]
    event = client.get("/v1/feedback/a1", headers=h["read"]).json()
    assert (event["prompt"], event["response"], event["counted"]) == (None, "", False) and event["erased_at"]
    # Their votes no longer count.
    assert client.get("/v1/feedback/stats", headers=h["read"]).json()["total"] == 2
    exported = client.get("/v1/feedback/export", headers=h["read"]).text
    assert "alice" not in exported and "answer one" not in exported

    # The snapshot file no longer has their rows, and still verifies against its (new) hash.
    snap = client.get(f"/v1/snapshots/{after_id}", headers=h["read"]).json()
    assert (snap["n_rows"], snap["n_desirable"], snap["n_undesirable"]) == (2, 1, 1)
    assert snap["redacted_at"] is not None
    raw = client.get(f"/v1/snapshots/{after_id}/export", headers=h["read"]).content
    assert hashlib.sha256(raw).hexdigest() == snap["content_hash"]
    assert sorted(json.loads(line)["prompt"] for line in raw.splitlines()) == ["anonymous prompt", "bob's prompt"]
    with session_scope(engine) as s:
        on_disk = snapshot_path(settings, s.get(Snapshot, after_id))
        assert len(list(iter_snapshot_rows(settings, s.get(Snapshot, after_id)))) == 2  # no "changed on disk"
    assert b"alice" not in on_disk.read_bytes()
    # A snapshot cut before their first event is left alone.
    untouched = client.get(f"/v1/snapshots/{before_id}", headers=h["read"]).json()
    assert untouched == world["before"]

    # A client retrying an erased event does not bring it back; a second erasure finds nothing more.
    assert world["post"](_ev("a1", "alice", "up", prompt=SECRET, response="answer one")).json()["status"] in (
        "duplicate", "conflict")
    assert client.get("/v1/feedback/stats", headers=h["read"]).json()["total"] == 2
    again = client.delete(url, headers=h["admin"]).json()
    assert (again["events"], again["events_erased"], again["votes_removed"], again["snapshots_redacted"]) == (
        2, 0, 0, [])
    assert client.delete("/v1/users/nobody/feedback", headers=h["admin"]).json()["events"] == 0


def test_a_crash_between_the_row_and_the_file_is_finished_by_the_next_run(world, monkeypatch):
    client, h, settings = world["client"], world["h"], world["settings"]
    after_id = world["after"]["id"]
    real_replace = erasure.os.replace

    def killed(*args):
        raise KeyboardInterrupt("killed after the commit, before the rename")

    monkeypatch.setattr(erasure.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        erasure.erase_user_feedback(world["engine"], settings=settings, user_id="alice")
    monkeypatch.setattr(erasure.os, "replace", real_replace)
    snap = client.get(f"/v1/snapshots/{after_id}", headers=h["read"]).json()
    raw = client.get(f"/v1/snapshots/{after_id}/export", headers=h["read"]).content
    assert hashlib.sha256(raw).hexdigest() != snap["content_hash"] and SECRET.encode() in raw

    r = client.delete("/v1/users/alice/feedback", headers=h["admin"]).json()
    assert (r["events_erased"], r["snapshot_rows_removed"]) == (0, 2)
    raw = client.get(f"/v1/snapshots/{after_id}/export", headers=h["read"]).content
    assert hashlib.sha256(raw).hexdigest() == snap["content_hash"] and SECRET.encode() not in raw
    with session_scope(world["engine"]) as s:
        assert s.scalar(select(Snapshot.n_rows).where(Snapshot.id == after_id)) == 2


def test_erasure_rewrites_snapshots_in_an_s3_store(settings, s3_server, s3_bucket, monkeypatch):
    """The snapshot object is rewritten (through a local copy); a crash between the row and the upload
    is finished by the next run, as on disk."""
    from tests.s3kit import s3_settings

    s3 = s3_settings(settings, s3_server, s3_bucket)
    client, h = make_api(s3)
    for ev in (_ev("a1", "alice", "up", prompt=SECRET, response="answer one"),
               _ev("b1", "bob", "down", prompt="bob's prompt", response="bob's answer")):
        assert client.post("/v1/feedback", json=ev, headers=h["ingest"]).status_code == 201
    snap = client.post("/v1/snapshots", json={}, headers=h["train"]).json()
    real_put = erasure.get_store(s3).put_file

    def killed(*args):
        raise KeyboardInterrupt("killed after the commit, before the upload")

    monkeypatch.setattr(erasure.get_store(s3), "put_file", killed)
    with pytest.raises(KeyboardInterrupt):
        erasure.erase_user_feedback(client.app.state.engine, settings=s3, user_id="alice")
    monkeypatch.setattr(erasure.get_store(s3), "put_file", real_put)
    assert SECRET.encode() in client.get(f"/v1/snapshots/{snap['id']}/export", headers=h["read"]).content

    r = client.delete("/v1/users/alice/feedback", headers=h["admin"]).json()
    assert r["snapshot_rows_removed"] == 1
    fresh = client.get(f"/v1/snapshots/{snap['id']}", headers=h["read"]).json()
    raw = client.get(f"/v1/snapshots/{snap['id']}/export", headers=h["read"]).content
    assert SECRET.encode() not in raw and b"bob's prompt" in raw
    assert hashlib.sha256(raw).hexdigest() == fresh["content_hash"] and fresh["n_rows"] == 1
    assert not any((s3.data_path / "tmp").rglob("*.jsonl"))  # the local copy is gone


def test_copies_of_rows_a_killed_erasure_or_upload_left_are_removed(world):
    """An API killed -9 mid-erasure on an S3 store leaves its local copy of the snapshot (every row, the
    erased user's too) in <data>/tmp/erasure; a killed upload leaves its spool file. The next erasure (and a
    worker's start) removes them once old; a copy another erasure is working on right now stays."""
    import os
    import time

    client, h, settings = world["client"], world["h"], world["settings"]
    tmp = settings.data_path / "tmp"
    (tmp / "erasure").mkdir(parents=True, exist_ok=True)
    left = [tmp / "erasure" / "deadbeef.jsonl", tmp / ".upload-x1y2"]
    busy = tmp / "erasure" / "cafe.jsonl"
    for path in [*left, busy]:
        path.write_text(json.dumps({"prompt": SECRET, "completion": "x", "label": True}) + "\n")
    old = time.time() - 2 * 86400
    for path in left:
        os.utime(path, (old, old))
    assert client.delete("/v1/users/nobody/feedback", headers=h["admin"]).status_code == 200
    assert [p for p in left if p.exists()] == [] and busy.exists()

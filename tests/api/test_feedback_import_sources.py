"""POST /v1/feedback/import?source=...: source exports over HTTP, on SQLite and Postgres.

The export fixtures are the ones of tests/core/importers (each cites the
source's schema file it follows).
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import orjson
from api_client import make_api
from sqlalchemy import func, select

from core.models import FeedbackEvent, Vote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "core" / "importers"))
import test_import_chatgpt as chatgpt_fixtures
import test_import_openwebui as owui


def count(client, table=FeedbackEvent) -> int:
    with client.app.state.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(table))


def post(client, h, body: bytes, **params):
    return client.post("/v1/feedback/import", content=body, params=params, headers=h["ingest"])


def test_openwebui_import_reimport_and_revote(settings):
    client, h = make_api(settings)
    body = orjson.dumps([owui.feedback("fb-1"), owui.feedback("fb-2", message_id="a2b", rating=-1),
                         owui.feedback("fb-3", rating=0)])
    r = post(client, h, body, source="openwebui")
    assert r.status_code == 200, r.text
    out = r.json()
    assert {k: out[k] for k in ("rows", "events", "created", "duplicate", "conflict", "invalid",
                                "skipped_total", "dry_run")} == {
        "rows": 3, "events": 2, "created": 2, "duplicate": 0, "conflict": 0, "invalid": 0, "skipped_total": 1,
        "dry_run": False}
    assert out["skipped"] == [{"record": "openwebui:fb-3", "reason": "rating 0 (an arena draw) is not a thumbs vote"}]
    # The same export again: nothing new.
    again = post(client, h, body, source="openwebui").json()
    assert (again["created"], again["duplicate"]) == (0, 2) and count(client) == 2
    # A week later fb-1 was changed to thumbs down: a re-vote of user-7 on the same (prompt, response).
    later = orjson.dumps([owui.feedback("fb-1", rating=-1, updated_at=1717600000)])
    assert post(client, h, later, source="openwebui").json()["created"] == 1
    assert count(client) == 3 and count(client, Vote) == 2
    stats = client.get("/v1/feedback/stats", headers=h["read"]).json()
    assert (stats["up"], stats["down"]) == (0, 2)
    event = client.get(f"/v1/feedback/{orjson.loads(later)[0]['id']}", headers=h["read"])
    assert event.status_code == 404  # ids are namespaced: openwebui:<id>:<digest>


def test_dry_run_reports_without_writing(settings):
    client, h = make_api(settings)
    body = orjson.dumps([owui.feedback("fb-1"), owui.feedback("fb-2", rating=5)])
    dry = post(client, h, body, source="openwebui", dry_run="true").json()
    assert (dry["created"], dry["skipped_total"], dry["dry_run"]) == (1, 1, True)
    assert count(client) == 0 and count(client, Vote) == 0
    real = post(client, h, body, source="openwebui").json()
    assert real["created"] == 1
    dry = post(client, h, body, source="openwebui", dry_run="true").json()
    assert (dry["created"], dry["duplicate"]) == (0, 1)
    # dry_run also works for TRL rows without a source.
    rows = b'{"prompt": "p", "completion": "c", "label": true}\n'
    dry = post(client, h, rows, dry_run="true").json()
    assert (dry["rows"], dry["created"], dry["dry_run"]) == (1, 1, True) and count(client) == 1


def test_chatgpt_zip(settings):
    client, h = make_api(settings)
    body = chatgpt_fixtures.export_zip([chatgpt_fixtures.fb("f1", message_id="a2"),
                                        chatgpt_fixtures.fb("f2", rating="thumbs_down", message_id="a2b")])
    out = client.post("/v1/feedback/import", content=body, params={"source": "chatgpt"},
                      headers={**h["ingest"], "Content-Type": "application/zip"}).json()
    assert (out["rows"], out["created"], out["skipped"]) == (2, 2, [])
    rows = [orjson.loads(x) for x in client.get("/v1/feedback/export", headers=h["read"]).content.splitlines()]
    assert sorted((r["completion"], r["label"]) for r in rows) == [("About $1.", True),
                                                                  ("Roughly one dollar.", False)]


def test_malformed_export_is_422_naming_record_and_field_and_writes_nothing(settings):
    client, h = make_api(settings)
    bad = owui.feedback("fb-2")
    bad["data"] = None
    r = post(client, h, orjson.dumps([owui.feedback("fb-1"), bad]), source="openwebui")
    assert r.status_code == 422
    assert "body[1]" in r.json()["detail"] and "'data'" in r.json()["detail"]
    assert post(client, h, b"[{", source="openwebui").status_code == 422
    assert post(client, h, b"PK\x03\x04garbage", source="chatgpt").status_code == 422
    assert post(client, h, b"{}", source="nope").status_code == 422
    assert post(client, h, b"<html/>", source="openwebui").status_code == 422
    assert count(client) == 0


def test_archive_over_the_uncompressed_limit_is_413(settings):
    client, h = make_api(settings.model_copy(update={"max_import_uncompressed_bytes": 64 * 1024}))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("message_feedback.json", b"[" + b" " * 200_000 + b"]")  # compresses to ~200 bytes
    assert len(buf.getvalue()) < 2000
    r = post(client, h, buf.getvalue(), source="chatgpt")
    assert r.status_code == 413 and "uncompressed" in r.json()["detail"]
    import gzip

    assert post(client, h, gzip.compress(b" " * 200_000), source="langfuse").status_code == 413


def test_invalid_events_are_reported_by_record(settings):
    client, h = make_api(settings.model_copy(update={"max_text_bytes": 3}))
    out = post(client, h, orjson.dumps([owui.feedback("fb-1")]), source="openwebui").json()
    assert (out["created"], out["invalid"]) == (0, 1)
    assert out["errors"][0]["record"] == "openwebui:fb-1" and "exceeds the limit" in out["errors"][0]["message"]


def test_events_source_takes_batch_shaped_events(settings):
    client, h = make_api(settings)
    lines = [{"event_id": "x1", "prompt": "p", "response": "r", "label": "up", "created_at": "2024-01-01T00:00:00Z"},
             {"event_id": "x2", "prompt": "p", "response": "r", "label": "sideways"},
             {"prompt": "p", "response": "r", "label": "up", "colour": "red"}]
    out = post(client, h, b"\n".join(orjson.dumps(x) for x in lines), source="events").json()
    assert (out["created"], out["invalid"]) == (1, 2)
    assert [e["record"] for e in out["errors"]] == ["events:x2", "body[2]"]
    assert "label" in out["errors"][0]["message"] and "colour" in out["errors"][1]["message"]
    empty = post(client, h, b"", source="events")  # an empty upload is a mistake, not zero rows
    assert empty.status_code == 422 and "body: empty" in empty.json()["detail"]

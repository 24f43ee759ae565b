"""`prospect feedback import` against the real API app (in process).

Export fixtures: tests/core/importers (each cites the schema it follows).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from api.main import create_app
from core import cli_feedback
from core.cli import app
from core.client import Client
from core.db import session_scope
from core.keys import create_key
from core.models import FeedbackEvent

sys.path.insert(0, str(Path(__file__).resolve().parent / "importers"))
import test_import_chatgpt as chatgpt_fixtures
import test_import_librechat as librechat_fixtures


@pytest.fixture
def cli(settings, engine, monkeypatch):
    with session_scope(engine) as s:
        _, key = create_key(s, name="cli", scopes="ingest")
    client = Client.__new__(Client)
    client._http = TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"})
    requests = []
    real = client.request

    def counting(*args, **kwargs):
        requests.append(kwargs.get("params"))
        return real(*args, **kwargs)

    client.request = counting
    monkeypatch.setattr(cli_feedback, "_client", lambda: client)
    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(app, list(args))
        return result, requests

    return invoke


def stored(engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(FeedbackEvent))


def librechat_export(n: int) -> list[dict]:
    """n rated replies in n conversations (LibreChat's message schema), one unrated reply each."""
    records = []
    for i in range(n):
        for rec in librechat_fixtures.thread("thumbsUp" if i % 3 else "thumbsDown"):
            records.append({**rec, "messageId": f"{rec['messageId']}-{i}", "conversationId": f"conv-{i}",
                            "parentMessageId": rec["parentMessageId"] if rec["parentMessageId"].startswith("000")
                            else f"{rec['parentMessageId']}-{i}"})
    return records


def test_streams_in_batches_with_dry_run_and_reimport(cli, engine, tmp_path):
    path = tmp_path / "messages.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in librechat_export(25)))
    result, requests = cli("feedback", "import", "--source", "librechat", str(path), "--batch-events", "10",
                           "--dry-run")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["rows"], report["created"], report["dry_run"]) == (25, 25, True)
    assert len(requests) == 3 and all(p == {"source": "events", "dry_run": "true"} for p in requests)
    assert stored(engine) == 0
    result, _ = cli("feedback", "import", "--source", "librechat", str(path), "--batch-events", "10")
    assert json.loads(result.stdout)["created"] == 25 and stored(engine) == 25
    assert "25 records, 25 created" in result.stderr
    again = json.loads(cli("feedback", "import", "--source", "librechat", str(path))[0].stdout)
    assert (again["created"], again["duplicate"]) == (0, 25)


def test_zip_folder_and_errors(cli, engine, tmp_path):
    archive = tmp_path / "chatgpt-export.zip"
    archive.write_bytes(chatgpt_fixtures.export_zip([chatgpt_fixtures.fb("f1", message_id="a2"),
                                                     chatgpt_fixtures.fb("f2", rating="neutral", message_id="a2")]))
    result, _ = cli("feedback", "import", "--source", "chatgpt", str(archive))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["created"], report["skipped_total"]) == (1, 1)
    assert report["skipped"][0]["record"] == "chatgpt:f2"
    folder = tmp_path / "unzipped"
    folder.mkdir()
    (folder / "conversations.json").write_bytes(orjson.dumps([chatgpt_fixtures.conversation()]))
    (folder / "message_feedback.json").write_bytes(orjson.dumps([chatgpt_fixtures.fb("f1", message_id="a2")]))
    assert json.loads(cli("feedback", "import", "--source", "chatgpt", str(folder))[0].stdout)["duplicate"] == 1

    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    result, _ = cli("feedback", "import", "--source", "openwebui", str(bad))
    assert result.exit_code == 2 and "must be a JSON object" in " ".join(result.output.split())
    result, _ = cli("feedback", "import", "--source", "nope", str(bad))
    assert result.exit_code == 2 and "unknown source" in " ".join(result.output.split())
    result, _ = cli("feedback", "import", "--source", "chatgpt", str(tmp_path / "missing.zip"))
    assert result.exit_code == 2 and "no such file" in " ".join(result.output.split())
    assert stored(engine) == 1


def test_batches_respect_count_and_bytes():
    events = [{"prompt": "p" * 100, "response": "r", "label": "up"}] * 10
    groups = cli_feedback.batches(events, max_events=4, max_bytes=10_000)
    assert [len(g) for g in groups] == [4, 4, 2]
    line = len(orjson.dumps(events[0])) + 1
    groups = cli_feedback.batches(events, max_events=100, max_bytes=3 * line)
    assert [len(g) for g in groups] == [3, 3, 3, 1]

"""Imports decoded and written a chunk at a time: memory bounded by the body, a row cap, one transaction."""

from __future__ import annotations

import tracemalloc

import orjson
import pytest
from sqlalchemy import func, select

from core import feedback_import
from core.errors import PayloadTooLarge
from core.models import FeedbackEvent
from core.settings import Settings
from tests.api_client import make_api


def _body(n: int) -> bytes:
    rows = [{"prompt": f"question {i} " + "x" * 150, "completion": f"answer {i} " + "y" * 200, "label": i % 2 == 0}
            for i in range(n)]
    return b"\n".join(orjson.dumps(r) for r in rows)


def _events(engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(FeedbackEvent))


def test_import_memory_is_a_fraction_of_the_body(engine):
    body = _body(4000)  # ~1.7 MB
    tracemalloc.start()
    try:
        summary = feedback_import.import_body(engine, body=body, max_rows=10_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (summary.rows, summary.created) == (4000, 4000)
    # Decoding everything first (the previous import) peaked at ~9.5x the body under tracemalloc.
    assert peak < 2 * len(body), peak / len(body)
    assert _events(engine) == 4000


def test_json_list_and_bad_lines_keep_their_numbers(engine):
    rows = [{"prompt": "p", "completion": "c", "label": True}, {"prompt": "p", "chosen": "a", "rejected": "b"}]
    summary = feedback_import.import_body(engine, body=orjson.dumps(rows), max_rows=10)
    assert (summary.rows, summary.created) == (2, 3)
    body = b'{"prompt": "q", "completion": "c", "label": false}\n\n{bad\r\n{"prompt": 1, "completion": "c", "label": true}'
    summary = feedback_import.import_body(engine, body=body, max_rows=10)
    assert (summary.rows, summary.created, summary.invalid) == (3, 1, 2)
    assert [e["line"] for e in summary.errors] == [3, 4]


def test_row_cap_writes_nothing(engine):
    with pytest.raises(PayloadTooLarge, match="3 rows exceeds the limit of 2"):
        feedback_import.import_body(engine, body=_body(3), max_rows=2)
    with pytest.raises(PayloadTooLarge):
        feedback_import.import_body(engine, body=orjson.dumps([{}] * 3), max_rows=2)
    assert _events(engine) == 0


def test_row_cap_over_http_is_413(tmp_path, db_url):
    settings = Settings(data_dir=tmp_path / "v", database_url=db_url, max_import_rows=5,
                        broker_url=f"sqla+sqlite:///{tmp_path / 'b.db'}", register_bundled_model=False)
    client, h = make_api(settings)
    r = client.post("/v1/feedback/import", content=_body(6), headers=h["ingest"])
    assert r.status_code == 413 and "6 rows" in r.json()["detail"]
    r = client.post("/v1/feedback/import", content=_body(5), headers=h["ingest"])
    assert r.status_code == 200 and r.json()["created"] == 5

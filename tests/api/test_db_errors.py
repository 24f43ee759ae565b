"""Database errors are classified by their code: only an unavailable database is a 503; bad values are 422."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from api.errors import classify_database_error, database_error
from core.adapters import publish_adapter_version
from core.base_models import register_base_model
from core.db import make_engine, session_factory, session_scope
from tests.api_client import make_api
from tests.artifacts import make_model_dir, make_staged

HUGE = 10**30


def _status(exc: DBAPIError) -> int:
    return asyncio.run(database_error(None, exc)).status_code


def _sqlite_error(sql: str, conn: sqlite3.Connection) -> DBAPIError:
    try:
        conn.execute(sql)
    except sqlite3.Error as orig:
        return DBAPIError.instance(sql, None, orig, sqlite3.Error)
    raise AssertionError(f"{sql} did not fail")


def test_sqlite_errors_by_code(tmp_path):
    conn = sqlite3.connect(":memory:")
    assert classify_database_error(_sqlite_error("SELECT json('{bad')", conn))[0] == 422  # malformed JSON
    assert classify_database_error(_sqlite_error("SELECT zeroblob(2000000000)", conn))[0] == 422  # too big
    assert _status(_sqlite_error("SELECT * FROM no_such_table", conn)) == 500  # our bug, not an outage
    db = tmp_path / "x.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    locked = _sqlite_error("BEGIN IMMEDIATE", sqlite3.connect(db, timeout=0, isolation_level=None))
    assert classify_database_error(locked) == (503, "busy") and _status(locked) == 503
    unopenable = tmp_path / "missing-dir" / "x.db"
    with pytest.raises(sqlite3.OperationalError) as info:
        sqlite3.connect(unopenable)
    assert classify_database_error(DBAPIError.instance("", None, info.value, sqlite3.Error))[0] == 503


def test_postgres_errors_by_sqlstate():
    psycopg = pytest.importorskip("psycopg")
    from tests.conftest import PG_URL

    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none", pool_pre_ping=False)
    with pytest.raises(DBAPIError) as info:
        engine.connect()
    assert isinstance(info.value.orig, psycopg.OperationalError) and _status(info.value) == 503
    if not PG_URL:
        pytest.skip("PROSPECT_TEST_DATABASE_URL is not set")
    pg = make_engine(PG_URL)
    try:
        for sql, status in [("SELECT 2147483648::int", 422), ("SELECT 'x'::int", 422), ("SELECT 1/0", 422),
                            ("SELECT * FROM no_such_table", 500), ("SELECT pg_sleep(1)", 503)]:
            with pg.connect() as conn:
                if status == 503:
                    conn.execute(text("SET statement_timeout = 10"))
                with pytest.raises(DBAPIError) as info:
                    conn.execute(text(sql))
            assert _status(info.value) == status, (sql, info.value.orig.sqlstate)
    finally:
        pg.dispose()


@pytest.fixture
def api(settings, tmp_path):
    client, h = make_api(settings)
    client = TestClient(client.app, raise_server_exceptions=False)  # a 500 is a status here, not a raise
    with session_scope(client.app.state.engine) as s:
        base = register_base_model(s, settings=settings, name="base", source=str(make_model_dir(tmp_path / "m")))
    publish_adapter_version(session_factory(client.app.state.engine), settings=settings, adapter_name="chat",
                            staged_dir=make_staged(tmp_path / "s"), job_id=None, base_model=base, snapshot=None,
                            hyperparameters={}, class_counts={}, class_weights={}, eval_metrics={})
    return client, h


def test_huge_integers_in_any_numeric_field_are_422(api):
    client, h = api
    job = client.post("/v1/jobs", json={"adapter": "chat", "base_model": "base"}, headers=h["train"]).json()
    calls = [
        ("put", "/v1/adapters/chat/aliases/champion", {"json": {"version": HUGE}}),
        ("put", "/v1/adapters/chat/aliases/champion", {"json": {"version": 1, "expected_version": HUGE}}),
        ("put", "/v1/adapters/chat/aliases/champion", {"json": {"version": 2**40}}),
        ("post", "/v1/policies", {"json": {"adapter": "a", "base_model": "base", "min_new_feedback": HUGE}}),
        ("post", "/v1/policies", {"json": {"adapter": "a", "base_model": "base", "min_interval_minutes": HUGE}}),
        ("get", f"/v1/jobs/{job['id']}/metrics", {"params": {"after_step": HUGE}}),
        ("get", "/v1/jobs", {"params": {"limit": HUGE}}),
        ("get", f"/v1/adapters/chat/versions/{HUGE}", {}),
        ("post", "/v1/jobs", {"json": {"adapter": "chat", "base_model": "base", "config": {"max_steps": HUGE}}}),
    ]
    for method, url, kwargs in calls:
        r = getattr(client, method)(url, headers=h["admin"], **kwargs)
        assert r.status_code in (404, 422), (method, url, kwargs, r.status_code, r.text)
        assert r.status_code == 422 or "no version" in r.json()["detail"], (url, r.text)


def test_a_metadata_filter_key_with_a_quote_is_matched_not_an_outage(api):
    client, h = api
    for key in ('a"b', "a\\b", "plain"):
        r = client.post("/v1/feedback", json={"prompt": f"p {key}", "response": "r", "label": "up",
                                              "metadata": {key: "x"}}, headers=h["ingest"])
        assert r.status_code in (200, 201), r.text
    for key in ('a"b', "a\\b", "plain"):
        r = client.post("/v1/snapshots", json={"filters": {"metadata": {key: "x"}}}, headers=h["train"])
        assert r.status_code == 201, (key, r.text)
        rows = client.get(f"/v1/snapshots/{r.json()['id']}/export", headers=h["read"]).text.splitlines()
        assert [json.loads(line)["prompt"] for line in rows] == [f"p {key}"]

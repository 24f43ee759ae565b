"""GET /metrics: access rules, HTTP and feedback counters, state gauges from the database, and samples
written by another process (multiprocess mode)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from core.db import session_scope
from core.models import AlignmentJob, BaseModelRecord
from tests.api_client import make_api

ROOT = Path(__file__).resolve().parents[2]


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def api(settings):
    return make_api(settings)


def scrape(client, h) -> str:
    r = client.get("/metrics", headers=h["read"])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def test_access_needs_a_read_key_except_from_loopback(api, settings):
    client, h = api
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=h["ingest"]).status_code == 403
    assert client.get("/metrics", headers=h["read"]).status_code == 200
    local = TestClient(client.app, client=("127.0.0.1", 40000))
    assert local.get("/metrics").status_code == 200
    assert TestClient(client.app, client=("::1", 40000)).get("/metrics").status_code == 200
    # A proxy's forwarded header does not make a remote client local.
    assert client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 401


def test_access_settings_read_and_open(settings):
    strict, h = make_api(settings.model_copy(update={"metrics_access": "read"}))
    assert TestClient(strict.app, client=("127.0.0.1", 1)).get("/metrics").status_code == 401
    assert strict.get("/metrics", headers=h["read"]).status_code == 200
    opened, _ = make_api(settings.model_copy(update={"metrics_access": "open"}))
    assert opened.get("/metrics").status_code == 200


def test_feedback_counted_by_status_and_label_without_ids(api):
    client, h = api
    before = scrape(client, h)
    events = [
        {"event_id": "secret-event-1", "prompt": "p1", "response": "r", "label": "up", "user_id": "alice@example"},
        {"event_id": "secret-event-1", "prompt": "p1", "response": "r", "label": "up", "user_id": "alice@example"},
        {"event_id": "secret-event-2", "prompt": "p2", "response": "r", "label": "down"},
        {"event_id": "secret-event-2", "prompt": "p2", "response": "other", "label": "down"},
        {"prompt": "p3", "response": "r", "label": "sideways"},
    ]
    r = client.post("/v1/feedback/batch", headers=h["ingest"], json={"events": events})
    assert [x["status"] for x in r.json()["results"]] == ["created", "duplicate", "created", "conflict", "invalid"]
    r = client.post("/v1/feedback", headers=h["ingest"],
                    json={"event_id": "secret-event-1", "prompt": "p1", "response": "changed", "label": "up"})
    assert r.status_code == 409
    after = scrape(client, h)
    name = "prospect_feedback_events_total"
    delta = {(status, label): value(after, name, status=status, label=label)
             - value(before, name, status=status, label=label)
             for status in ("created", "duplicate", "conflict", "invalid") for label in ("up", "down", "unknown")}
    assert {k: v for k, v in delta.items() if v} == {
        ("created", "up"): 1, ("duplicate", "up"): 1, ("created", "down"): 1, ("conflict", "down"): 1,
        ("conflict", "up"): 1, ("invalid", "unknown"): 1}
    for private in ("secret-event", "alice", "p1"):
        assert private not in after


def test_http_requests_by_route_template(api):
    client, h = api
    before = scrape(client, h)
    for job_id in ("aaaa1111", "bbbb2222"):
        assert client.get(f"/v1/jobs/{job_id}", headers=h["read"]).status_code == 404
    assert client.get("/no/such/path/xyz").status_code == 404
    after = scrape(client, h)
    key = {"route": "/v1/jobs/{job_id}", "method": "GET", "status": "404"}
    assert value(after, "prospect_http_requests_total", **key) - value(before, "prospect_http_requests_total", **key) == 2
    assert value(after, "prospect_http_request_duration_seconds_count", route="/v1/jobs/{job_id}", method="GET") >= 2
    assert "aaaa1111" not in after and "/no/such/path" not in after
    assert value(after, "prospect_http_requests_total", route="<unmatched>", method="GET", status="404") >= 1


def test_state_gauges_come_from_the_database(api):
    client, h = api
    with session_scope(client.app.state.engine) as s:
        base = BaseModelRecord(name="b", source="/m", path="/m", sha256="0" * 64)
        s.add(base)
        s.flush()
        for status in ("queued", "queued", "failed"):
            s.add(AlignmentJob(adapter_name=f"a-{status}-{s.new.__len__()}", base_model_id=base.id, status=status))
    text = scrape(client, h)
    assert value(text, "prospect_jobs", status="queued") == 2
    assert value(text, "prospect_jobs", status="failed") == 1


def test_snapshot_rows_and_seconds(api):
    client, h = api
    client.post("/v1/feedback/batch", headers=h["ingest"], json={"events": [
        {"prompt": f"q{i}", "response": "r", "label": "up" if i % 2 else "down"} for i in range(5)]})
    before = scrape(client, h)
    r = client.post("/v1/snapshots", headers=h["admin"], json={})
    assert r.status_code == 201, r.text
    after = scrape(client, h)
    assert value(after, "prospect_snapshot_rows_total") - value(before, "prospect_snapshot_rows_total") == 5
    assert value(after, "prospect_snapshot_seconds_count") - value(before, "prospect_snapshot_seconds_count") == 1


def test_samples_of_another_process_are_summed(api):
    """A worker process (here: a plain subprocess) reports through the shared folder, and the API sums them."""
    client, h = api
    before = scrape(client, h)
    code = ("from core import metrics\n"
            "metrics.training_step({'tokens': 500, 'tokens_per_s': 250.0})\n"
            "metrics.job_ended('succeeded', 42.0)\n")
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
    after = scrape(client, h)
    assert value(after, "prospect_training_tokens_total") - value(before, "prospect_training_tokens_total") == 1000
    assert (value(after, "prospect_training_step_seconds_count")
            - value(before, "prospect_training_step_seconds_count")) == 2
    assert (value(after, "prospect_jobs_finished_total", status="succeeded")
            - value(before, "prospect_jobs_finished_total", status="succeeded")) == 2
    # The most recent process set the gauge to 0 when its job ended.
    assert value(after, "prospect_training_tokens_per_second") == 0

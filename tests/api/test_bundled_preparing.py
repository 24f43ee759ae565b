"""Right after a first start the bundled model is still converting: its name is registered at once as
preparing, a job for it is accepted and waits queued (its deliveries retry) until the worker has converted
it, then runs; if the conversion fails, the waiting jobs fail with its error. /readyz and
GET /v1/base-models show the state."""

from __future__ import annotations

import pytest

from core import jobs
from core.db import session_scope
from core.models import AlignmentJob
from core.settings import Settings
from tests.api_client import make_api
from tests.tiny import build_tiny_model_dir
from worker import bootstrap


@pytest.fixture
def bundled(settings):
    return Settings(**{**settings.model_dump(), "register_bundled_model": True})


def _claim(engine, job_id):
    with session_scope(engine) as s:
        return jobs.claim_job(s, job_id=job_id, worker="w1", heartbeat_timeout_s=60)


def test_a_job_during_preparation_waits_queued_then_runs(bundled, engine, monkeypatch, tmp_path):
    client, headers = make_api(bundled)
    name = bundled.bundled_model_name
    assert client.get("/readyz").json()["base_models"] == {name: "preparing"}
    early = client.post("/v1/jobs", json={"adapter": "bot", "base_model": name}, headers=headers["train"])
    assert early.status_code == 202 and early.json()["status"] == "queued"
    listed = client.get("/v1/base-models", headers=headers["read"]).json()
    assert [(m["name"], m["status"]) for m in listed] == [(name, "preparing")]
    other = client.post("/v1/jobs", json={"adapter": "bot", "base_model": "nope"}, headers=headers["train"])
    assert other.status_code == 404 and "no base model named 'nope'" in other.json()["detail"]

    claim = _claim(engine, early.json()["id"])  # a delivery while it converts: retried later, job untouched
    assert claim.outcome == "busy" and "still preparing" in claim.reason
    assert client.get(f"/v1/jobs/{early.json()['id']}", headers=headers["read"]).json()["status"] == "queued"

    folder = build_tiny_model_dir(bundled.models_dir / name)
    monkeypatch.setattr("alignment.bundled.convert_bundled", lambda target: folder)
    record = bootstrap.ensure_bundled_model(bundled)
    assert record.status == "ready" and len(record.sha256) == 64
    assert client.get("/readyz").json()["base_models"] == {name: "ready"}
    assert _claim(engine, early.json()["id"]).outcome == "run"


def test_a_failed_preparation_fails_the_waiting_jobs(bundled, engine, monkeypatch):
    client, headers = make_api(bundled)
    name = bundled.bundled_model_name
    job_id = client.post("/v1/jobs", json={"adapter": "bot", "base_model": name}, headers=headers["train"]).json()["id"]

    def broken(target):
        raise OSError("disk full")

    monkeypatch.setattr("alignment.bundled.convert_bundled", broken)
    with pytest.raises(OSError):
        bootstrap.ensure_bundled_model(bundled)
    job = client.get(f"/v1/jobs/{job_id}", headers=headers["read"]).json()
    assert job["status"] == "failed" and "could not be prepared: OSError: disk full" in job["error"]
    assert client.get("/readyz").json()["base_models"] == {name: "failed"}
    again = client.post("/v1/jobs", json={"adapter": "bot", "base_model": name}, headers=headers["train"])
    assert again.status_code == 409 and "disk full" in again.json()["detail"]
    with session_scope(engine) as s:
        assert s.get(AlignmentJob, job_id).finished_at is not None


def test_without_the_bundled_model_nothing_is_preparing(settings):
    client, _ = make_api(settings)
    assert client.get("/readyz").json()["base_models"] == {}

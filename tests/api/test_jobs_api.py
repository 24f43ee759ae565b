"""/v1/jobs over HTTP: status codes, bodies, rows, the queued task; the API never loads torch."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core import jobs
from core.db import make_engine, session_scope
from core.keys import create_key
from core.models import AlignmentJob, BaseModelRecord
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _key(engine, scopes: str) -> dict:
    with session_scope(engine) as s:
        _, plaintext = create_key(s, name=scopes, scopes=scopes)
    return {"Authorization": f"Bearer {plaintext}"}


@pytest.fixture
def api(settings, engine):
    with session_scope(engine) as s:
        s.add(BaseModelRecord(name="tiny", source="/m", path="/m", sha256="0" * 64))
    client = TestClient(create_app(settings))
    client.train = _key(engine, "train,read")
    client.read = _key(engine, "read")
    client.ingest = _key(engine, "ingest")
    return client


def _queued_messages(settings: Settings) -> list[dict]:
    path = Path(settings.celery_broker_url.removeprefix("sqla+sqlite:///"))
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT q.name, m.payload FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id"
        ).fetchall()
    out = []
    for queue, payload in rows:
        message = json.loads(payload)
        out.append({"queue": queue, "task": message["headers"]["task"], "args": message["headers"]["argsrepr"]})
    return out


def test_post_job_queues_it_and_sends_the_task(api, settings, engine):
    resp = api.post("/v1/jobs", headers=api.train, json={
        "adapter": "support-bot", "base_model": "tiny", "config": {"beta": 0.2, "max_steps": 3},
        "options": {"heldout_fraction": 0.25},
    })
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["status"] == "queued" and body["adapter"] == "support-bot" and body["base_model"] == "tiny"
    assert body["config"] == {"beta": 0.2, "max_steps": 3}
    assert body["options"]["heldout_fraction"] == 0.25
    assert body["progress"] == {"step": 0, "total": 0} and body["attempts"] == 0
    assert body["max_attempts"] == settings.job_max_attempts
    with session_scope(engine) as s:
        job = s.get(AlignmentJob, body["id"])
        assert job.status == "queued" and job.celery_task_id and job.enqueued_at is not None
    assert _queued_messages(settings) == [
        {"queue": "training", "task": "prospect.jobs.run", "args": repr([body["id"]])}
    ]
    got = api.get(f"/v1/jobs/{body['id']}", headers=api.read)
    assert got.status_code == 200 and got.json()["id"] == body["id"]


@pytest.mark.parametrize(("payload", "status", "message"), [
    ({"config": {"beta": -1}}, 422, "beta must be > 0"),
    ({"config": {"betta": 0.1}}, 422, "unknown config key(s): 'betta'"),
    ({"config": {"batch_size": 1}}, 422, "batch_size must be >= 2"),
    ({"config": {"learning_rate": "fast"}}, 422, "learning_rate must be of type float"),
    ({"base_model": "nope"}, 404, "no base model named 'nope'"),
    ({"adapter": "Bad Name!"}, 422, "invalid adapter name"),
    ({"snapshot_id": "missing"}, 404, "no snapshot with id 'missing'"),
    ({"options": {"heldout_fraction": 0}}, 422, "heldout_fraction must be in (0, 1)"),
    ({"options": {"gate_min_reward_margin": -1}}, 422, "job option gate_min_reward_margin must be >= 0"),
    ({"options": {"gate_min_loss_improvement": -0.5}}, 422, "job option gate_min_loss_improvement must be >= 0"),
    ({"snapshot_filters": {"model": "m"}, "snapshot_id": "x"}, 422, "snapshot_id or snapshot_filters"),
    ({"snapshot_options": {"aggregation": "vote"}}, 422, "aggregation"),
    ({"extra": 1}, 422, "extra"),
    # Upper bounds from Settings: a job cannot ask for a worker for ever.
    ({"config": {"max_steps": 1_000_000_000}}, 422, "config.max_steps: 1000000000 exceeds this server's limit"),
    ({"config": {"num_epochs": 101}}, 422, "config.num_epochs"),
    ({"config": {"batch_size": 100_000}}, 422, "config.batch_size"),
    ({"config": {"grad_accumulation": 10**6}}, 422, "config.grad_accumulation"),
    ({"config": {"max_length": 10**7}}, 422, "config.max_length"),
    ({"config": {"lora_r": 4096}}, 422, "config.lora_r"),
    ({"config": {"processes": 9}}, 422, "config.processes: 9 exceeds this server's limit of 8"),
    ({"config": {"processes": 0}}, 422, "processes must be > 0"),
])
def test_post_job_rejects_bad_input_with_a_message(api, settings, engine, payload, status, message):
    body = {"adapter": "bot", "base_model": "tiny", **payload}
    resp = api.post("/v1/jobs", headers=api.train, json=body)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["detail"]
    with session_scope(engine) as s:
        assert s.query(AlignmentJob).count() == 0
    assert _queued_messages(settings) == []


def test_scopes(api):
    assert api.post("/v1/jobs", json={"adapter": "a", "base_model": "tiny"}).status_code == 401
    assert api.post("/v1/jobs", headers=api.read, json={"adapter": "a", "base_model": "tiny"}).status_code == 403
    assert api.get("/v1/jobs", headers=api.ingest).status_code == 403
    assert api.get("/v1/jobs", headers=api.read).status_code == 200
    job_id = api.post("/v1/jobs", headers=api.train, json={"adapter": "a", "base_model": "tiny"}).json()["id"]
    assert api.post(f"/v1/jobs/{job_id}/cancel", headers=api.read).status_code == 403


def test_list_filters_and_unknown_job(api, engine):
    ids = {}
    for adapter in ("a", "b", "b"):
        ids.setdefault(adapter, []).append(
            api.post("/v1/jobs", headers=api.train, json={"adapter": adapter, "base_model": "tiny"}).json()["id"]
        )
    with session_scope(engine) as s:
        jobs.claim_job(s, job_id=ids["a"][0], worker="w:1", heartbeat_timeout_s=60)
    listed = api.get("/v1/jobs", headers=api.read, params={"adapter": "b"}).json()["jobs"]
    assert sorted(j["id"] for j in listed) == sorted(ids["b"])
    running = api.get("/v1/jobs", headers=api.read, params={"status": "running"}).json()["jobs"]
    assert [j["id"] for j in running] == ids["a"]
    assert len(api.get("/v1/jobs", headers=api.read, params={"limit": 1}).json()["jobs"]) == 1
    bad = api.get("/v1/jobs", headers=api.read, params={"status": "done"})
    assert bad.status_code == 422 and "status" in bad.json()["detail"]
    missing = api.get("/v1/jobs/nope", headers=api.read)
    assert missing.status_code == 404 and missing.json() == {"detail": "no job with id 'nope'"}
    assert api.get("/v1/jobs/nope/metrics", headers=api.read).status_code == 404
    assert api.post("/v1/jobs/nope/cancel", headers=api.train).status_code == 404


def test_metrics_history(api, engine):
    job_id = api.post("/v1/jobs", headers=api.train, json={"adapter": "a", "base_model": "tiny"}).json()["id"]
    with session_scope(engine) as s:
        token = jobs.claim_job(s, job_id=job_id, worker="w:1", heartbeat_timeout_s=60).token
        for step in (1, 2, 3):
            jobs.record_progress(s, job_id=job_id, token=token, step=step, total=3,
                                 metrics={"loss": 0.5 - 0.1 * step, "kl": 0.01}, attempt=1)
    body = api.get(f"/v1/jobs/{job_id}/metrics", headers=api.read).json()
    assert [(m["step"], m["attempt"]) for m in body["steps"]] == [(1, 1), (2, 1), (3, 1)]
    assert body["steps"][2]["metrics"]["loss"] == pytest.approx(0.2)
    tail = api.get(f"/v1/jobs/{job_id}/metrics", headers=api.read, params={"after_step": 2}).json()
    assert [m["step"] for m in tail["steps"]] == [3]
    job = api.get(f"/v1/jobs/{job_id}", headers=api.read).json()
    assert job["progress"] == {"step": 3, "total": 3} and job["metrics"]["loss"] == pytest.approx(0.2)
    assert job["status"] == "running" and job["attempts"] == 1


def test_cancel(api, engine):
    queued = api.post("/v1/jobs", headers=api.train, json={"adapter": "a", "base_model": "tiny"}).json()["id"]
    resp = api.post(f"/v1/jobs/{queued}/cancel", headers=api.train)
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    assert api.post(f"/v1/jobs/{queued}/cancel", headers=api.train).json()["status"] == "cancelled"

    running = api.post("/v1/jobs", headers=api.train, json={"adapter": "b", "base_model": "tiny"}).json()["id"]
    with session_scope(engine) as s:
        token = jobs.claim_job(s, job_id=running, worker="w:1", heartbeat_timeout_s=60).token
    body = api.post(f"/v1/jobs/{running}/cancel", headers=api.train).json()
    assert (body["status"], body["cancel_requested"]) == ("running", True)
    with session_scope(engine) as s:
        jobs.fail(s, job_id=running, token=token, error="boom")
    resp = api.post(f"/v1/jobs/{running}/cancel", headers=api.train)
    assert resp.status_code == 409 and "already failed" in resp.json()["detail"]


def test_broker_down_still_queues_the_job(tmp_path, db_url):
    settings = Settings(data_dir=tmp_path / "var", database_url=db_url, broker_url="redis://127.0.0.1:1/0",
                        redis_url="redis://127.0.0.1:1/0", result_backend=f"db+sqlite:///{tmp_path / 'r.db'}",
                        register_bundled_model=False)
    engine = make_engine(db_url)
    with session_scope(engine) as s:
        s.add(BaseModelRecord(name="tiny", source="/m", path="/m", sha256="0" * 64))
    client = TestClient(create_app(settings))
    resp = client.post("/v1/jobs", headers=_key(engine, "train"), json={"adapter": "a", "base_model": "tiny"})
    assert resp.status_code == 202, resp.text
    with session_scope(engine) as s:
        job = s.get(AlignmentJob, resp.json()["id"])
        assert (job.status, job.enqueued_at) == ("queued", None)  # the reaper sends it later
    engine.dispose()


def test_api_never_imports_torch(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from fastapi.testclient import TestClient
        from api.main import create_app
        from core.db import get_engine, session_scope
        from core.keys import create_key
        from core.migrate import upgrade
        from core.models import BaseModelRecord
        from core.settings import Settings

        settings = Settings(data_dir={str(tmp_path)!r}, register_bundled_model=False)
        settings.ensure_dirs()
        upgrade(settings.sqlalchemy_url)
        with session_scope(get_engine(settings)) as s:
            s.add(BaseModelRecord(name="tiny", source="/m", path="/m", sha256="0" * 64))
            _, key = create_key(s, name="t", scopes="train,read")
        client = TestClient(create_app(settings))
        resp = client.post("/v1/jobs", headers={{"Authorization": "Bearer " + key}},
                           json={{"adapter": "a", "base_model": "tiny", "config": {{"beta": 0.3}}}})
        assert resp.status_code == 202, resp.text
        assert client.get("/v1/jobs/" + resp.json()["id"], headers={{"Authorization": "Bearer " + key}}).status_code == 200
        heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
        print("HEAVY", heavy)
    """)
    out = subprocess.run([sys.executable, "-c", script], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout

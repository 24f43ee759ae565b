"""`prospect jobs ...` against the real API app (in process)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.main import create_app
from core import cli_jobs, jobs
from core.cli import app
from core.client import Client
from core.db import session_scope
from core.keys import create_key
from core.models import BaseModelRecord


@pytest.fixture
def cli(settings, engine, monkeypatch):
    with session_scope(engine) as s:
        s.add(BaseModelRecord(name="tiny", source="/m", path="/m", sha256="0" * 64))
        _, key = create_key(s, name="cli", scopes="train,read")
    client = Client.__new__(Client)
    client._http = TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"})
    monkeypatch.setattr(cli_jobs, "_client", lambda: client)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_start_status_list_cancel_watch(cli, engine):
    started = cli("jobs", "start", "bot", "--base-model", "tiny", "--config", '{"beta": 0.2}')
    assert started.exit_code == 0, started.output
    job_id = started.stdout.strip().splitlines()[-1]
    status = cli("jobs", "status", job_id, "--json")
    assert status.exit_code == 0 and json.loads(status.stdout)["config"] == {"beta": 0.2}
    assert "queued" in cli("jobs", "status", job_id).stdout
    assert job_id in cli("jobs", "list", "--adapter", "bot").stdout
    assert [j["id"] for j in json.loads(cli("jobs", "list", "--json").stdout)] == [job_id]

    with session_scope(engine) as s:
        token = jobs.claim_job(s, job_id=job_id, worker="w:1", heartbeat_timeout_s=60).token
        jobs.record_inputs(s, job_id=job_id, token=token, timings={"queue_wait": 0.25, "train": 12.5})
        jobs.record_progress(s, job_id=job_id, token=token, step=4, total=4, metrics={"loss": 0.25, "kl": 0.5},
                             attempt=1)
        jobs.succeed(s, job_id=job_id, token=token, adapter_version_id=None)
    watched = cli("jobs", "watch", job_id, "--interval", "0.01")
    assert watched.exit_code == 0 and "succeeded  step 4/4" in watched.stdout
    assert "seconds: queue_wait 0.2  train 12.5" in watched.stdout

    other = cli("jobs", "start", "bot", "--base-model", "tiny").stdout.strip().splitlines()[-1]
    assert cli("jobs", "cancel", other).exit_code == 0
    assert cli("jobs", "watch", other, "--interval", "0.01").exit_code == 1  # it did not succeed


def test_errors_are_messages(cli):
    bad = cli("jobs", "start", "bot", "--base-model", "tiny", "--config", '{"beta": -1}')
    assert bad.exit_code == 2 and "beta must be > 0" in bad.output
    assert "must be a JSON object" in cli("jobs", "start", "bot", "-b", "tiny", "--config", "[1]").output
    missing = cli("jobs", "status", "nope")
    assert missing.exit_code == 2 and "no job with id 'nope'" in missing.output


def test_start_watch_exits_1_when_the_job_did_not_succeed_and_130_when_interrupted(cli, engine, monkeypatch):
    def cancel_it(_s):  # while the CLI waits, the job ends without succeeding
        with session_scope(engine) as s:
            for job in jobs.list_jobs(s, status="queued", limit=10):
                jobs.request_cancel(s, job_id=job.id)

    monkeypatch.setattr(cli_jobs.time, "sleep", cancel_it)
    watched = cli("jobs", "start", "bot", "--base-model", "tiny", "--watch")
    assert watched.exit_code == 1 and "cancelled" in watched.stdout

    def ctrl_c(_s):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_jobs.time, "sleep", ctrl_c)
    interrupted = cli("jobs", "start", "bot", "--base-model", "tiny", "--watch")
    assert interrupted.exit_code == 130 and "prospect jobs watch" in interrupted.output


def test_progress_shows_the_unclamped_kl_estimate(cli, engine):
    job_id = cli("jobs", "start", "bot", "--base-model", "tiny").stdout.strip().splitlines()[-1]
    with session_scope(engine) as s:
        token = jobs.claim_job(s, job_id=job_id, worker="w:1", heartbeat_timeout_s=60).token
        jobs.record_progress(s, job_id=job_id, token=token, step=1, total=1, attempt=1,
                             metrics={"loss": 0.5, "kl": 0.0, "kl_estimate": -0.0123})
        jobs.succeed(s, job_id=job_id, token=token, adapter_version_id=None)
    watched = cli("jobs", "watch", job_id, "--interval", "0.01")
    assert watched.exit_code == 0 and "kl -0.0123" in watched.output and "clamped at 0" in watched.output
    assert "kl estimate -0.0123 (clamped at 0 in the loss: 0.0)" in cli("jobs", "status", job_id).stdout


def test_status_shows_the_phase_before_the_first_step(cli, engine):
    job_id = cli("jobs", "start", "bot", "--base-model", "tiny").stdout.strip().splitlines()[-1]
    with session_scope(engine) as s:
        token = jobs.claim_job(s, job_id=job_id, worker="w:1", heartbeat_timeout_s=60).token
        jobs.set_phase(s, job_id=job_id, token=token, phase="reference pass 120/240")
    assert "running (reference pass 120/240)  step 0/0" in cli("jobs", "status", job_id).stdout
    assert json.loads(cli("jobs", "status", job_id, "--json").stdout)["phase"] == "reference pass 120/240"


def test_start_queues_at_once_while_the_bundled_model_is_prepared(cli, monkeypatch, settings):
    from core.settings import Settings

    prepared = Settings(**{**settings.model_dump(), "register_bundled_model": True})
    client = cli_jobs._client()
    client._http = TestClient(create_app(prepared), headers=client._http.headers)
    monkeypatch.setattr(cli_jobs.time, "sleep", lambda _s: pytest.fail("the CLI should not wait"))
    started = cli("jobs", "start", "bot", "--base-model", prepared.bundled_model_name)
    assert started.exit_code == 0, started.output
    assert "queued job" in started.output and len(started.stdout.strip().splitlines()[-1]) == 32


def test_publish_a_refused_job_names_why_it_cannot(cli):
    job_id = cli("jobs", "start", "bot", "--base-model", "tiny").stdout.strip().splitlines()[-1]
    refused = cli("jobs", "publish", job_id, "--reason", "looked fine")
    assert refused.exit_code == 2 and "was not refused by the gate (status queued)" in refused.output
    assert cli("jobs", "publish", job_id).exit_code == 2  # --reason is required

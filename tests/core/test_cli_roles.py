"""`prospect worker` and `prospect beat` run one role each, with the queues and concurrency asked for,
and stop cleanly (exit 0) on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.cli_roles import beat_command, parse_queues, worker_command
from core.cli_run import CliError
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_queues_are_checked():
    assert parse_queues("training") == ["training"]
    assert parse_queues(" default , training,default") == ["default", "training"]
    for bad in ("", "gpu", "training,gpu"):
        with pytest.raises(CliError, match="--queues takes"):
            parse_queues(bad)


def test_commands_carry_queues_concurrency_and_settings(tmp_path):
    settings = Settings(data_dir=tmp_path, log_level="WARNING")
    cmd = worker_command(settings, queues=["training"], concurrency=3)
    assert cmd[cmd.index("-Q") + 1] == "training" and cmd[cmd.index("--concurrency") + 1] == "3"
    assert cmd[cmd.index("--loglevel") + 1] == "WARNING" and "beat" not in cmd
    beat = beat_command(settings)
    assert "beat" in beat and beat[beat.index("-s") + 1] == str(tmp_path.resolve() / "celerybeat-schedule")


def _env(tmp_path, db_url: str, broker_url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROSPECT_") or k == "PROSPECT_BASE_MODEL_DIRS"}
    return {**env, "PROSPECT_DATA_DIR": str(tmp_path / "var"), "PROSPECT_DATABASE_URL": db_url,
            "PROSPECT_BROKER_URL": broker_url, "PROSPECT_RESULT_BACKEND": f"db+sqlite:///{tmp_path / 'results.db'}",
            "PROSPECT_REGISTER_BUNDLED_MODEL": "false", "PROSPECT_LOG_LEVEL": "INFO"}


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return out


@pytest.mark.slow
def test_worker_serves_its_queues_only_and_stops_on_sigterm(tmp_path, db_url, broker_url):
    from api.queue import celery_client

    env = _env(tmp_path, db_url, broker_url)
    proc = subprocess.Popen([sys.executable, "-m", "core.cli", "worker", "--queues", "default", "--concurrency", "1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        settings = Settings(data_dir=tmp_path / "var", database_url=db_url, broker_url=broker_url,
                            result_backend=env["PROSPECT_RESULT_BACKEND"])
        client = celery_client(settings)
        assert client.send_task("prospect.ping", queue="default").get(timeout=90) == "pong"
        if broker_url.startswith("redis"):  # the SQLAlchemy transport has no broadcast: no inspect there
            inspect = client.control.inspect(timeout=5)
            (queues,) = inspect.active_queues().values()
            assert [q["name"] for q in queues] == ["default"]
            (stats,) = inspect.stats().values()
            assert stats["pool"]["max-concurrency"] == 1
        # A task on the queue this worker does not consume stays queued.
        unserved = client.send_task("prospect.ping", queue="training")
        time.sleep(3)
        assert unserved.state == "PENDING"
        assert proc.poll() is None
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
    assert "(default)" in out or "default" in out  # Celery's banner lists the queues
    assert "-> training" not in out


@pytest.mark.slow
def test_beat_runs_alone_and_stops_on_sigterm(tmp_path, db_url):
    # DEBUG so beat logs "Ticking with max interval" once its scheduler is built: a SIGTERM before that
    # lands inside Celery's own start-up (the result backend import) and Celery exits 1, not a Prospect bug.
    env = {**_env(tmp_path, db_url, f"sqla+sqlite:///{tmp_path / 'broker.db'}"), "PROSPECT_LOG_LEVEL": "DEBUG"}
    proc = subprocess.Popen([sys.executable, "-m", "core.cli", "beat"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("Ticking with max interval" in line for line in lines) and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.3)
        assert any("Ticking with max interval" in line for line in lines), "".join(lines)
        assert list((tmp_path / "var").glob("celerybeat-schedule*")), "beat wrote no schedule file"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert "beat: Starting" in out and "celery@" not in out  # beat only: no worker in this process

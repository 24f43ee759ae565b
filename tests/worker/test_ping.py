"""A prospect.ping task round-trips through a real worker on each broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ping_round_trip(broker_url, tmp_path):
    settings = Settings(
        data_dir=tmp_path / "var",
        database_url=f"sqlite:///{tmp_path / 'p.db'}",
        broker_url=broker_url,
        result_backend=f"db+sqlite:///{tmp_path / 'results.db'}",
        register_bundled_model=False,
    )
    env = {
        **os.environ,
        "PROSPECT_DATA_DIR": str(settings.data_dir),
        "PROSPECT_DATABASE_URL": settings.sqlalchemy_url,
        "PROSPECT_BROKER_URL": broker_url,
        "PROSPECT_RESULT_BACKEND": settings.celery_result_backend,
        "PROSPECT_REGISTER_BUNDLED_MODEL": "false",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "default",
         "--concurrency", "1", "--pool", "solo", "--loglevel", "WARNING", "-n", f"ping-{os.getpid()}@%h"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        from api.queue import celery_client

        client = celery_client(settings)
        result = client.send_task("prospect.ping", queue="default")
        assert result.get(timeout=60) == "pong"
    finally:
        worker.terminate()
        worker.wait(timeout=30)

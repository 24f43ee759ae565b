"""`prospect up` runs API + worker + beat, prints the key once, and Ctrl-C stops everything."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from tests.processes import alive

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 90) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "prospect up exited early"
        try:
            resp = httpx.get(url, timeout=2)
            if resp.status_code == 200:
                return resp
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready after {timeout_s}s")


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


@pytest.mark.slow
@pytest.mark.parametrize("services", ["embedded", pytest.param("postgres+redis", marks=[pytest.mark.postgres])])
def test_up_serves_and_stops_cleanly(services, tmp_path, request):
    port = _free_port()
    data = tmp_path / "var"
    env = {**os.environ, "PROSPECT_DATA_DIR": str(data), "PROSPECT_REGISTER_BUNDLED_MODEL": "false",
           "PROSPECT_LOG_LEVEL": "WARNING"}
    for k in ("PROSPECT_DATABASE_URL", "PROSPECT_BROKER_URL", "PROSPECT_RESULT_BACKEND"):
        env.pop(k, None)
    if services == "postgres+redis":
        from tests.conftest import PG_URL, REDIS_URL, create_pg_database, drop_pg_database

        if not (PG_URL and REDIS_URL):
            pytest.skip("PROSPECT_TEST_DATABASE_URL and PROSPECT_TEST_REDIS_URL are needed for this variant")
        db = create_pg_database()
        request.addfinalizer(lambda: drop_pg_database(db))
        env.update(PROSPECT_DATABASE_URL=db, PROSPECT_BROKER_URL=REDIS_URL)
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "up", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
        ready = _wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}

        # A ping round-trips through the same broker and the worker `up` started.
        from api.queue import celery_client

        settings = Settings(data_dir=data, database_url=env.get("PROSPECT_DATABASE_URL"),
                            broker_url=env.get("PROSPECT_BROKER_URL"))
        assert celery_client(settings).send_task("prospect.ping").get(timeout=90) == "pong"
        children = _children_of(proc.pid)
        assert len(children) == 3
        # The CLI, with the same data folder, finds this instance; a second `up` on it is refused at once.
        info = json.loads((data / "instance.json").read_text())
        assert info == {"url": f"http://127.0.0.1:{port}", "pid": proc.pid}
        second = subprocess.run([sys.executable, "-m", "core.cli", "up", "--port", str(_free_port())], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 2 and f"pid {proc.pid}" in second.stderr, second.stderr
        assert len(_children_of(proc.pid)) == 3
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}" in out
    assert str(data.resolve()) in out
    lines = out.splitlines()
    key_line = next(i for i, line in enumerate(lines) if "first start: an admin API key was created" in line)
    key = lines[key_line + 1].strip("| ")
    assert key.startswith("pk_") and f"export PROSPECT_API_KEY={key}" in out
    assert "Celery" not in out and (data / "logs" / "worker.log").stat().st_size > 0  # children log to files
    assert "stopped" in out and not (data / "instance.json").exists()
    assert not any(alive(pid) for pid in children)

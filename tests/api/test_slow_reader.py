"""A client reading a download at a few KB/s must not stall ingestion: the request's database session is
closed before the body streams, and reads take no SQLite write lock."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
import uvicorn

from api.main import create_app
from core import db
from core.db import session_scope
from core.keys import create_key
from core.models import Snapshot, utcnow
from core.snapshots import snapshot_path


@pytest.fixture
def server(settings, monkeypatch):
    # On the old code each POST would wait this long for the lock and then fail (instead of 30 s).
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 2000)
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", limit_concurrency=100))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    yield app, f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    thread.join(10)


def _slow_read(url: str, path: str, key: str, stop: threading.Event, got: list[int]) -> None:
    host, port = url.removeprefix("http://").split(":")
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.connect((host, int(port)))
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    while not stop.is_set():
        got[0] += len(conn.recv(2048))
        time.sleep(0.2)  # ~10 KB/s
    conn.close()


def test_slow_export_reader_does_not_stall_ingestion(server, settings):
    app, url = server
    with session_scope(app.state.engine) as s:
        key = create_key(s, name="all", scopes="admin")[1]
        snap = Snapshot(status="ready", content_hash="0" * 64, cutoff=utcnow(), n_rows=1)
        s.add(snap)
        s.flush()
        path = snapshot_path(settings, snap)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'{"prompt":"p","completion":"c","label":true}\n' * 200_000)  # ~9 MB
    stop, got = threading.Event(), [0]
    reader = threading.Thread(target=_slow_read, args=(url, f"/v1/snapshots/{snap.id}/export", key, stop, got))
    reader.start()
    try:
        while got[0] == 0:  # the export has started streaming
            time.sleep(0.05)
        codes = []
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            for i in range(200):
                r = client.post("/v1/feedback", json={"event_id": f"e{i}", "prompt": "p", "response": "r",
                                                      "label": "up"})
                codes.append(r.status_code)
                if r.status_code != 201:
                    break  # the old code: 503 after the busy timeout, 200 times over
        assert reader.is_alive() and got[0] < path.stat().st_size  # still reading while all that happened
    finally:
        stop.set()
        reader.join(10)
    assert codes == [201] * 200

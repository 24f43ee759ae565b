"""Ingestion benchmark: the API (uvicorn, 2 workers) against the local Postgres, vs raw psycopg inserts.

    .venv/bin/python bench/ingest.py [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Creates a fresh database, migrates it, creates a key, starts uvicorn on a
loopback port, then measures in one run:

- single: POST /v1/feedback with ``--concurrency`` keep-alive connections for
  ``--seconds`` (after a warm-up): requests/s, p50/p99 latency;
- batch: POST /v1/feedback/batch of ``--batch-size`` events, 2 connections:
  events/s;
- raw: the same kind of rows (events + their votes) written directly with
  psycopg executemany, one transaction per ``--batch-size`` rows, into the
  same tables of the same database: rows/s; and COPY of the event rows, for
  reference.

The load generator is a minimal asyncio HTTP/1.1 client in this process (it
shares the machine's cores with the server). Prints ONE JSON line; drops the
database afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from sqlalchemy import create_engine, make_url, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.db import make_engine, session_scope
from core.keys import create_key
from core.migrate import upgrade

log = logging.getLogger("bench.ingest")
PROMPT = "Summarise the following paragraph in one sentence: " + "lorem ipsum dolor sit amet " * 8
RESPONSE = "A short summary of the paragraph that the user rated. " * 3


def event(i: int, tag: str) -> dict:
    return {"event_id": f"{tag}-{i}", "prompt": PROMPT, "response": f"{RESPONSE}{i % 97}",
            "label": "up" if i % 3 else "down", "user_id": f"user-{i % 5000}", "model": "adapter@1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Conn:
    """One keep-alive HTTP/1.1 connection; just enough client to time requests cheaply."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, path: str, body: bytes) -> int:
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(status_line.split()[1])


async def run_single(port: int, key: str, *, concurrency: int, seconds: float, warmup: float) -> dict:
    conns = [Conn(port, key) for _ in range(concurrency)]
    for c in conns:
        await c.open()
    latencies: list[float] = []
    errors = 0
    counter = iter(range(10**9))
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup, t_start + warmup + seconds

    async def worker(c: Conn) -> None:
        nonlocal errors
        while (now := time.perf_counter()) < t_end:
            body = json.dumps(event(next(counter), "s")).encode()
            status = await c.post("/v1/feedback", body)
            done = time.perf_counter()
            if now >= t_measure:
                latencies.append(done - now)
                errors += status != 201

    await asyncio.gather(*(worker(c) for c in conns))
    for c in conns:
        c.writer.close()
    latencies.sort()
    return {
        "single_req_s": round(len(latencies) / seconds, 1),
        "single_p50_ms": round(1000 * statistics.median(latencies), 2),
        "single_p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2),
        "single_requests": len(latencies),
        "single_errors": errors,
        "concurrency": concurrency,
    }


async def run_batch(port: int, key: str, *, batches: int, size: int) -> dict:
    bodies = [json.dumps({"events": [event(b * size + i, "b") for i in range(size)]}).encode()
              for b in range(batches)]
    conns = [Conn(port, key) for _ in range(2)]
    for c in conns:
        await c.open()
    queue = list(reversed(bodies))
    statuses: list[int] = []

    async def worker(c: Conn) -> None:
        while queue:
            statuses.append(await c.post("/v1/feedback/batch", queue.pop()))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - t0
    return {"batch_events_s": round(batches * size / elapsed, 1), "batch_events": batches * size,
            "batch_size": size, "batch_errors": sum(s != 200 for s in statuses)}


def _raw_rows(n: int, size: int) -> list[tuple[list[tuple], list[tuple]]]:
    """(event rows, vote rows) per transaction, with the same shape the API writes."""
    sha = lambda s: hashlib.sha256(s.encode()).hexdigest()
    out = []
    now = time.strftime("%Y-%m-%d %H:%M:%S+00")
    for start in range(0, n, size):
        events, votes = [], []
        for i in range(start, min(n, start + size)):
            e = event(i, "raw")
            pk, pair = sha(PROMPT), sha(PROMPT + e["response"])
            events.append((e["event_id"], sha(json.dumps(e)), PROMPT, pk, pair, e["response"], e["label"] == "up",
                           e["user_id"], e["model"], now, now))
            votes.append((e["user_id"], pair, pk, e["event_id"], e["label"] == "up", e["model"], now, now))
        out.append((events, votes))
    return out


def run_raw(url: str, *, n: int, size: int) -> dict:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    chunks = _raw_rows(n, size)
    ins_ev = ("INSERT INTO feedback_events (event_id, content_hash, prompt, prompt_key, pair_key, response, label,"
              " user_id, model, created_at, received_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)")
    # The vote points at the event by its primary key, found through the unique event_id.
    ins_vote = ("INSERT INTO votes (voter_key, pair_key, prompt_key, event_pk, label, model, created_at, updated_at)"
                " SELECT %s,%s,%s,id,%s,%s,%s,%s FROM feedback_events WHERE event_id = %s"
                " ON CONFLICT (voter_key, pair_key) DO UPDATE SET event_pk = excluded.event_pk")
    with psycopg.connect(dsn) as conn:
        t0 = time.perf_counter()
        for events, votes in chunks:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(ins_ev, events)
                cur.executemany(ins_vote, [(*v[:3], *v[4:], v[3]) for v in votes])
        executemany_s = time.perf_counter() - t0
        copy_rows = [[(f"copy-{r[0]}", *r[1:]) for r in events] for events, _ in chunks]
        t0 = time.perf_counter()
        for rows in copy_rows:
            with conn.transaction(), conn.cursor() as cur, cur.copy(
                "COPY feedback_events (event_id, content_hash, prompt, prompt_key, pair_key, response,"
                " label, user_id, model, created_at, received_at) FROM STDIN"
            ) as copy:
                for r in rows:
                    copy.write_row(r)
        copy_s = time.perf_counter() - t0
    return {"raw_executemany_rows_s": round(n / executemany_s, 1), "raw_copy_events_only_rows_s": round(n / copy_s, 1)}


def wait_ready(port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("uvicorn did not become ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                    help="an existing database to connect to for CREATE/DROP DATABASE")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    name = f"prospect_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.pg_url).set(database=name).render_as_string(hide_password=False)
    proc = None
    try:
        upgrade(url)
        engine = make_engine(url)
        with session_scope(engine) as s:
            key = create_key(s, name="bench", scopes="ingest")[1]
        engine.dispose()
        port = free_port()
        tmp = tempfile.mkdtemp(prefix="prospect-bench-")
        env = {**os.environ, "PROSPECT_DATABASE_URL": url, "PROSPECT_DATA_DIR": tmp,
               "PROSPECT_BROKER_URL": f"sqla+sqlite:///{tmp}/broker.db", "PROSPECT_REDIS_URL": "",
               "PROSPECT_RATE_LIMIT_PER_SECOND": "1000000", "PROSPECT_RATE_LIMIT_BURST": "1000000",
               "PROSPECT_LOG_LEVEL": "WARNING", "PROSPECT_REGISTER_BUNDLED_MODEL": "false"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(args.workers), "--no-access-log", "--log-level", "warning"],
            cwd=REPO, env=env)
        wait_ready(port, proc)
        log.info("uvicorn ready on %d; single-event phase (%ss)", port, args.seconds)
        figures = asyncio.run(run_single(port, key, concurrency=args.concurrency, seconds=args.seconds,
                                         warmup=args.warmup))
        log.info("batch phase (%d x %d)", args.batches, args.batch_size)
        figures |= asyncio.run(run_batch(port, key, batches=args.batches, size=args.batch_size))
        proc.terminate()
        proc.wait(timeout=30)
        proc = None
        log.info("raw psycopg phase")
        figures |= run_raw(url, n=args.batches * args.batch_size, size=args.batch_size)
        figures["batch_over_raw"] = round(figures["batch_events_s"] / figures["raw_executemany_rows_s"], 3)
        figures["batch_over_copy"] = round(figures["batch_events_s"] / figures["raw_copy_events_only_rows_s"], 3)
        figures["workers"] = args.workers
        figures["cpus"] = os.cpu_count()
        print(json.dumps(figures))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()

"""Ingestion benchmark: the API's single-event path against a bare endpoint and raw psycopg, on Postgres.

    make bench-ingest      (= .venv/bin/python bench/ingest.py; about 90 s)
    .venv/bin/python bench/ingest.py --no-sqlite --seconds 4    (about 45 s)

Creates a fresh Postgres database, migrates it, creates a key, and measures in one run, every
server under the same uvicorn settings (``--workers``, no access log) and the same load
generator (bench/httpload.py, ``--concurrency`` keep-alive connections, in this process):

- ``single``: ``POST /v1/feedback`` of the API at its settings (group commit as configured);
  ``single_group_commit_on|off``: the same API with group commit the other way;
- ``bare``: bench/bare_app.py, a bare ASGI endpoint running the API's one-statement insert with
  one commit per request: the floor of this architecture (uvicorn, threads, psycopg);
  these three in interleaved rounds, so a machine whose speed drifts weighs on each alike;
  ``single_vs_bare`` is the ratio of requests/s;
- ``single_*_at_half_bare``: p50/p99 of the API in an open loop offered half of ``bare_req_per_s``
  (``bare_*_at_half_bare``: the bare endpoint under the same offered load, for reference);
- ``batch``: ``POST /v1/feedback/batch`` of ``--batch-size`` events, 2 connections: events/s;
- ``raw_commits_per_s``: one-row commits of the same statement straight from psycopg, at the
  same concurrency (``--workers`` processes of threads, one connection each);
- ``raw_executemany_rows_s`` / ``raw_copy_events_only_rows_s``: the rows of the batch phase
  written by psycopg executemany (events + votes), and COPY of the events alone;
- ``sqlite_single``: the API's single-event path on the embedded default (SQLite), closed loop.

Prints ONE JSON line (with the 1-minute load average: figures from a busy machine say so);
drops the database afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy import create_engine, make_url, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bare_app import SQL, row
from bench.httpload import Conn, closed_rounds, get, open_loop
from core.db import make_engine, session_scope
from core.keys import create_key
from core.migrate import upgrade
from core.settings import Settings

log = logging.getLogger("bench.ingest")
PROMPT = "Summarise the following paragraph in one sentence: " + "lorem ipsum dolor sit amet " * 8
RESPONSE = "A short summary of the paragraph that the user rated. " * 3


def event(i: int, tag: str) -> dict:
    return {"event_id": f"{tag}-{i}", "prompt": PROMPT, "response": f"{RESPONSE}{i % 97}",
            "label": "up" if i % 3 else "down", "user_id": f"user-{i % 5000}", "model": "adapter@1"}


def body(tag: str):
    return lambda i: json.dumps(event(i, tag)).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run_batch(port: int, key: str, *, batches: int, size: int) -> dict:
    bodies = [json.dumps({"events": [event(b * size + i, "b") for i in range(size)]}).encode()
              for b in range(batches)]
    conns = [await Conn(port, key).open() for _ in range(2)]
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


def _commit_threads(dsn: str, threads: int, proc: int, start: float, warmup: float, seconds: float, out) -> None:
    t_measure, t_end = start + warmup, start + warmup + seconds
    counts = [0] * threads

    def worker(k: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            params = (row(event(i, f"rawc{proc}.{k}")) for i in range(10**9))
            while time.time() < start:
                time.sleep(0.01)
            while (now := time.time()) < t_end:
                conn.execute(SQL, next(params))
                counts[k] += now >= t_measure

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put(sum(counts))


def run_raw_commits(url: str, *, concurrency: int, processes: int, seconds: float, warmup: float) -> dict:
    """``concurrency`` connections (``processes`` processes of threads, as the API's workers) committing the
    API's one-row statement (event + vote, autocommit) back to back: what Postgres gives one-row commits."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start = time.time() + 1.0
    procs = [ctx.Process(target=_commit_threads, args=(dsn, concurrency // processes + (k < concurrency % processes),
                                                       k, start, warmup, seconds, out)) for k in range(processes)]
    for p in procs:
        p.start()
    total = sum(out.get() for _ in procs)
    for p in procs:
        p.join()
    return {"raw_commits_per_s": round(total / seconds, 1)}


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


def mean_group(port: int) -> float | None:
    """Mean events per group commit so far, from the server's /metrics (None: no group written)."""
    text_ = asyncio.run(get(port, "/metrics")).decode()
    values = {}
    for line in text_.splitlines():
        name, _, value = line.partition(" ")
        if name in ("prospect_ingest_group_events_sum", "prospect_ingest_group_events_count"):
            values[name.rsplit("_", 1)[1]] = float(value)
    return round(values["sum"] / values["count"], 1) if values.get("count") else None


@contextmanager
def serving(target: list[str], env: dict[str, str], workers: int) -> Iterator[int]:
    """uvicorn with the same settings for every app measured; yields its port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", *target, "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers), "--no-access-log", "--log-level", "warning"], cwd=REPO, env=env)
    try:
        wait_ready(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def new_key(url: str) -> str:
    upgrade(url)
    engine = make_engine(url)
    with session_scope(engine) as s:
        key = create_key(s, name="bench", scopes="ingest")[1]
    engine.dispose()
    return key


API = ["--factory", "api.main:create_app"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                    help="an existing database to connect to for CREATE/DROP DATABASE")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds of each server or phase")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds the closed-loop seconds are cut into")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-sqlite", action="store_true", help="skip the embedded-default (SQLite) phase")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    closed = {"concurrency": args.concurrency, "seconds": args.seconds, "warmup": args.warmup, "rounds": args.rounds}

    name = f"prospect_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.pg_url).set(database=name).render_as_string(hide_password=False)
    try:
        key = new_key(url)
        tmp = tempfile.mkdtemp(prefix="prospect-bench-")
        env = {**os.environ, "PROSPECT_DATABASE_URL": url, "PROSPECT_DATA_DIR": tmp,
               "PROSPECT_BROKER_URL": f"sqla+sqlite:///{tmp}/broker.db", "PROSPECT_REDIS_URL": "",
               "PROSPECT_RATE_LIMIT_PER_SECOND": "1000000", "PROSPECT_RATE_LIMIT_BURST": "1000000",
               "PROSPECT_LOG_LEVEL": "WARNING", "PROSPECT_REGISTER_BUNDLED_MODEL": "false"}
        group = Settings().ingest_group_commit  # what the API runs with here (PROSPECT_INGEST_GROUP_COMMIT)
        other = f"single_group_commit_{'off' if group else 'on'}"
        figures: dict = {"group_commit": group}
        log.info("closed loop, %d rounds: bare endpoint, API (group commit %s), API (%s)", args.rounds,
                 "on" if group else "off", other)
        alt_env = env | {"PROSPECT_INGEST_GROUP_COMMIT": str(not group).lower(), "PROSPECT_DATA_DIR": f"{tmp}/alt"}
        with (serving(["bench.bare_app:app"], env, args.workers) as bare,
              serving(API, env, args.workers) as single, serving(API, alt_env, args.workers) as alt):
            figures |= asyncio.run(closed_rounds(
                {"bare": (bare, key), "single": (single, key), other: (alt, key)}, body("c"), **closed))
            figures["mean_group_events"] = mean_group(single if group else alt)
            half = figures["bare_req_per_s"] / 2
            log.info("open loop at half the bare rate (%.0f/s): the API, then the bare endpoint; then batches", half)
            for name, port in (("single", single), ("bare", bare)):
                at_half = asyncio.run(open_loop(port, key, body(f"o{name}"), prefix="x", rate=half,
                                                seconds=args.seconds, warmup=args.warmup))
                figures |= {f"{name}_{k[2:]}_at_half_bare": v for k, v in at_half.items()}
            figures |= asyncio.run(run_batch(single, key, batches=args.batches, size=args.batch_size))
        log.info("raw psycopg: one-row commits on %d connections, then executemany and COPY", args.concurrency)
        figures |= run_raw_commits(url, concurrency=args.concurrency, processes=args.workers, seconds=args.seconds,
                                   warmup=args.warmup)
        figures |= run_raw(url, n=args.batches * args.batch_size, size=args.batch_size)
        if not args.no_sqlite:
            log.info("API on the embedded default (SQLite), closed loop")
            lite = tempfile.mkdtemp(prefix="prospect-bench-sqlite-")
            lite_key = new_key(f"sqlite:///{lite}/prospect.db")
            lite_env = {k: v for k, v in env.items() if k != "PROSPECT_DATABASE_URL"} | {"PROSPECT_DATA_DIR": lite}
            with serving(API, lite_env, args.workers) as port:
                figures |= asyncio.run(closed_rounds({"sqlite_single": (port, lite_key)}, body("l"),
                                                     **(closed | {"rounds": 1})))
        figures["single_vs_bare"] = round(figures["single_req_per_s"] / figures["bare_req_per_s"], 3)
        figures[f"{other}_vs_bare"] = round(figures[f"{other}_req_per_s"] / figures["bare_req_per_s"], 3)
        figures["batch_over_raw"] = round(figures["batch_events_s"] / figures["raw_executemany_rows_s"], 3)
        figures["batch_over_copy"] = round(figures["batch_events_s"] / figures["raw_copy_events_only_rows_s"], 3)
        figures |= {"concurrency": args.concurrency, "workers": args.workers, "cpus": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)}
        print(json.dumps(figures))
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()

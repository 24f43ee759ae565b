"""Benchmark: a snapshot of 1,000,000 feedback events on Postgres, in time and memory.

Creates a fresh database, migrates it, bulk-loads the events and their counted
votes with COPY, then, each in a fresh child process (so peak RSS is the
snapshot's own):

- baseline: stream the snapshot's ordered ``votes JOIN feedback_events``
  query and discard the rows (the floor any snapshot pays);
- snapshot: ``core.snapshots.create_snapshot`` (majority aggregation).

Prints ONE JSON line: wall seconds of both, their ratio, peak RSS of the
snapshot child (and of the baseline child, the interpreter + driver floor),
the row counts and whether they match the counts computed while generating.
Targets: < 60 s and < 500 MB for 1M events.

    .venv/bin/python bench/snapshot.py [--events 1000000] [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import random
import resource
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from sqlalchemy import create_engine, make_url, text

from core.migrate import upgrade

log = logging.getLogger("bench.snapshot")
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
EVENT_COLUMNS = ("id", "event_id", "content_hash", "prompt", "prompt_key", "pair_key", "response", "label", "model",
                 "metadata", "created_at", "received_at")
VOTE_COLUMNS = ("voter_key", "pair_key", "prompt_key", "event_pk", "label", "model", "created_at", "updated_at")


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def load(url: str, n_events: int, *, seed: int = 0) -> dict[str, int]:
    """COPY ``n_events`` events (about 2.5 votes per pair, 2 responses per prompt) and their votes.

    Returns the majority counts the snapshot must find.
    """
    rng = random.Random(seed)
    n_pairs = max(1, int(n_events / 2.5))
    pairs = [rng.randrange(n_pairs) for _ in range(n_events)]
    labels = [rng.random() < 0.6 for _ in range(n_events)]
    filler = "lorem ipsum dolor sit amet " * 6
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY feedback_events ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as copy:
            for i, (pair, label) in enumerate(zip(pairs, labels, strict=True), 1):
                created = T0 + timedelta(seconds=i)
                copy.write_row((
                    i, f"ev-{i}", f"{i:064x}", f"prompt {pair // 2}: {filler}", f"{pair // 2:064x}",
                    f"{pair:064x}", f"response {pair}: {filler}{filler}", label, f"m{pair % 3}",
                    '{"lang": "en"}', created, created,
                ))
        log.info("loaded %d events", n_events)
        # Anonymous voters ("event:<id>"): every event is a counted vote.
        with cur.copy(f"COPY votes ({', '.join(VOTE_COLUMNS)}) FROM STDIN") as copy:
            for i, (pair, label) in enumerate(zip(pairs, labels, strict=True), 1):
                created = T0 + timedelta(seconds=i)
                copy.write_row((f"event:ev-{i}", f"{pair:064x}", f"{pair // 2:064x}", i, label, f"m{pair % 3}",
                                created, created))
        cur.execute("ANALYZE")
        conn.commit()
    log.info("loaded %d votes", n_events)
    ups, downs = [0] * n_pairs, [0] * n_pairs
    for pair, label in zip(pairs, labels, strict=True):
        (ups if label else downs)[pair] += 1
    return {"n_desirable": sum(u > d for u, d in zip(ups, downs, strict=True)),
            "n_undesirable": sum(d > u for u, d in zip(ups, downs, strict=True))}


def _child_baseline(url: str, out: mp.Queue) -> None:
    from core.db import make_engine
    from core.models import utcnow
    from core.snapshots import STREAM_BATCH, SnapshotFilters, _votes_query

    engine = make_engine(url)
    started = time.perf_counter()
    n = 0
    with engine.connect() as conn:
        result = conn.execute(_votes_query(SnapshotFilters(), utcnow()), execution_options={"yield_per": STREAM_BATCH})
        for _ in result:
            n += 1
    out.put({"wall_s": time.perf_counter() - started, "rows": n, "peak_rss_mb": _maxrss_mb()})


def _child_snapshot(url: str, data_dir: str, out: mp.Queue) -> None:
    from core.db import make_engine, session_scope
    from core.settings import Settings
    from core.snapshots import create_snapshot

    settings = Settings(data_dir=Path(data_dir), database_url=url)
    engine = make_engine(url)
    started = time.perf_counter()
    with session_scope(engine) as session:
        snap = create_snapshot(session, settings=settings)
        counts = {"n_rows": snap.n_rows, "n_desirable": snap.n_desirable, "n_undesirable": snap.n_undesirable}
    out.put({"wall_s": time.perf_counter() - started, "peak_rss_mb": _maxrss_mb(), **counts})


def _in_child(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, out))
    proc.start()
    result = out.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=DEFAULT_ADMIN_URL, help="A Postgres URL with CREATE DATABASE rights.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    admin_url = make_url(args.database_url)
    name = f"prospect_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        started = time.perf_counter()
        expected = load(url, args.events)
        load_s = time.perf_counter() - started
        baseline = _in_child(_child_baseline, url)
        with tempfile.TemporaryDirectory() as data_dir:
            snap = _in_child(_child_snapshot, url, data_dir)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    print(json.dumps({
        "bench": "snapshot",
        "events": args.events,
        "load_s": round(load_s, 1),
        "baseline_stream_s": round(baseline["wall_s"], 2),
        "snapshot_s": round(snap["wall_s"], 2),
        "snapshot_over_baseline": round(snap["wall_s"] / baseline["wall_s"], 2),
        "snapshot_peak_rss_mb": round(snap["peak_rss_mb"], 1),
        "baseline_peak_rss_mb": round(baseline["peak_rss_mb"], 1),
        "n_rows": snap["n_rows"],
        "n_desirable": snap["n_desirable"],
        "n_undesirable": snap["n_undesirable"],
        "counts_match": (snap["n_desirable"], snap["n_undesirable"]) == (expected["n_desirable"],
                                                                        expected["n_undesirable"]),
        "targets_met": snap["wall_s"] < 60 and snap["peak_rss_mb"] < 500,
    }))


if __name__ == "__main__":
    main()

"""The floor bench/ingest.py measures the single-event API against: a bare ASGI endpoint.

    uvicorn bench.bare_app:app   (PROSPECT_DATABASE_URL must name a migrated Postgres database)

No framework, no auth, no validation: read the body, parse the JSON, compute
the keys the row needs, and run the API's own one-statement insert
(``core.feedback_write._PG_INGEST_ONE``, event + vote, autocommit: one commit per
request) with psycopg through a small connection pool on a thread pool, the
same shape as the API (sync driver, 40 threads, at most 30 connections).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import queue
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import orjson
import psycopg
from sqlalchemy import make_url
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

from core.feedback_write import _PG_INGEST_ONE

SQL = str(_PG_INGEST_ONE.compile(dialect=pg_psycopg.dialect()))
THREADS, MAX_CONNECTIONS = 40, 30


class Pool:
    """A LIFO of open autocommit connections, opened on demand up to ``size``; at most ``keep`` stay open
    idle (SQLAlchemy's pool_size 10 + max_overflow 20, as the API's engine)."""

    def __init__(self, dsn: str, size: int, keep: int = 10) -> None:
        self.dsn, self.keep = dsn, keep
        self.idle: queue.LifoQueue[psycopg.Connection] = queue.LifoQueue()
        self.slots = queue.Queue()
        for _ in range(size):
            self.slots.put(None)

    def run(self, params: dict) -> bool:
        self.slots.get()
        try:
            try:
                conn = self.idle.get_nowait()
            except queue.Empty:
                conn = psycopg.connect(self.dsn, autocommit=True)
            try:
                created = conn.execute(SQL, params).fetchone() is not None
            except BaseException:
                conn.close()
                raise
            if self.idle.qsize() < self.keep:
                self.idle.put(conn)
            else:
                conn.close()
            return created
        finally:
            self.slots.put(None)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def row(e: dict) -> dict:
    now = datetime.now(UTC)
    canon = lambda v: orjson.dumps(v, option=orjson.OPT_SORT_KEYS)
    prompt = e.get("prompt") if e.get("prompt") is not None else e.get("messages")
    return {
        "event_id": e["event_id"], "content_hash": _sha(canon(e)), "prompt": e.get("prompt"), "messages": None,
        "prompt_key": _sha(canon(prompt)), "pair_key": _sha(canon([prompt, e["response"]])),
        "response": e["response"], "label": e["label"] == "up", "user_id": e.get("user_id"),
        "conversation_id": None, "response_id": None, "model": e.get("model"), "adapter": None,
        "adapter_version": None, "metadata": None, "created_at": now, "received_at": now, "retracted_at": None,
        "erased_at": None, "api_key_id": None, "voter_key": f"user:{e['user_id']}",
    }


_pool: Pool | None = None
_executor = ThreadPoolExecutor(THREADS)


async def _respond(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send) -> None:
    global _pool
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/healthz":
        await _respond(send, 200, b"{}")
        return
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    event = orjson.loads(b"".join(chunks))
    if _pool is None:
        url = make_url(os.environ["PROSPECT_DATABASE_URL"]).set(drivername="postgresql")
        _pool = Pool(url.render_as_string(hide_password=False), MAX_CONNECTIONS)
    created = await asyncio.get_running_loop().run_in_executor(_executor, _pool.run, row(event))
    await _respond(send, 201 if created else 200,
                   orjson.dumps({"event_id": event["event_id"], "status": "created" if created else "duplicate"}))

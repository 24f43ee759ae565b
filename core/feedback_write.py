"""Feedback writes: one event, a batch, a retraction; each one transaction (rules in ``core.feedback``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import JSON, Connection, Engine, bindparam, delete, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from core.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from core.feedback import (
    EVENTS,
    VOTES,
    EventInput,
    IngestResult,
    InvalidItem,
    Limits,
    PreparedEvent,
    _prepare,
    prepare_event,
)
from core.models import utcnow

DEFAULT_LIMITS = Limits()


def _insert(conn: Connection):
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)


# Postgres bulk writes: one INSERT .. SELECT FROM unnest(array per column) statement. The query
# text is the same for every batch size, so the driver parses it once and sends each column
# as one array, instead of a fresh multi-thousand-parameter VALUES list per batch.
_EVENT_UNNEST = "ON CONFLICT (event_id) DO NOTHING RETURNING event_id, id"
_VOTE_UNNEST = (
    "ON CONFLICT (voter_key, pair_key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in ("prompt_key", "event_pk", "label", "model", "created_at", "updated_at"))
    + " WHERE votes.created_at <= excluded.created_at"
)
_unnest_cache: dict[tuple[str, str], str] = {}


def _unnest_sql(conn: Connection, table, tail: str) -> str:
    key = (table.name, tail)
    if key not in _unnest_cache:
        cols = [c for c in table.c if c.key != "id"]
        casts = ", ".join(f"%b::{c.type.compile(dialect=conn.dialect)}[]" for c in cols)  # %b: binary arrays
        names = ", ".join(f'"{c.name}"' for c in cols)
        _unnest_cache[key] = f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({casts}) {tail}"
    return _unnest_cache[key]


def _columns(rows: list[dict[str, Any]], table) -> tuple[list[Any], ...]:
    out = []
    for c in table.c:
        if c.key == "id":
            continue
        values = [r.get(c.key) for r in rows]
        if isinstance(c.type, JSON):
            values = [None if v is None else orjson.dumps(v).decode() for v in values]
        out.append(values)
    return tuple(out)


def _write(conn: Connection, prepared: list[PreparedEvent], results: list[IngestResult | None]) -> None:
    """Insert new events and move votes; fill ``results`` for every prepared item."""
    first: dict[str, PreparedEvent] = {}
    for p in prepared:
        first.setdefault(p.row["event_id"], p)
    # Sorted by event_id so concurrent overlapping batches lock rows in one order (no deadlock).
    rows = [first[k].row for k in sorted(first)]
    inserted: dict[str, int] = {}
    if conn.dialect.name == "postgresql":
        sql = _unnest_sql(conn, EVENTS, _EVENT_UNNEST)
        inserted = dict(conn.exec_driver_sql(sql, _columns(rows, EVENTS)).all())
    else:
        stmt = _insert(conn)(EVENTS).on_conflict_do_nothing(index_elements=["event_id"])
        stmt = stmt.returning(EVENTS.c.event_id, EVENTS.c.id)
        inserted = dict((conn.execute(stmt, rows[0]) if len(rows) == 1 else conn.execute(stmt, rows)).all())
    stored = {eid: first[eid].row["content_hash"] for eid in inserted}
    missing = [eid for eid in first if eid not in inserted]
    if missing:
        q = select(EVENTS.c.event_id, EVENTS.c.content_hash).where(EVENTS.c.event_id.in_(missing))
        stored.update(dict(conn.execute(q).all()))
    for p in prepared:
        eid = p.row["event_id"]
        if first[eid] is p and eid in inserted:
            results[p.index] = IngestResult(eid, "created")
        elif stored.get(eid) == p.row["content_hash"]:
            results[p.index] = IngestResult(eid, "duplicate")
        else:
            results[p.index] = IngestResult(
                eid, "conflict", f"event_id '{eid}' was already stored with different content"
            )
    _upsert_votes(conn, [first[eid] for eid in inserted], inserted)


def _upsert_votes(conn: Connection, new: list[PreparedEvent], pks: dict[str, int]) -> None:
    # Within one batch keep the newest event per (voter, pair): one statement may not touch a row twice.
    best: dict[tuple[str, str], PreparedEvent] = {}
    for p in new:
        k = (p.voter_key, p.row["pair_key"])
        cur = best.get(k)
        if cur is None or (p.row["created_at"], p.index) >= (cur.row["created_at"], cur.index):
            best[k] = p
    if not best:
        return
    now = utcnow()
    votes = [
        {
            "voter_key": p.voter_key,
            "pair_key": p.row["pair_key"],
            "prompt_key": p.row["prompt_key"],
            "event_pk": pks[p.row["event_id"]],
            "label": p.row["label"],
            "model": p.row["model"],
            "created_at": p.row["created_at"],
            "updated_at": now,
        }
        for _, p in sorted(best.items())
    ]
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(_unnest_sql(conn, VOTES, _VOTE_UNNEST), _columns(votes, VOTES))
        return
    ins = _insert(conn)(VOTES)
    ex = ins.excluded
    stmt = ins.on_conflict_do_update(
        index_elements=["voter_key", "pair_key"],
        set_={c: ex[c] for c in ("prompt_key", "event_pk", "label", "model", "created_at", "updated_at")},
        # Newer by created_at wins; on a tie the later arrival (this one) wins.
        where=VOTES.c.created_at <= ex.created_at,
    )
    conn.execute(stmt, votes[0] if len(votes) == 1 else votes)


_EVENT_COLS = [c.key for c in EVENTS.c if c.key != "id"]
_VOTE_SET = ("prompt_key", "event_pk", "label", "model", "created_at", "updated_at")
# The hot path on Postgres: event insert and vote upsert in ONE autocommit statement (atomic
# on its own), so a new event costs one round trip instead of BEGIN/INSERT/INSERT/COMMIT.
_PG_INGEST_ONE = text(
    "WITH ev AS (INSERT INTO feedback_events ({cols}) VALUES ({vals}) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING id), "
    "v AS (INSERT INTO votes (voter_key, pair_key, prompt_key, event_pk, label, model, created_at, updated_at) "
    "SELECT :voter_key, :pair_key, :prompt_key, ev.id, :label, :model, :created_at, :received_at FROM ev "
    "ON CONFLICT (voter_key, pair_key) DO UPDATE SET {sets} WHERE votes.created_at <= excluded.created_at) "
    "SELECT id FROM ev".format(
        cols=", ".join(f'"{c}"' for c in _EVENT_COLS),
        vals=", ".join(f":{c}" for c in _EVENT_COLS),
        sets=", ".join(f"{c} = excluded.{c}" for c in _VOTE_SET),
    )
).bindparams(*(bindparam(c.key, type_=c.type) for c in EVENTS.c if c.key != "id"), bindparam("voter_key"))
_STORED_HASH = select(EVENTS.c.content_hash).where(EVENTS.c.event_id == bindparam("eid"))


def _ingest_one_pg(engine: Engine, p: PreparedEvent) -> IngestResult:
    eid = p.row["event_id"]
    # Autocommit: the one statement is its own transaction, with no BEGIN and COMMIT round trips.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if conn.execute(_PG_INGEST_ONE, {**p.row, "voter_key": p.voter_key}).first() is not None:
            return IngestResult(eid, "created")
        stored = conn.execute(_STORED_HASH, {"eid": eid}).scalar()
    if stored == p.row["content_hash"]:
        return IngestResult(eid, "duplicate")
    return IngestResult(eid, "conflict", f"event_id '{eid}' was already stored with different content")


def ingest_prepared(engine: Engine, prepared: PreparedEvent) -> IngestResult:
    """Store one prepared event in its own transaction: created, duplicate or conflict (not raised)."""
    if engine.dialect.name == "postgresql":
        return _ingest_one_pg(engine, prepared)
    results: list[IngestResult | None] = [None]
    with engine.begin() as conn:
        _write(conn, [PreparedEvent(0, prepared.row, prepared.voter_key)], results)
    assert results[0] is not None
    return results[0]


def raise_conflict(result: IngestResult) -> IngestResult:
    """The result, unless it is a conflict: that is raised as Conflict (409)."""
    if result.status == "conflict":
        raise Conflict(result.error or "conflict", details={"event_id": result.event_id})
    return result


def ingest_event(
    engine: Engine, *, event: EventInput, limits: Limits = DEFAULT_LIMITS, api_key_id: int | None = None
) -> IngestResult:
    """Store one event. Returns status created or duplicate; raises Conflict, InvalidInput, PayloadTooLarge."""
    return raise_conflict(ingest_prepared(engine, prepare_event(event, limits=limits, api_key_id=api_key_id)))


def ingest_batch(
    engine: Engine,
    *,
    items: Sequence[EventInput | InvalidItem],
    limits: Limits = DEFAULT_LIMITS,
    api_key_id: int | None = None,
) -> list[IngestResult]:
    """Store the valid items in one transaction; one result per item, in order."""
    with engine.begin() as conn:
        return _ingest_items(conn, items, limits, api_key_id)


def _ingest_items(
    conn: Connection, items: Sequence[EventInput | InvalidItem], limits: Limits, api_key_id: int | None
) -> list[IngestResult]:
    now = utcnow()
    results: list[IngestResult | None] = [None] * len(items)
    prepared: list[PreparedEvent] = []
    for i, item in enumerate(items):
        if isinstance(item, InvalidItem):
            results[i] = IngestResult(item.event_id, "invalid", item.message)
            continue
        try:
            prepared.append(_prepare(i, item, limits, api_key_id, now))
        except (InvalidInput, PayloadTooLarge) as exc:
            eid = item.event_id if isinstance(item.event_id, str) else None
            results[i] = IngestResult(eid, "invalid", exc.message)
    if prepared:
        _write(conn, prepared, results)
    return [r for r in results if r is not None]


def retract_event(
    engine: Engine, *, event_id: str, api_key_id: int | None = None, any_key: bool = True
) -> dict[str, Any]:
    """Mark the event retracted (idempotent) and drop the counted vote that points at it.

    Unless ``any_key``, only the key that created the event may retract it; for any other key the event
    does not exist (404), so ids cannot be probed."""
    with engine.begin() as conn:
        row = conn.execute(
            select(EVENTS.c.id, EVENTS.c.retracted_at, EVENTS.c.api_key_id)
            .where(EVENTS.c.event_id == event_id).with_for_update()
        ).first()
        if row is None or (not any_key and row.api_key_id != api_key_id):
            raise NotFound(f"no feedback event with event_id '{event_id}'")
        retracted_at = row.retracted_at
        if retracted_at is None:
            retracted_at = utcnow()
            conn.execute(update(EVENTS).where(EVENTS.c.id == row.id).values(retracted_at=retracted_at))
        conn.execute(delete(VOTES).where(VOTES.c.event_pk == row.id))
    return {"event_id": event_id, "status": "retracted", "retracted_at": retracted_at}

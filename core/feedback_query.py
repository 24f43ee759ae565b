"""Feedback reads: one stored event, counted-vote stats and the TRL KTO export (rules in ``core.feedback``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Engine, func, select

from core.errors import NotFound
from core.feedback import EVENTS, VOTES, _utc

EXPORT_CHUNK_ROWS = 1000

def get_event(engine: Engine, *, event_id: str) -> dict[str, Any]:
    """The stored event, with ``counted``: whether it is the voter's current vote."""
    stmt = (
        select(EVENTS, VOTES.c.id.is_not(None).label("counted"))
        .outerjoin(VOTES, VOTES.c.event_pk == EVENTS.c.id)
        .where(EVENTS.c.event_id == event_id)
    )
    with engine.connect() as conn:
        row = conn.execute(stmt).mappings().first()
    if row is None:
        raise NotFound(f"no feedback event with event_id '{event_id}'")
    # str(): column keys may be str subclasses, which orjson refuses as dict keys.
    hidden = ("id", "api_key_id", "prompt_key", "pair_key")
    out = {str(c.key): row[c.key] for c in EVENTS.c if c.key not in hidden}
    out["label"] = "up" if row["label"] else "down"
    out["counted"] = bool(row["counted"])
    return out


def _vote_filters(stmt, since: datetime | None, until: datetime | None, model: str | None, *, table=VOTES):
    """``since <= created_at < until`` and ``model`` on ``table`` (votes, or events: both have the columns)."""
    if since is not None:
        stmt = stmt.where(table.c.created_at >= _utc(since))
    if until is not None:
        stmt = stmt.where(table.c.created_at < _utc(until))
    if model is not None:
        stmt = stmt.where(table.c.model == model)
    return stmt


def feedback_stats(
    engine: Engine, *, since: datetime | None = None, until: datetime | None = None, model: str | None = None
) -> dict[str, Any]:
    """Counted up/down votes (after re-votes and retractions), overall and per model.

    ``since`` is inclusive, ``until`` exclusive, both on the event's created_at.
    """
    stmt = _vote_filters(
        select(VOTES.c.model, VOTES.c.label, func.count()).group_by(VOTES.c.model, VOTES.c.label),
        since,
        until,
        model,
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    per: dict[str | None, dict[str, int]] = {}
    for m, label, n in rows:
        c = per.setdefault(m, {"up": 0, "down": 0})
        c["up" if label else "down"] += n
    up = sum(c["up"] for c in per.values())
    down = sum(c["down"] for c in per.values())
    by_model = [
        {"model": m, "up": c["up"], "down": c["down"], "total": c["up"] + c["down"]}
        for m, c in sorted(per.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))
    ]
    return {"up": up, "down": down, "total": up + down, "by_model": by_model}


def _kto_line(prompt: str | None, messages: list | None, response: str, label: bool) -> bytes:
    return orjson.dumps({"prompt": prompt if prompt is not None else messages, "completion": response, "label": label})


def iter_kto_jsonl(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    model: str | None = None,
    chunk_rows: int = EXPORT_CHUNK_ROWS,
) -> Iterator[bytes]:
    """Counted votes as TRL unpaired-KTO JSONL ({prompt, completion, label: bool}), in chunks of lines.

    Postgres streams one consistent snapshot through a server-side cursor
    (yield_per). SQLite reads page by page (keyset on the vote id), one short
    transaction per page, because every SQLite transaction here takes the
    write lock (BEGIN IMMEDIATE) and a slow client must not stall ingestion.
    """
    base = _vote_filters(
        select(VOTES.c.id, EVENTS.c.prompt, EVENTS.c.messages, EVENTS.c.response, VOTES.c.label).join(
            EVENTS, EVENTS.c.id == VOTES.c.event_pk
        ),
        since,
        until,
        model,
    )
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            result = conn.execution_options(yield_per=chunk_rows).execute(base.order_by(VOTES.c.id))
            for part in result.partitions():
                yield b"".join(_kto_line(r[1], r[2], r[3], r[4]) + b"\n" for r in part)
        return
    last = 0
    while True:
        with engine.connect() as conn:
            part = conn.execute(base.where(VOTES.c.id > last).order_by(VOTES.c.id).limit(chunk_rows)).all()
        if not part:
            return
        last = part[-1][0]
        yield b"".join(_kto_line(r[1], r[2], r[3], r[4]) + b"\n" for r in part)

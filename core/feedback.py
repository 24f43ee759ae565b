"""Feedback ingestion: idempotent events, counted votes, retractions, stats, TRL export/import.

Rules (shared with snapshots, see ``core/models.py``):

- ``feedback_events`` is append-only. An event's identity is its ``event_id``;
  its content hash is the sha256 of the canonical JSON of what the client sent
  (prompt/messages, response, label, ids, model, metadata, created_at when the
  client gave one). The same id with the same hash is a duplicate (no write);
  with another hash a conflict.
- ``votes`` holds the counted vote per (voter, pair): voter = ``user:<user_id>`` or
  ``event:<event_id>``; pair = sha256 of the canonical (prompt, response). A
  newer event of the same voter on the same pair (by ``created_at``; ties go
  to the later arrival) moves the row; retracting the event a row points at
  deletes the row. A prompt given as text and the same words given as one
  user message are different prompts.
- Every write is one transaction; the caller sees success only after commit.
  Uniqueness is enforced by the database (INSERT .. ON CONFLICT), so
  concurrent retries of one event store it once on SQLite and Postgres.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from sqlalchemy import JSON, Connection, Engine, bindparam, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from core import attribution
from core.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from core.models import FeedbackEvent, Vote, utcnow
from core.settings import Settings

EVENTS = FeedbackEvent.__table__
VOTES = Vote.__table__

ROLES = ("system", "user", "assistant")
LABELS = {"up": True, "down": False}
ID_MAX_CHARS = 200
# Ids travel in URL paths (GET/DELETE /v1/feedback/{event_id}): keep them path-safe.
EVENT_ID_RE = re.compile(r"[A-Za-z0-9._~:@+=-]{1,200}")  # fullmatch: "$" would let "abc\n" through
# These names are routes under /v1/feedback/, so they cannot be event ids.
RESERVED_EVENT_IDS = frozenset({"batch", "stats", "export", "import"})
EXPORT_CHUNK_ROWS = 1000
MAX_CLOCK_SKEW = timedelta(minutes=5)

Status = Literal["created", "duplicate", "conflict", "invalid"]


@dataclass(frozen=True, slots=True)
class Limits:
    max_text_bytes: int = 64 * 1024
    max_metadata_bytes: int = 16 * 1024
    max_metadata_depth: int = 8

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.max_text_bytes, settings.max_metadata_bytes, settings.max_metadata_depth)


@dataclass(slots=True)
class EventInput:
    """One event as the client sent it (types checked; domain rules not yet)."""

    response: str
    label: str  # "up" | "down"
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    event_id: str | None = None
    user_id: str | None = None
    conversation_id: str | None = None
    response_id: str | None = None
    model: str | None = None
    metadata: dict[str, Any] | None = None
    created_at: datetime | None = None
    adapter: str | None = None  # core.attribution: the adapter version that served the response
    adapter_version: int | None = None


@dataclass(frozen=True, slots=True)
class InvalidItem:
    """A batch item that failed validation before reaching the domain."""

    message: str
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    event_id: str | None
    status: Status
    error: str | None = None


@dataclass(slots=True)
class PreparedEvent:
    """A validated event's row and voter; ``index`` is its place in the batch being written."""

    index: int
    row: dict[str, Any]
    voter_key: str


@dataclass
class ImportSummary:
    rows: int = 0
    events: int = 0
    created: int = 0
    duplicate: int = 0
    conflict: int = 0
    invalid: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- validation


def _bad(field_name: str, reason: str) -> InvalidInput:
    return InvalidInput(f"{field_name}: {reason}", details=[{"field": field_name, "message": reason}])


def _check_text(name: str, value: str, limits: Limits, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise _bad(name, "must be a string")
    if not allow_empty and not value.strip():
        raise _bad(name, "must not be empty")
    if "\x00" in value:
        raise _bad(name, "must not contain NUL (\\u0000) characters")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise _bad(name, "is not valid Unicode (lone surrogate)") from None
    if size > limits.max_text_bytes:
        raise PayloadTooLarge(
            f"{name}: {size} bytes exceeds the limit of {limits.max_text_bytes} bytes",
            details=[{"field": name, "message": f"longer than {limits.max_text_bytes} bytes"}],
        )


def _check_short(name: str, value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise _bad(name, "must be a string")
    if not value or len(value) > ID_MAX_CHARS:
        raise _bad(name, f"must be 1 to {ID_MAX_CHARS} characters")
    if "\x00" in value:
        raise _bad(name, "must not contain NUL (\\u0000) characters")


def _metadata_depth_and_nul(value: Any, max_depth: int) -> None:
    # Iterative walk: a recursive one could itself blow the stack on hostile input.
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > max_depth:
                raise _bad("metadata", f"nested deeper than {max_depth} levels")
            children = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in children:
                if isinstance(k, str) and "\x00" in k:
                    raise _bad("metadata", "keys must not contain NUL (\\u0000) characters")
                stack.append((v, depth + 1))
        elif isinstance(node, str) and "\x00" in node:
            raise _bad("metadata", "strings must not contain NUL (\\u0000) characters")


def _canonical(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _utc(value: datetime) -> datetime:
    try:
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC)
    except (OverflowError, ValueError):
        raise _bad("created_at", "is out of the representable range") from None


def prompt_key(prompt: str | list[dict[str, Any]]) -> str:
    """sha256 of the canonical prompt (text or messages)."""
    return _sha(_canonical(prompt))


def pair_key(prompt: str | list[dict[str, Any]], response: str) -> str:
    """sha256 of the canonical (prompt, response): what one vote is about."""
    return _sha(_canonical([prompt, response]))


def validate_event(event: EventInput, limits: Limits) -> None:
    """Enforce the domain rules; raises InvalidInput (422) or PayloadTooLarge (413) naming the field."""
    if event.event_id is not None:
        if not isinstance(event.event_id, str) or not EVENT_ID_RE.fullmatch(event.event_id):
            raise _bad("event_id", f"must be 1 to {ID_MAX_CHARS} characters out of A-Z a-z 0-9 . _ ~ : @ + = -")
        if event.event_id in RESERVED_EVENT_IDS:
            raise _bad("event_id", f"'{event.event_id}' is reserved")
    if event.label not in LABELS:
        raise _bad("label", "must be 'up' or 'down'")
    if event.created_at is not None and _utc(event.created_at) > utcnow() + MAX_CLOCK_SKEW:
        # A vote dated far ahead would win every later re-vote of its voter for ever.
        raise _bad("created_at", f"is more than {MAX_CLOCK_SKEW.seconds // 60} minutes in the future")
    if (event.prompt is None) == (event.messages is None):
        raise _bad("prompt", "give exactly one of 'prompt' (text) or 'messages' (a chat), not both or neither")
    if event.prompt is not None:
        _check_text("prompt", event.prompt, limits)
    else:
        msgs = event.messages
        if not isinstance(msgs, list) or not msgs:
            raise _bad("messages", "must be a non-empty list of {role, content}")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or set(m) != {"role", "content"}:
                raise _bad(f"messages.{i}", "must be an object with exactly 'role' and 'content'")
            if m["role"] not in ROLES:
                raise _bad(f"messages.{i}.role", f"must be one of {', '.join(ROLES)}")
            _check_text(f"messages.{i}.content", m["content"], limits)
        if msgs[-1]["role"] != "user":
            raise _bad("messages", "must end with a 'user' turn (the conversation before the response)")
    _check_text("response", event.response, limits)
    for name in ("user_id", "conversation_id", "response_id", "model"):
        _check_short(name, getattr(event, name))
    attribution.resolve(adapter=event.adapter, adapter_version=event.adapter_version, model=event.model)
    if event.metadata is not None:
        if not isinstance(event.metadata, dict):
            raise _bad("metadata", "must be a JSON object")
        _metadata_depth_and_nul(event.metadata, limits.max_metadata_depth)
        try:
            size = len(orjson.dumps(event.metadata))
        except TypeError as exc:
            raise _bad("metadata", f"is not serialisable as JSON ({exc})") from None
        if size > limits.max_metadata_bytes:
            raise _bad("metadata", f"{size} bytes serialised exceeds the limit of {limits.max_metadata_bytes}")


def content_hash(event: EventInput) -> str:
    """sha256 of the canonical JSON of the event's content (not its id)."""
    return _sha(
        _canonical(
            {
                "prompt": event.prompt,
                "messages": event.messages,
                "response": event.response,
                "label": event.label,
                "user_id": event.user_id,
                "conversation_id": event.conversation_id,
                "response_id": event.response_id,
                "model": event.model,
                "metadata": event.metadata,
                "created_at": _utc(event.created_at).isoformat() if event.created_at else None,
                **attribution.hash_fields(event.adapter, event.adapter_version),
            }
        )
    )


def voter_key(user_id: str | None, event_id: str) -> str:
    """Namespaced, so a user_id such as "event:x" cannot share an anonymous event's key."""
    return f"user:{user_id}" if user_id is not None else f"event:{event_id}"


def _prepare(index: int, event: EventInput, limits: Limits, api_key_id: int | None, now: datetime) -> PreparedEvent:
    validate_event(event, limits)
    # Without an id the content names the event, so a retried request is a duplicate, not a second vote.
    event_id = event.event_id or "auto-" + content_hash(event)[:40]
    prompt = event.prompt if event.prompt is not None else event.messages
    created_at = _utc(event.created_at) if event.created_at else now
    adapter, adapter_version = attribution.resolve(adapter=event.adapter, adapter_version=event.adapter_version,
                                                   model=event.model)
    row = {
        "event_id": event_id,
        "content_hash": content_hash(event),
        "prompt": event.prompt,
        "messages": event.messages,
        "prompt_key": prompt_key(prompt),
        "pair_key": pair_key(prompt, event.response),
        "response": event.response,
        "label": LABELS[event.label],
        "user_id": event.user_id,
        "conversation_id": event.conversation_id,
        "response_id": event.response_id,
        "model": event.model,
        "adapter": adapter,
        "adapter_version": adapter_version,
        "metadata": event.metadata,
        "created_at": created_at,
        "received_at": now,
        "retracted_at": None,
        "erased_at": None,
        "api_key_id": api_key_id,
    }
    voter = voter_key(event.user_id, event_id)
    return PreparedEvent(index, row, voter)


# --------------------------------------------------------------------------- writes


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


def prepare_event(event: EventInput, *, limits: Limits = Limits(), api_key_id: int | None = None) -> PreparedEvent:
    """Validate one event and build its row (no I/O); raises InvalidInput or PayloadTooLarge."""
    return _prepare(0, event, limits, api_key_id, utcnow())


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
    engine: Engine, *, event: EventInput, limits: Limits = Limits(), api_key_id: int | None = None
) -> IngestResult:
    """Store one event. Returns status created or duplicate; raises Conflict, InvalidInput, PayloadTooLarge."""
    return raise_conflict(ingest_prepared(engine, prepare_event(event, limits=limits, api_key_id=api_key_id)))


def ingest_batch(
    engine: Engine,
    *,
    items: Sequence[EventInput | InvalidItem],
    limits: Limits = Limits(),
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


# --------------------------------------------------------------------------- reads


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


def _vote_filters(stmt, since: datetime | None, until: datetime | None, model: str | None):
    if since is not None:
        stmt = stmt.where(VOTES.c.created_at >= _utc(since))
    if until is not None:
        stmt = stmt.where(VOTES.c.created_at < _utc(until))
    if model is not None:
        stmt = stmt.where(VOTES.c.model == model)
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


# --------------------------------------------------------------------------- import


def _prompt_fields(prompt: Any) -> dict[str, Any]:
    if isinstance(prompt, list):
        return {"messages": prompt}
    if isinstance(prompt, str):
        return {"prompt": prompt}
    raise _bad("prompt", "must be a string or a list of {role, content} messages")


def _record_events(record: Any, model: str | None) -> list[EventInput]:
    """One KTO row -> one event; one paired row -> an up and a down event. Ids derive from the content,
    so importing the same file twice stores nothing new."""
    if not isinstance(record, dict):
        raise _bad("row", "must be a JSON object")
    base_id = "import-" + _sha(_canonical(record))[:40]
    meta = {"source": "import"}
    if "completion" in record:
        extra = set(record) - {"prompt", "completion", "label"}
        if extra:
            raise _bad("row", f"unexpected field(s) {', '.join(sorted(extra))} in a KTO row")
        if not isinstance(record.get("label"), bool):
            raise _bad("label", "must be true or false in a KTO row")
        return [
            EventInput(
                response=record["completion"],
                label="up" if record["label"] else "down",
                event_id=base_id,
                model=model,
                metadata=meta,
                **_prompt_fields(record.get("prompt")),
            )
        ]
    if "chosen" in record or "rejected" in record:
        extra = set(record) - {"prompt", "chosen", "rejected"}
        if extra:
            raise _bad("row", f"unexpected field(s) {', '.join(sorted(extra))} in a paired row")
        p = _prompt_fields(record.get("prompt"))
        return [
            EventInput(response=record.get("chosen"), label="up", event_id=base_id + "-c", model=model,
                       metadata=meta, **p),
            EventInput(response=record.get("rejected"), label="down", event_id=base_id + "-r", model=model,
                       metadata=meta, **p),
        ]
    raise _bad("row", "expected {prompt, completion, label} (KTO) or {prompt, chosen, rejected} (paired)")


MAX_IMPORT_ERRORS = 50

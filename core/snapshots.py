"""Snapshots: immutable, content-hashed KTO datasets cut from the counted votes.

A snapshot reads ``votes JOIN feedback_events`` (``votes`` holds only the
counted vote of each voter on each (prompt, response) pair: re-votes replaced,
retractions removed) as one streamed, deterministically ordered query, and
writes TRL's KTO format as JSONL, one row per line::

    {"prompt": "text" | [chat messages], "completion": "text" | [assistant message], "label": true}

When the prompt is a list of chat messages the completion is the one-message
assistant list ``[{"role": "assistant", "content": ...}]`` (TRL's
conversational form); otherwise it is the response text.

Rows are ordered by (prompt_key, pair_key, vote time, arrival), so every
pair's votes, and every prompt's pairs, arrive contiguously: aggregation keeps
one pair (one prompt with ``one_y_per_x``) in memory at a time, never the
whole table. Same votes in, same bytes out: the content hash is the sha256 of
the file, and the cutoff (server receive time) pins what was included.

Aggregation of the votes on one (x, y) pair:

- ``majority`` (default): the label most voters gave; ties are dropped.
- ``latest``: the label of the most recent vote (vote time, then arrival).
- ``all``: one row per vote (a pair judged by 3 users gives 3 rows).

``one_y_per_x`` keeps one response per prompt: the pair with the most counted
votes, then the one voted on most recently, then the smallest pair key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import Engine, Result, create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from core import metrics as telemetry
from core.artifact_store import get_store
from core.errors import Conflict, InvalidInput, NotFound
from core.isotime import IsoDateTime
from core.models import FeedbackEvent, Snapshot, Vote, new_id, utcnow
from core.settings import Settings

log = logging.getLogger(__name__)

STREAM_BATCH = 5_000
PROGRESS_EVERY = 200_000
TagValue = str | bool | int | float


class SnapshotFilters(BaseModel):
    """Which counted votes go in. Times compare with the vote's event time (``created_at``)."""

    model_config = ConfigDict(extra="forbid")

    since: IsoDateTime | None = Field(None, description="Only votes at or after this time (inclusive), ISO 8601; "
                                      "earlier than until.")
    until: IsoDateTime | None = Field(None, description="Only votes before this time (exclusive), ISO 8601.")
    model: str | None = Field(None, description="Only feedback on responses of this model / adapter version.")
    metadata: dict[str, TagValue] = Field(
        default_factory=dict, description="Only events whose metadata has each key equal to the value."
    )

    @field_validator("since", "until")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)

    @field_validator("model", "metadata")
    @classmethod
    def _no_nul(cls, v: Any) -> Any:
        # Stored with the snapshot as JSON: PostgreSQL's jsonb refuses U+0000, which would be a 500.
        texts = [v] if isinstance(v, str) else [t for kv in (v or {}).items() for t in kv if isinstance(t, str)]
        if any("\x00" in t for t in texts):
            raise ValueError("must not contain NUL (\\u0000) characters")
        return v

    @model_validator(mode="after")
    def _window(self) -> SnapshotFilters:
        if self.since and self.until and self.since >= self.until:
            raise ValueError("'since' must be earlier than 'until'")
        return self


class SnapshotOptions(BaseModel):
    """How the votes on one (prompt, response) pair become rows."""

    model_config = ConfigDict(extra="forbid")

    aggregation: Literal["majority", "latest", "all"] = Field(
        "majority", description="majority (ties dropped) | latest | all (one row per vote)."
    )
    one_y_per_x: bool = Field(
        False, description="Keep one response per prompt: the most voted pair, then the most recently voted."
    )


def _parse(model: type[BaseModel], raw: Any, what: str) -> Any:
    if isinstance(raw, model):
        return raw
    try:
        return model.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise InvalidInput(f"invalid snapshot {what}: {problems}") from exc


def parse_filters(raw: dict | SnapshotFilters | None) -> SnapshotFilters:
    """Validate a dict of filters; InvalidInput with the field and the reason."""
    return _parse(SnapshotFilters, raw, "filters")


def parse_options(raw: dict | SnapshotOptions | None) -> SnapshotOptions:
    return _parse(SnapshotOptions, raw, "options")


@dataclass(frozen=True)
class _PairRows:
    rows: list[dict]
    n_votes: int
    last_vote: tuple  # (created_at, event pk) of the newest vote: the one_y_per_x tie-break


def _tags_match(metadata: Any, tags: dict[str, TagValue]) -> bool:
    if not isinstance(metadata, dict):
        return False
    for key, want in tags.items():
        got = metadata.get(key, ...)
        # JSON equality: true is not 1, "1" is not 1.
        if isinstance(got, bool) != isinstance(want, bool) or isinstance(got, str) != isinstance(want, str):
            return False
        if got != want:
            return False
    return True


def _row(vote, label: bool) -> dict:
    if vote.messages is not None:
        return {"prompt": vote.messages, "completion": [{"role": "assistant", "content": vote.response}],
                "label": label}
    return {"prompt": vote.prompt, "completion": vote.response, "label": label}


def _aggregate_pair(votes: list, aggregation: str) -> _PairRows:
    """Rows for one pair's votes (ordered oldest first)."""
    newest = votes[-1]
    last = (newest.created_at, newest.event_pk)
    if aggregation == "all":
        return _PairRows([_row(v, v.label) for v in votes], len(votes), last)
    if aggregation == "latest":
        return _PairRows([_row(newest, newest.label)], len(votes), last)
    ups = sum(1 for v in votes if v.label)
    downs = len(votes) - ups
    rows = [] if ups == downs else [_row(newest, ups > downs)]
    return _PairRows(rows, len(votes), last)


def _aggregate(votes: Iterable, options: SnapshotOptions) -> Iterator[dict]:
    """Stream rows from votes ordered by (prompt_key, pair_key, created_at, event pk)."""
    for _, prompt_votes in itertools.groupby(votes, key=lambda v: v.prompt_key):
        best: _PairRows | None = None
        for _, pair_votes in itertools.groupby(prompt_votes, key=lambda v: v.pair_key):
            pair = _aggregate_pair(list(pair_votes), options.aggregation)
            if not options.one_y_per_x:
                yield from pair.rows
            elif pair.rows and (best is None or (pair.n_votes, pair.last_vote) > (best.n_votes, best.last_vote)):
                best = pair
        if best is not None:
            yield from best.rows


def _votes_query(filters: SnapshotFilters, cutoff: datetime):
    columns = [
        Vote.prompt_key, Vote.pair_key, Vote.label, Vote.created_at, Vote.event_pk,
        FeedbackEvent.prompt, FeedbackEvent.messages, FeedbackEvent.response,
    ]
    if filters.metadata:
        columns.append(FeedbackEvent.metadata_.label("metadata"))
    stmt = (
        select(*columns)
        .join(FeedbackEvent, FeedbackEvent.id == Vote.event_pk)
        .where(FeedbackEvent.received_at <= cutoff, FeedbackEvent.retracted_at.is_(None))
        .order_by(Vote.prompt_key, Vote.pair_key, Vote.created_at, Vote.event_pk)
    )
    if filters.since is not None:
        stmt = stmt.where(Vote.created_at >= filters.since)
    if filters.until is not None:
        stmt = stmt.where(Vote.created_at < filters.until)
    if filters.model is not None:
        stmt = stmt.where(Vote.model == filters.model)
    for key, value in filters.metadata.items():
        # Narrows in SQL; _tags_match decides exactly. A key with a quote or backslash cannot be written
        # as a SQLite JSON path (an error, or a path that matches nothing), so it is matched in Python only.
        if isinstance(value, str) and not any(c in key for c in '"\\'):
            stmt = stmt.where(FeedbackEvent.metadata_[key].as_string() == value)
    return stmt


@lru_cache(maxsize=8)
def _sqlite_reader(url: str) -> Engine:
    # A plain pysqlite engine: no BEGIN IMMEDIATE, so a SELECT runs in its own
    # WAL read snapshot and never holds the write lock that ingestion needs.
    return create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})


@contextmanager
def _streamed(session: Session, stmt) -> Iterator[Result]:
    """Run ``stmt`` as one consistent, streamed read (server-side cursor on Postgres).

    On SQLite the read goes through its own connection so that a long snapshot
    does not stall ingestion; it sees what is committed, not the session's
    pending changes.
    """
    bind = session.get_bind()
    own = bind.dialect.name == "sqlite"
    conn = _sqlite_reader(bind.url.render_as_string(hide_password=False)).connect() if own else session.connection()
    result = conn.execute(stmt, execution_options={"yield_per": STREAM_BATCH})
    try:
        yield result
    finally:
        result.close()
        if own:
            conn.close()


def _selected(rows: Iterable, filters: SnapshotFilters, *, snapshot_id: str) -> Iterator:
    """The rows that pass the metadata tags, logging progress on long reads."""
    for n, row in enumerate(rows, 1):
        if n % PROGRESS_EVERY == 0:
            log.info("snapshot %s: %d votes read", snapshot_id, n)
        if not filters.metadata or _tags_match(row.metadata, filters.metadata):
            yield row


def snapshot_key(snapshot: Snapshot) -> str:
    """The snapshot file's key in the artifact store (its id is random: no reader guesses it before the
    row commits, so an upload that dies first leaves only an orphan for core.artifact_sweep)."""
    return f"snapshots/{snapshot.id}.jsonl"


def snapshot_path(settings: Settings, snapshot: Snapshot) -> Path:
    """The file on the local disk (the local store only)."""
    return settings.artifacts_dir / snapshot_key(snapshot)


def _encode(row: dict) -> bytes:
    return (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def create_snapshot(
    session: Session,
    *,
    settings: Settings,
    filters: SnapshotFilters | dict | None = None,
    options: SnapshotOptions | dict | None = None,
    created_by_key_id: int | None = None,
) -> Snapshot:
    """Build a snapshot from the counted votes received up to now; flushes, the caller commits.

    The JSONL file is stored whole (written under a temporary name and renamed into
    place, or uploaded) before the row is added, so a visible row always has its whole file.
    """
    filters, options = parse_filters(filters), parse_options(options)
    cutoff = utcnow()
    snapshot = Snapshot(id=new_id(), status="ready", cutoff=cutoff, created_by_key_id=created_by_key_id,
                        filters=filters.model_dump(mode="json"), options=options.model_dump(mode="json"))
    key = snapshot_key(snapshot)

    digest, n_desirable, n_undesirable = hashlib.sha256(), 0, 0
    with _streamed(session, _votes_query(filters, cutoff)) as result, get_store(settings).writer(key) as fh:
        votes = _selected(result, filters, snapshot_id=snapshot.id)
        for row in _aggregate(votes, options):
            line = _encode(row)
            fh.write(line)
            digest.update(line)
            if row["label"]:
                n_desirable += 1
            else:
                n_undesirable += 1
    snapshot.content_hash = digest.hexdigest()
    snapshot.n_desirable, snapshot.n_undesirable = n_desirable, n_undesirable
    snapshot.n_rows = n_desirable + n_undesirable
    snapshot.path = key
    session.add(snapshot)
    session.flush()
    log.info("snapshot %s: %d rows (%d desirable, %d undesirable), sha256 %s", snapshot.id, snapshot.n_rows,
             n_desirable, n_undesirable, snapshot.content_hash)
    telemetry.snapshot_built(snapshot.n_rows, (utcnow() - cutoff).total_seconds())
    return snapshot


def get_snapshot(session: Session, *, snapshot_id: str) -> Snapshot:
    snapshot = session.get(Snapshot, snapshot_id)
    if snapshot is None:
        raise NotFound(f"no snapshot with id {snapshot_id!r}")
    return snapshot


def iter_snapshot_rows(settings: Settings, snapshot: Snapshot) -> Iterator[dict]:
    """Yield the rows of a snapshot; raises Conflict at the end if the file no longer matches its hash."""
    try:
        fh = get_store(settings).open(snapshot_key(snapshot))
    except NotFound:
        raise NotFound(f"the file of snapshot {snapshot.id} is missing ({snapshot_key(snapshot)}); "
                       "take a new snapshot") from None
    digest = hashlib.sha256()
    with fh:
        for line in fh:
            digest.update(line)
            yield json.loads(line)
    if digest.hexdigest() != snapshot.content_hash:
        raise Conflict(
            f"snapshot {snapshot.id} changed on disk: sha256 expected {snapshot.content_hash} "
            f"got {digest.hexdigest()}; take a new snapshot"
        )

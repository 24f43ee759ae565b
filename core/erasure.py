"""Erasing one user's feedback: the database rows, the counted votes and the snapshot files.

``erase_user_feedback`` (DELETE /v1/users/{user_id}/feedback, admin):

1. In one short transaction: the user's events keep their ids and keys (so a
   client's retry stays a ``duplicate`` and nothing is resurrected) but lose
   their texts and metadata (``prompt``, ``messages``, ``response``,
   ``metadata``) and get ``erased_at``; their counted votes are deleted, so
   stats, exports and later snapshots no longer count them.
2. Outside that transaction, each snapshot file that may hold their rows
   (cut after their first event) is rewritten without the rows of the
   (prompt, response) pairs they voted on. Snapshot rows do not say who voted,
   so a pair another user voted on too leaves with theirs: erasure errs on the
   side of removing. The row gets the new ``content_hash``, counts and
   ``redacted_at``, so the rewrite is not reported as tampering.
3. The answer names the adapter versions trained on a rewritten snapshot:
   their weights were trained on the erased rows and only retraining removes
   that.

Re-running it is safe: step 1 finds nothing new, and step 2 finds the pairs
again from the kept keys, so a run that died half-way is finished by the next.
What a run killed -9 left in ``<data>/tmp`` (the local copy of an S3 snapshot with
every row, an upload's spool file) is removed by ``remove_stale_copies`` once
``STALE_COPY_S`` old: at each erasure and at a worker's start.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, null, select, update

from core.artifact_store import get_store
from core.errors import NotFound
from core.feedback import pair_key
from core.models import AdapterVersion, FeedbackEvent, Snapshot, Vote, utcnow
from core.settings import Settings

log = logging.getLogger(__name__)

EVENTS, VOTES, SNAPSHOTS = FeedbackEvent.__table__, Vote.__table__, Snapshot.__table__
ID_CHUNK = 500  # ids per IN (...) list: far below SQLite's bound-parameter limit


STALE_COPY_S = 6 * 3600.0  # longer than any one step of an erasure or an upload writing or reading them


def remove_stale_copies(settings: Settings, *, grace_s: float = STALE_COPY_S) -> list[Path]:
    """Files a killed process left in ``<data>/tmp``: erasure copies, S3 spool files (``.upload-*``)."""
    tmp = settings.data_path / "tmp"
    removed: list[Path] = []
    now = time.time()
    for path in [*tmp.glob("erasure/*"), *tmp.glob(".upload-*")]:
        try:
            if path.is_file() and not path.name.endswith(".lock") and now - path.stat().st_mtime >= grace_s:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # its owner finished meanwhile
            continue
    for path in removed:
        log.warning("removed %s, left by a process killed mid-way", path)
    return removed


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(ids), ID_CHUNK):
        yield ids[i:i + ID_CHUNK]


def _erase_rows(engine: Engine, user_id: str) -> tuple[int, int, int, set[str], Any]:
    """Blank the user's events and drop their votes.

    Returns (events of the user, erased now, votes removed, their pair keys, their first receipt)."""
    now = utcnow()
    with engine.begin() as conn:
        rows = conn.execute(
            select(EVENTS.c.id, EVENTS.c.pair_key, EVENTS.c.erased_at, EVENTS.c.received_at)
            .where(EVENTS.c.user_id == user_id)
        ).all()
        votes_removed = erased = 0
        for chunk in _chunks([r.id for r in rows]):
            votes_removed += conn.execute(delete(VOTES).where(VOTES.c.event_pk.in_(chunk))).rowcount
        for chunk in _chunks([r.id for r in rows if r.erased_at is None]):
            erased += conn.execute(
                update(EVENTS).where(EVENTS.c.id.in_(chunk))
                # null(): SQL NULL, not the JSON 'null' the JSON type would store for None.
                .values({EVENTS.c.prompt: None, EVENTS.c.messages: null(), EVENTS.c.response: "",
                         EVENTS.c.metadata: null(), EVENTS.c.erased_at: now})
            ).rowcount
    first = min((r.received_at for r in rows), default=None)
    return len(rows), erased, votes_removed, {r.pair_key for r in rows}, first


def _row_pair_key(row: dict) -> str:
    completion = row["completion"]
    response = completion if isinstance(completion, str) else completion[0]["content"]
    return pair_key(row["prompt"], response)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """One rewriter of a snapshot file at a time, across processes on this host."""
    with open(path.with_name(f".{path.name}.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _redact_snapshot(engine: Engine, path: Path, snapshot_id: str, pairs: set[str],
                     store_back: Callable[[Path], None] | None = None) -> int:
    """Rewrite one snapshot's file without the rows of ``pairs``; returns the rows removed.
    ``store_back(path)`` uploads the rewritten file (a local copy of an S3 object)."""
    if not path.is_file():
        return 0
    with _file_lock(path):
        with engine.connect() as conn:  # the hash as of now, under the lock
            recorded = conn.execute(select(SNAPSHOTS.c.content_hash).where(SNAPSHOTS.c.id == snapshot_id)).scalar()
        tmp = path.with_name(f".{path.name}.redact")
        old_digest, new_digest = hashlib.sha256(), hashlib.sha256()
        removed = desirable = undesirable = 0
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            for line in src:
                old_digest.update(line)
                row = json.loads(line)
                if _row_pair_key(row) in pairs:
                    removed += 1
                    continue
                dst.write(line)
                new_digest.update(line)
                desirable += bool(row["label"])
                undesirable += not row["label"]
            dst.flush()
            os.fsync(dst.fileno())
        if not removed:
            tmp.unlink()
            return 0
        if recorded not in (old_digest.hexdigest(), new_digest.hexdigest()):
            # Neither the recorded file nor a rewrite of it that died before the rename: changed by hand.
            log.error("snapshot %s did not match its hash before erasure; its rows are erased all the same",
                      snapshot_id)
        # The row first, then the file: a crash between leaves a file whose rewrite gives the recorded hash.
        with engine.begin() as conn:
            conn.execute(update(SNAPSHOTS).where(SNAPSHOTS.c.id == snapshot_id).values(
                content_hash=new_digest.hexdigest(), n_rows=desirable + undesirable, n_desirable=desirable,
                n_undesirable=undesirable, redacted_at=utcnow()))
        os.replace(tmp, path)
        if store_back is not None:
            store_back(path)
    log.info("snapshot %s: %d row(s) erased", snapshot_id, removed)
    return removed


def _redact(engine: Engine, settings: Settings, snap, pairs: set[str]) -> int:
    """On an S3 store the object is rewritten through a local copy (the row, then the object, as on disk;
    the lock is per host: run erasures of one snapshot from one API host at a time)."""
    store = get_store(settings)
    if store.local_root is not None:
        return _redact_snapshot(engine, store.local_root / snap.path, snap.id, pairs)
    copy = settings.data_path / "tmp" / "erasure" / f"{snap.id}.jsonl"
    try:
        store.get_file(snap.path, copy)
    except NotFound:
        return 0
    try:
        return _redact_snapshot(engine, copy, snap.id, pairs, store_back=lambda p: store.put_file(snap.path, p))
    finally:
        copy.unlink(missing_ok=True)


def erase_user_feedback(engine: Engine, *, settings: Settings, user_id: str) -> dict[str, Any]:
    """Erase one user's feedback everywhere Prospect keeps it (see the module docstring)."""
    remove_stale_copies(settings)
    events, erased, votes_removed, pairs, first = _erase_rows(engine, user_id)
    redacted: dict[str, int] = {}
    if pairs:
        with engine.connect() as conn:
            candidates = list(conn.execute(
                select(SNAPSHOTS.c.id, SNAPSHOTS.c.path)
                .where(SNAPSHOTS.c.path.is_not(None), SNAPSHOTS.c.status == "ready", SNAPSHOTS.c.cutoff >= first)
                .order_by(SNAPSHOTS.c.created_at)
            ))
        for snap in candidates:
            removed = _redact(engine, settings, snap, pairs)
            if removed:
                redacted[snap.id] = removed
    versions: list[dict[str, Any]] = []
    if redacted:
        with engine.connect() as conn:
            versions = [
                {"adapter": v.adapter_name, "version": v.version, "snapshot_id": v.snapshot_id}
                for v in conn.execute(
                    select(AdapterVersion.adapter_name, AdapterVersion.version, AdapterVersion.snapshot_id)
                    .where(AdapterVersion.snapshot_id.in_(list(redacted)))
                    .order_by(AdapterVersion.adapter_name, AdapterVersion.version)
                )
            ]
    log.info("erased the feedback of a user: %d event(s), %d vote(s), %d snapshot(s)", erased, votes_removed,
             len(redacted))
    return {
        "user_id": user_id,
        "events": events,
        "events_erased": erased,
        "votes_removed": votes_removed,
        "snapshots_redacted": [{"snapshot_id": sid, "rows_removed": n} for sid, n in redacted.items()],
        "snapshot_rows_removed": sum(redacted.values()),
        "adapter_versions": versions,
    }

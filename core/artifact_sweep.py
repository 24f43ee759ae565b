"""Removing what crashed writers left in the artifact store.

Every artifact becomes reachable only through a database row: ``snapshots.path``,
``adapter_versions.path`` (a version folder), or a queued/running job (its checkpoint). A
writer that dies between its upload and its commit leaves objects no row names. They are
removed here, except those younger than ``artifact_orphan_grace_s``: a write in flight (an
upload not yet committed) looks the same until its commit. Ages are measured on the store's
clock (a probe object's time), not this host's: a sweeper whose clock runs ahead would find a
fresh upload old. A version folder is also removed only under its adapter's publish lock, which a
publisher holds from its upload to its commit: a publish slower than the grace keeps its folder.
The worker's bootstrap and beat's retention task run it.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.artifact_store import ArtifactStore, Entry, older_than
from core.db import lock_adapter
from core.models import AdapterVersion, AlignmentJob, Snapshot

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
CLOCK_KEY = ".prospect-clock"  # outside every swept folder


def store_now(store: ArtifactStore) -> float:
    """The store's time now: the modification time it gives a probe object written now."""
    store.put_bytes(CLOCK_KEY, b"")
    return store.stat(CLOCK_KEY).mtime


def _groups(entries, depth: int) -> dict[str, list[Entry]]:
    """Entries by their first ``depth`` key components (a version folder, a job's checkpoint folder)."""
    groups: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        groups["/".join(e.key.split("/")[:depth])].append(e)
    return groups


def sweep_orphans(store: ArtifactStore, session: Session, *, grace_s: float, now: float | None = None) -> list[str]:
    """Delete unreferenced snapshots, version folders and checkpoints; returns the removed keys/prefixes.

    The store is listed before the database is read: an upload committed after the listing was
    young when listed, and the grace keeps it.
    """
    now = now or store_now(store)
    snaps = [e for e in store.list("snapshots") if not e.key.split("/")[-1].startswith(".")]
    versions = _groups(store.list("adapters"), 3)
    checkpoints = _groups(store.list("checkpoints"), 2)
    known_snaps = set(session.scalars(select(Snapshot.path).where(Snapshot.path.is_not(None))))
    known_versions = set(session.scalars(select(AdapterVersion.path)))
    active = {f"checkpoints/{j}" for j in session.scalars(select(AlignmentJob.id)
                                                         .where(AlignmentJob.status.in_(ACTIVE)))}
    session.rollback()  # read-only: end the transaction

    removed: list[str] = []
    orphans = [e.key for e in snaps if e.key not in known_snaps and older_than(e, grace_s, now)]
    store.delete(orphans)
    removed += orphans
    stale = [p for p, entries in sorted(versions.items())
             if p not in known_versions and all(older_than(e, grace_s, now) for e in entries)]
    removed += _remove_versions(store, session, stale)
    for prefix in sorted(checkpoints):  # a finished job's checkpoint is never read again
        if prefix not in active:
            store.delete_prefix(prefix)
            removed.append(prefix)
    for key in removed:
        log.warning("removed unreferenced artifact %s", key)
    return removed


def _remove_versions(store: ArtifactStore, session: Session, prefixes: list[str]) -> list[str]:
    """Each ``adapters/<name>/<version>.<id>`` still unreferenced under its adapter's lock (waits for a
    publish in flight: its row either commits, and the folder is kept, or the publish cleans up)."""
    removed: list[str] = []
    by_adapter: dict[str, list[str]] = defaultdict(list)
    for prefix in prefixes:
        by_adapter[prefix.split("/")[1]].append(prefix)
    for name, candidates in sorted(by_adapter.items()):
        lock_adapter(session, name)
        known = set(session.scalars(select(AdapterVersion.path).where(AdapterVersion.adapter_name == name)))
        for prefix in candidates:
            if prefix not in known:
                store.delete_prefix(prefix)
                removed.append(prefix)
        session.commit()  # releases the lock
    return removed

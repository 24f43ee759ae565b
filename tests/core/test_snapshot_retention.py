"""Snapshot retention: old snapshots nothing was trained on lose their file; trained-on ones are kept."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.db import session_scope
from core.errors import Conflict
from core.jobs import create_job
from core.models import AdapterVersion, AlignmentJob, BaseModelRecord, Snapshot, utcnow
from core.snapshot_retention import expire_snapshots
from core.snapshots import create_snapshot, snapshot_path
from tests.feedback_votes import add_vote


def test_old_unreferenced_snapshots_are_expired(engine, settings):
    with session_scope(engine) as s:
        add_vote(s, prompt="p", response="r", label=True, user="u")
        base = BaseModelRecord(name="b", source="/m", path="/m", sha256="0" * 64)
        s.add(base)
        s.flush()
        snaps = {k: create_snapshot(s, settings=settings) for k in ("old", "trained", "queued", "failed", "new")}
        for key in ("old", "trained", "queued", "failed"):
            snaps[key].created_at = utcnow() - timedelta(days=31)
        s.add(AdapterVersion(adapter_name="a", version=1, path="/x", manifest={}, manifest_sha256="0" * 64,
                             base_model_id=base.id, snapshot_id=snaps["trained"].id))
        s.add(AlignmentJob(adapter_name="a", base_model_id=base.id, snapshot_id=snaps["queued"].id, status="queued"))
        s.add(AlignmentJob(adapter_name="a", base_model_id=base.id, snapshot_id=snaps["failed"].id, status="failed"))
    paths = {k: snapshot_path(settings, v) for k, v in snaps.items()}
    assert all(p.is_file() for p in paths.values())

    with session_scope(engine) as s:
        expired = expire_snapshots(s, settings=settings)
    assert sorted(expired) == sorted([snaps["old"].id, snaps["failed"].id])
    assert {k for k, p in paths.items() if p.is_file()} == {"trained", "queued", "new"}
    with session_scope(engine) as s:
        assert s.get(Snapshot, snaps["old"].id).status == "expired"
        assert s.get(Snapshot, snaps["trained"].id).status == "ready"
        with pytest.raises(Conflict, match="expired"):
            create_job(s, adapter_name="a", base_model_name="b", snapshot_id=snaps["old"].id, max_attempts=1)
    with session_scope(engine) as s:  # idempotent
        assert expire_snapshots(s, settings=settings) == []


def test_retention_zero_keeps_everything(engine, settings):
    settings = settings.model_copy(update={"snapshot_retention_days": 0})
    with session_scope(engine) as s:
        snap = create_snapshot(s, settings=settings)
        snap.created_at = utcnow() - timedelta(days=3650)
    with session_scope(engine) as s:
        assert expire_snapshots(s, settings=settings) == []
    assert snapshot_path(settings, snap).is_file()


def test_beat_schedules_the_task(settings):
    from worker.celery_app import beat_schedule, create_celery

    assert beat_schedule(settings)["expire-old-snapshots"]["task"] == "prospect.snapshots.expire"
    app = create_celery(settings)
    app.loader.import_default_modules()
    assert "prospect.snapshots.expire" in app.tasks

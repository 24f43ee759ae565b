"""The orphan sweep: what a crash left unreferenced goes, what a row names stays, a young write in
flight stays (by the age threshold), on the local folder and on a real S3 server."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from core import adapters, jobs
from core.artifact_store import get_store
from core.artifact_sweep import sweep_orphans
from core.base_models import register_base_model
from core.db import session_factory, session_scope
from core.models import BaseModelRecord
from core.snapshots import create_snapshot, snapshot_key
from tests.artifacts import make_model_dir, make_staged
from tests.s3kit import s3_settings


@pytest.fixture(params=["local", "s3"])
def world(request, settings, engine, tmp_path):
    if request.param == "s3":
        settings = s3_settings(settings, request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket"))
    with session_scope(engine) as s:
        base = register_base_model(s, settings=settings, name="base", source=str(make_model_dir(tmp_path / "m")))
        snap = create_snapshot(s, settings=settings)
        running = jobs.create_job(s, adapter_name="chat", base_model_name="base").id
    version = adapters.publish_adapter_version(
        session_factory(engine), settings=settings, adapter_name="chat", staged_dir=make_staged(tmp_path / "st"),
        job_id=None, base_model=base, snapshot=snap, hyperparameters={}, class_counts={}, class_weights={},
        eval_metrics={})
    return settings, engine, get_store(settings), snap, version, running


def _keys(store) -> set[str]:
    return {e.key for p in ("snapshots", "adapters", "checkpoints") for e in store.list(p)}


def test_orphans_go_referenced_and_young_ones_stay(world):
    _settings, engine, store, snap, version, running = world
    referenced = _keys(store)
    # What crashes leave: a snapshot uploaded before its row committed, a version folder uploaded under
    # a staging id, a finished job's checkpoint.
    old = ["snapshots/0123abcd.jsonl", "adapters/chat/2.deadbeef/adapter_model.safetensors",
           "adapters/chat/2.deadbeef/manifest.json", "checkpoints/finished-job/checkpoint.pt"]
    for key in old:
        store.put_bytes(key, b"left by a crash")
    time.sleep(2.1)  # S3 times have one-second resolution: the next objects are measurably younger
    young = ["snapshots/4567ef01.jsonl", "adapters/chat/3.cafe/adapter_model.safetensors"]
    for key in young:
        store.put_bytes(key, b"a write in flight")
    store.put_bytes(f"checkpoints/{running}/checkpoint.pt", b"a running job's checkpoint")
    newest = max(store.stat(k).mtime for k in young)
    with session_scope(engine) as s:
        removed = sweep_orphans(store, s, grace_s=1.5, now=newest)
    assert sorted(removed) == ["adapters/chat/2.deadbeef", "checkpoints/finished-job", "snapshots/0123abcd.jsonl"]
    assert _keys(store) == referenced | set(young) | {f"checkpoints/{running}/checkpoint.pt"}
    assert snapshot_key(snap) in referenced and any(k.startswith(version.path + "/") for k in referenced)
    # Later, the in-flight writes that never committed are old too: they go; referenced files stay.
    with session_scope(engine) as s:
        sweep_orphans(store, s, grace_s=1.5, now=newest + 10)
    assert _keys(store) == referenced | {f"checkpoints/{running}/checkpoint.pt"}


def test_a_publish_slower_than_the_grace_keeps_its_folder(world, tmp_path):
    """The sweep runs while a publish has uploaded its folder and not yet committed its row, and finds the
    upload old (the publish outlived the grace, or the sweeper's clock runs ahead): grace 0 here. Under the
    adapter's publish lock it waits for the commit instead of deleting the folder the row then names."""
    settings, engine, store, _snap, _version, _running = world
    with session_scope(engine) as s:
        base = s.scalars(select(BaseModelRecord)).one()
    swept: dict = {}

    def sweep() -> None:
        with session_scope(engine) as s:
            swept["removed"] = sweep_orphans(store, s, grace_s=0, now=time.time() + 10)

    def mid_publish(session, row) -> None:
        swept["thread"] = threading.Thread(target=sweep)
        swept["thread"].start()
        swept["thread"].join(timeout=3)  # the old sweep deleted the folder meanwhile; now it waits

    version = adapters.publish_adapter_version(
        session_factory(engine), settings=settings, adapter_name="chat", staged_dir=make_staged(tmp_path / "s2"),
        job_id=None, base_model=base, snapshot=None, hyperparameters={}, class_counts={}, class_weights={},
        eval_metrics={}, before_commit=mid_publish)
    swept["thread"].join(timeout=30)
    assert not swept["thread"].is_alive()
    assert version.path not in swept["removed"]
    assert {e.key.rsplit("/", 1)[1] for e in store.list(version.path)} >= {"manifest.json", "README.md"}


def test_ages_are_measured_on_the_stores_clock(world, monkeypatch):
    """A sweeper host whose clock runs two hours ahead must not find a fresh upload older than the grace."""
    _settings, engine, store, _snap, _version, _running = world
    store.put_bytes("snapshots/0123abcd.jsonl", b"an upload whose row commits in a moment")
    store.put_bytes("adapters/chat/9.cafe/manifest.json", b"{}")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 7200)
    with session_scope(engine) as s:
        assert sweep_orphans(store, s, grace_s=3600) == []
    monkeypatch.setattr(time, "time", real)
    assert store.exists("snapshots/0123abcd.jsonl") and store.exists("adapters/chat/9.cafe/manifest.json")

"""Snapshots: aggregation, one_y_per_x, re-votes and retractions, filters, hashing, the file on disk."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest

from core.db import session_scope
from core.errors import Conflict, InvalidInput
from core.models import Snapshot, utcnow
from core.snapshots import create_snapshot, iter_snapshot_rows, parse_filters, snapshot_path
from tests.feedback_votes import T0, add_vote, retract


def _snap(engine, settings, **kwargs) -> tuple[Snapshot, list[dict]]:
    with session_scope(engine) as s:
        snap = create_snapshot(s, settings=settings, **kwargs)
    return snap, list(iter_snapshot_rows(settings, snap))


def _pairs(rows) -> list[tuple]:
    return sorted((r["prompt"] if isinstance(r["prompt"], str) else "msgs", r["completion"], r["label"]) for r in rows)


@pytest.fixture
def voted(engine):
    """Pair A: 2 up 1 down; pair B: up (min 1) then down (min 2), a tie; pair C: 2 down."""
    with session_scope(engine) as s:
        for user, label in (("u1", True), ("u2", True), ("u3", False)):
            add_vote(s, prompt="p1", response="A", label=label, user=user)
        add_vote(s, prompt="p1", response="B", label=True, user="u1", minute=1)
        add_vote(s, prompt="p2", response="B", label=False, user="u2", minute=2)
        add_vote(s, prompt="p2", response="B", label=True, user="u3", minute=1)
        add_vote(s, prompt="p3", response="C", label=False, user="u1")
        add_vote(s, prompt="p3", response="C", label=False, user="u2")
    return engine


def test_majority_drops_ties_and_counts_classes(voted, settings):
    snap, rows = _snap(voted, settings)
    # p1/A: 2-1 up; p1/B: 1-0 up; p2/B: 1-1 tie dropped; p3/C: 0-2 down.
    assert _pairs(rows) == [("p1", "A", True), ("p1", "B", True), ("p3", "C", False)]
    assert (snap.n_rows, snap.n_desirable, snap.n_undesirable) == (3, 2, 1)
    data = snapshot_path(settings, snap).read_bytes()
    assert snap.content_hash == hashlib.sha256(data).hexdigest()
    assert [json.loads(line) for line in data.splitlines()] == rows
    assert set(rows[0]) == {"prompt", "completion", "label"}


def test_latest_takes_the_newest_vote(voted, settings):
    _, rows = _snap(voted, settings, options={"aggregation": "latest"})
    # p1/A's newest vote (same minute, arrived last) is u3's down; p2/B's newest is u2's down at minute 2.
    assert _pairs(rows) == [("p1", "A", False), ("p1", "B", True), ("p2", "B", False), ("p3", "C", False)]


def test_all_gives_one_row_per_vote(voted, settings):
    snap, rows = _snap(voted, settings, options={"aggregation": "all"})
    assert (snap.n_rows, snap.n_desirable, snap.n_undesirable) == (8, 4, 4)
    assert sum(1 for r in rows if r["completion"] == "A") == 3


def test_one_y_per_x_keeps_the_most_voted_then_newest_pair(engine, settings):
    with session_scope(engine) as s:
        for user in ("u1", "u2", "u3"):
            add_vote(s, prompt="p", response="three votes", label=True, user=user)
        add_vote(s, prompt="p", response="one vote", label=False, user="u1", minute=9)
        add_vote(s, prompt="q", response="older", label=True, user="u1", minute=1)
        add_vote(s, prompt="q", response="newer", label=False, user="u1", minute=2)
        # A tied pair yields no row under majority, so it never wins over a pair that does.
        add_vote(s, prompt="r", response="tie", label=True, user="u1")
        add_vote(s, prompt="r", response="tie", label=False, user="u2")
        add_vote(s, prompt="r", response="single", label=True, user="u3")
    _, rows = _snap(engine, settings, options={"one_y_per_x": True})
    assert _pairs(rows) == [("p", "three votes", True), ("q", "newer", False), ("r", "single", True)]
    _, all_rows = _snap(engine, settings, options={"one_y_per_x": True, "aggregation": "all"})
    assert _pairs(all_rows) == [("p", "three votes", True)] * 3 + [("q", "newer", False), ("r", "tie", False),
                                                                  ("r", "tie", True)]


def test_revote_and_retraction_are_reflected(engine, settings):
    with session_scope(engine) as s:
        add_vote(s, prompt="p", response="y", label=True, user="u1", minute=1)
        add_vote(s, prompt="p", response="y", label=False, user="u1", minute=2)  # re-vote replaces
        gone = add_vote(s, prompt="p", response="z", label=True, user="u2")
        add_vote(s, prompt="p", response="anon", label=True)
        add_vote(s, prompt="p", response="anon", label=True)  # two anonymous votes never merge
    _, rows = _snap(engine, settings, options={"aggregation": "all"})
    assert _pairs(rows) == [("p", "anon", True), ("p", "anon", True), ("p", "y", False), ("p", "z", True)]
    with session_scope(engine) as s:
        retract(s, s.merge(gone))
    _, rows = _snap(engine, settings, options={"aggregation": "all"})
    assert _pairs(rows) == [("p", "anon", True), ("p", "anon", True), ("p", "y", False)]


def test_content_hash_is_stable_and_tracks_the_data(voted, settings):
    first, _ = _snap(voted, settings)
    second, _ = _snap(voted, settings)
    assert first.id != second.id and first.content_hash == second.content_hash
    assert snapshot_path(settings, first).read_bytes() == snapshot_path(settings, second).read_bytes()
    with session_scope(voted) as s:
        add_vote(s, prompt="p4", response="D", label=True, user="u9")
    third, _ = _snap(voted, settings)
    assert third.content_hash != first.content_hash and third.n_rows == first.n_rows + 1


def test_votes_received_after_the_cutoff_are_excluded(engine, settings):
    with session_scope(engine) as s:
        add_vote(s, prompt="p", response="now", label=True)
        add_vote(s, prompt="p", response="later", label=True, received_at=utcnow() + timedelta(hours=1))
    snap, rows = _snap(engine, settings)
    assert _pairs(rows) == [("p", "now", True)]
    assert snap.cutoff <= utcnow()


def test_filters_time_window_model_and_metadata(engine, settings):
    with session_scope(engine) as s:
        add_vote(s, prompt="p", response="early", label=True, minute=0, model="m1", metadata={"lang": "en"})
        add_vote(s, prompt="p", response="mid", label=True, minute=10, model="m2",
                 metadata={"lang": "fr", "beta": True, "tier": 1})
        add_vote(s, prompt="p", response="late", label=False, minute=20, model="m1",
                 metadata={"lang": "en", "beta": 1, "tier": "1"})
    window = {"since": (T0 + timedelta(minutes=10)).isoformat(), "until": (T0 + timedelta(minutes=20)).isoformat()}
    cases = [
        (window, ["mid"]),
        ({"since": T0 + timedelta(minutes=10)}, ["late", "mid"]),
        ({"model": "m1"}, ["early", "late"]),
        ({"metadata": {"lang": "en"}}, ["early", "late"]),
        ({"metadata": {"beta": True}}, ["mid"]),  # JSON true is not 1
        ({"metadata": {"tier": 1}}, ["mid"]),  # 1 is not "1"
        ({"metadata": {"tier": "1"}}, ["late"]),
        ({"metadata": {"lang": "en"}, "model": "m2"}, []),
    ]
    for filters, expected in cases:
        snap, rows = _snap(engine, settings, filters=filters)
        assert sorted(r["completion"] for r in rows) == expected, filters
        assert snap.filters["model"] == filters.get("model")


def test_chat_messages_give_conversational_rows(engine, settings):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    with session_scope(engine) as s:
        add_vote(s, messages=msgs, response="hello", label=True)
    _, rows = _snap(engine, settings)
    assert rows == [{"prompt": msgs, "completion": [{"role": "assistant", "content": "hello"}], "label": True}]


def test_empty_snapshot_is_valid(engine, settings):
    snap, rows = _snap(engine, settings)
    assert rows == [] and snap.n_rows == 0
    assert snap.content_hash == hashlib.sha256(b"").hexdigest()


def test_tampered_file_is_detected_when_read(voted, settings):
    snap, _ = _snap(voted, settings)
    path = snapshot_path(settings, snap)
    path.write_bytes(path.read_bytes().replace(b"true", b"false", 1))
    with pytest.raises(Conflict, match="changed on disk"):
        list(iter_snapshot_rows(settings, snap))


@pytest.mark.parametrize(
    ("filters", "options", "message"),
    [
        ({"since": "2025-02-01T00:00:00Z", "until": "2025-01-01T00:00:00Z"}, None, "earlier than 'until'"),
        ({"colour": "red"}, None, "colour"),
        (None, {"aggregation": "mean"}, "aggregation"),
        ({"metadata": {"k": ["a"]}}, None, "metadata"),
    ],
)
def test_invalid_filters_and_options_are_refused(engine, settings, filters, options, message):
    with session_scope(engine) as s, pytest.raises(InvalidInput, match=message):
        create_snapshot(s, settings=settings, filters=filters, options=options)
    assert not (settings.artifacts_dir / "snapshots").exists() or not any(
        (settings.artifacts_dir / "snapshots").iterdir())


def test_parse_filters_gives_utc():
    assert parse_filters({"since": "2025-01-01T02:00:00+02:00"}).since == T0


def test_a_snapshot_in_progress_neither_blocks_writers_nor_sees_their_votes(engine, settings, db_url, monkeypatch):
    """SQLite: the read must not hold the write lock (a writer with a 1 s busy timeout gets through)."""
    from sqlalchemy import create_engine

    from core import snapshots

    with session_scope(engine) as s:
        add_vote(s, prompt="p", response="before", label=True)
    writer = create_engine(db_url, connect_args={"timeout": 1} if db_url.startswith("sqlite") else {})
    real_encode = snapshots._encode

    def encode_and_write(row):
        if row["completion"] == "before":
            with session_scope(writer) as w:
                add_vote(w, prompt="p", response="during", label=False)
        return real_encode(row)

    monkeypatch.setattr(snapshots, "_encode", encode_and_write)
    _, rows = _snap(engine, settings)
    writer.dispose()
    assert _pairs(rows) == [("p", "before", True)]
    monkeypatch.undo()
    _, rows = _snap(engine, settings)
    assert _pairs(rows) == [("p", "before", True), ("p", "during", False)]

"""Feedback rules, writes and reads on SQLite and Postgres: concurrent idempotency, vote semantics, hashing."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from core import feedback, feedback_query, feedback_write
from core.errors import Conflict, InvalidInput, PayloadTooLarge
from core.feedback import EventInput, InvalidItem, Limits
from core.models import FeedbackEvent, Vote

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def ev(**kw) -> EventInput:
    base = {"event_id": "e1", "prompt": "p", "response": "r", "label": "up"}
    base.update(kw)
    return EventInput(**base)


def rows(engine, table=FeedbackEvent) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(table))


def counted(engine) -> dict[str, bool]:
    """event_id -> label of every counted vote."""
    with engine.connect() as conn:
        q = select(FeedbackEvent.event_id, Vote.label).join(Vote, Vote.event_pk == FeedbackEvent.id)
        return dict(conn.execute(q).all())


@pytest.mark.parametrize("same_content", [True, False])
def test_eight_threads_same_event_id_store_one(engine, same_content):
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def post(i: int) -> None:
        event = ev(user_id="u", response="r" if same_content else f"r{i}")
        barrier.wait()
        try:
            outcomes.append(feedback_write.ingest_event(engine, event=event).status)
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(outcomes) == {"created": 1, "duplicate" if same_content else "conflict": 7}
    assert rows(engine) == 1 and rows(engine, Vote) == 1


def test_concurrent_batches_with_overlapping_ids(engine):
    ids = [f"id{i}" for i in range(200)]
    out: list[list[str]] = []

    def post(order: list[str]) -> None:
        res = feedback_write.ingest_batch(engine, items=[ev(event_id=i, response=i) for i in order])
        out.append([r.status for r in res])

    threads = [threading.Thread(target=post, args=(ids if k % 2 else ids[::-1],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(s.count("created") for s in out) == 200
    assert all(set(s) <= {"created", "duplicate"} for s in out)
    assert rows(engine) == 200 and rows(engine, Vote) == 200


def test_revote_newest_wins_ties_go_to_later_arrival(engine):
    ingest = lambda eid, label, minutes: feedback_write.ingest_event(
        engine, event=ev(event_id=eid, user_id="u", label=label, created_at=T0 + timedelta(minutes=minutes)))
    ingest("a", "up", 10)
    assert counted(engine) == {"a": True}
    ingest("b", "down", 20)
    assert counted(engine) == {"b": False}
    ingest("late", "up", 5)  # older than the counted vote: history only
    assert counted(engine) == {"b": False}
    ingest("tie", "up", 20)  # same created_at, arrived later: it counts
    assert counted(engine) == {"tie": True}
    assert rows(engine) == 4 and rows(engine, Vote) == 1
    # Another user, another response, an anonymous vote: three more counted votes.
    feedback_write.ingest_event(engine, event=ev(event_id="v", user_id="v"))
    feedback_write.ingest_event(engine, event=ev(event_id="u-other", user_id="u", response="other"))
    feedback_write.ingest_event(engine, event=ev(event_id="anon1"))
    feedback_write.ingest_event(engine, event=ev(event_id="anon2"))  # anonymous votes never merge
    assert rows(engine, Vote) == 5


def test_revotes_inside_one_batch(engine):
    items = [ev(event_id=f"b{i}", user_id="u", label=lab, created_at=T0 + timedelta(minutes=m))
             for i, (lab, m) in enumerate([("up", 1), ("down", 3), ("up", 2), ("up", 3)])]
    assert [r.status for r in feedback_write.ingest_batch(engine, items=items)] == ["created"] * 4
    assert counted(engine) == {"b3": True}  # newest (3), tie with b1 broken by arrival order


def test_retraction_drops_the_counted_vote_only(engine):
    feedback_write.ingest_event(engine, event=ev(event_id="old", user_id="u", created_at=T0))
    feedback_write.ingest_event(engine, event=ev(event_id="new", user_id="u", label="down",
                                           created_at=T0 + timedelta(hours=1)))
    feedback_write.retract_event(engine, event_id="old")  # not the counted one: vote unchanged
    assert counted(engine) == {"new": False}
    feedback_write.retract_event(engine, event_id="new")
    assert counted(engine) == {}
    assert feedback_query.feedback_stats(engine)["total"] == 0
    assert feedback_query.get_event(engine, event_id="new")["retracted_at"] is not None
    assert rows(engine) == 2  # raw events are kept
    # A retracted event sent again is a duplicate and stays retracted.
    again = ev(event_id="new", user_id="u", label="down", created_at=T0 + timedelta(hours=1))
    assert feedback_write.ingest_event(engine, event=again).status == "duplicate"
    assert counted(engine) == {}


def test_content_hash_is_canonical():
    a = ev(metadata={"x": 1, "y": [1, {"b": 2, "a": 1}]}, created_at=datetime(2025, 1, 1, 12))
    b = ev(metadata={"y": [1, {"a": 1, "b": 2}], "x": 1}, created_at=datetime(2025, 1, 1, 14, tzinfo=UTC) - timedelta(hours=2))
    assert feedback.content_hash(a) == feedback.content_hash(b)
    assert feedback.content_hash(a) != feedback.content_hash(ev(metadata={"x": 2, "y": [1, {"a": 1, "b": 2}]}))
    assert feedback.content_hash(ev()) != feedback.content_hash(ev(created_at=T0))
    # The event id is not content: the same click under two ids hashes the same.
    assert feedback.content_hash(ev(event_id="a")) == feedback.content_hash(ev(event_id="b"))
    assert feedback.pair_key("p", "r") != feedback.pair_key([{"role": "user", "content": "p"}], "r")


def test_validation_errors_name_the_field():
    lim = Limits(max_text_bytes=10, max_metadata_bytes=50, max_metadata_depth=2)
    cases = {
        "label": ev(label="meh"),
        "prompt": ev(prompt=None),
        "messages.1.role": ev(prompt=None, messages=[{"role": "user", "content": "a"}, {"role": "x", "content": "b"}]),
        "metadata": ev(metadata={"a": {"b": {"c": 1}}}),
        "response": ev(response="\ud800"),
    }
    for name, event in cases.items():
        with pytest.raises(InvalidInput, match=name):
            feedback.validate_event(event, lim)
    with pytest.raises(PayloadTooLarge, match="response"):
        feedback.validate_event(ev(response="x" * 11), lim)
    with pytest.raises(InvalidInput, match="metadata"):
        feedback.validate_event(ev(metadata={"k": "x" * 60}), lim)


def test_batch_keeps_invalid_items_apart(engine):
    items = [ev(event_id="ok1"), InvalidItem("label: bad", "x"), ev(event_id="bad", response=""), ev(event_id="ok2")]
    res = feedback_write.ingest_batch(engine, items=items)
    assert [(r.event_id, r.status) for r in res] == [("ok1", "created"), ("x", "invalid"), ("bad", "invalid"),
                                                      ("ok2", "created")]
    assert "response" in res[2].error
    assert rows(engine) == 2

"""core.feedback_group: a group gives exactly what the same events one at a time give (statuses, stored
events, counted votes), on SQLite and Postgres, over random sequences full of duplicates, conflicts and
re-votes."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from core import feedback, feedback_write
from core.feedback_group import ingest_group
from core.models import FeedbackEvent, Vote

T0 = datetime(2026, 1, 1, tzinfo=UTC)
N = 80


def events(seed: int, ns: str) -> list[feedback.EventInput]:
    """N events from 30 ids; an id comes in two contents (a repeat is a duplicate or a conflict); two users,
    one prompt and two responses, so votes move (ties on created_at too); ``ns`` keeps two runs of one
    sequence apart in one database."""
    rng = random.Random(seed)
    out = []
    for _ in range(N):
        k, variant = rng.randrange(30), rng.randrange(2)
        content = random.Random(k * 2 + variant)
        out.append(feedback.EventInput(
            event_id=f"{ns}e{k}", prompt=f"{ns} prompt", response=f"r{content.randrange(2)}",
            label=content.choice(["up", "down"]), user_id=content.choice([None, f"{ns}u1", f"{ns}u2"]),
            created_at=T0 + timedelta(minutes=content.randrange(3))))
    return out


def state(engine, ns: str) -> tuple[dict, dict]:
    ev, n = FeedbackEvent, len(ns)
    with engine.connect() as conn:
        stored = {eid[n:]: (response, label) for eid, response, label in conn.execute(
            select(ev.event_id, ev.response, ev.label).where(ev.event_id.startswith(ns)))}
        rows = conn.execute(select(Vote.voter_key, ev.prompt, ev.response, ev.event_id, Vote.label)
                            .join(ev, Vote.event_pk == ev.id).where(ev.event_id.startswith(ns)))
        counted = {(voter.replace(ns, ""), prompt[n:], response): (eid[n:], label)
                   for voter, prompt, response, eid, label in rows}
    return stored, counted


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_group_equals_one_at_a_time(engine, seed):
    alone = [feedback_write.ingest_prepared(engine, feedback.prepare_event(e)).status for e in events(seed, "A:")]
    prepared = [feedback.prepare_event(e) for e in events(seed, "B:")]
    cuts = sorted(random.Random(seed).sample(range(1, N), 3))
    grouped = []
    for lo, hi in zip([0, *cuts], [*cuts, N], strict=True):
        outcomes = ingest_group(engine, prepared[lo:hi])
        assert all(isinstance(o, feedback.IngestResult) for o in outcomes)
        grouped += [o.status for o in outcomes]
    assert grouped == alone
    assert {"created", "duplicate", "conflict"} <= set(alone)
    assert state(engine, "B:") == state(engine, "A:")


def test_a_failed_group_falls_back_to_each_row(engine, monkeypatch):
    real = feedback_write._write
    calls = []

    def fail_groups(conn, prepared, results):
        calls.append(len(prepared))
        real(conn, prepared, results)
        if len(prepared) > 1:
            raise RuntimeError("lost before COMMIT")

    monkeypatch.setattr(feedback_write, "_write", fail_groups)
    prepared = [feedback.prepare_event(e) for e in events(4, "C:")]
    outcomes = ingest_group(engine, prepared)
    monkeypatch.setattr(feedback_write, "_write", real)
    alone = [feedback_write.ingest_prepared(engine, feedback.prepare_event(e)).status for e in events(4, "D:")]
    assert [o.status for o in outcomes] == alone
    assert calls[0] == N
    assert state(engine, "C:") == state(engine, "D:")

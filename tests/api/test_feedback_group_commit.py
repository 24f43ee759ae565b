"""Group commit of concurrent single events (PROSPECT_INGEST_GROUP_COMMIT), on SQLite and Postgres.

Requests are sent concurrently on one event loop (httpx over ASGI), so the API's committer
really coalesces them. What must hold: each request gets its own status exactly as without
grouping (201 created / 200 duplicate / 409 conflict, also for two copies of one event_id in
one group), one bad row fails only its own request, and a 2xx is never sent for an event that
is not committed, whatever fails inside the group.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from api.main import create_app
from core import feedback, feedback_query, feedback_write
from core.db import session_scope
from core.keys import create_key
from core.models import FeedbackEvent


def ev(event_id: str, **kw) -> dict:
    return {"event_id": event_id, "prompt": "What is 2+2?", "response": "4", "label": "up", **kw}


def make(settings, **overrides):
    app = create_app(settings.model_copy(update=overrides))
    with session_scope(app.state.engine) as s:
        key = create_key(s, name="ingest", scopes="ingest")[1]
    return app, {"Authorization": f"Bearer {key}"}


def post_all(app, headers, bodies: list[dict], *, warm: bool = True) -> list[httpx.Response]:
    """All bodies posted at once, on one loop: the committer sees them together. The key is used once
    before (unless the test did), so no request waits on its lookup."""

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            if warm:
                r = await client.post("/v1/feedback", json=ev("warm-up"), headers=headers)
                assert r.status_code in (200, 201)
            return await asyncio.gather(*(client.post("/v1/feedback", json=b, headers=headers) for b in bodies))

    return asyncio.run(go())


def stored(app) -> dict[str, str]:
    with app.state.engine.connect() as conn:
        rows = dict(conn.execute(select(FeedbackEvent.event_id, FeedbackEvent.response)).all())
    rows.pop("warm-up", None)
    return rows


def outcomes(responses) -> list[tuple[int, str | None]]:
    return [(r.status_code, r.json().get("status")) for r in responses]


def test_same_event_twice_in_one_group_keeps_each_status(settings):
    app, h = make(settings)
    bodies = [ev("a"), ev("a"), ev("b"), ev("b", response="5"), *(ev(f"u{i}") for i in range(12))]
    res = post_all(app, h, bodies)
    # Grouped: fewer commits than requests (the old code has no committer at all).
    assert app.state.group_committer.groups < len(bodies)
    got = outcomes(res)
    assert sorted(got[:2]) == [(200, "duplicate"), (201, "created")]
    assert sorted(got[2:4]) == [(201, "created"), (409, None)]
    conflict = res[2] if res[2].status_code == 409 else res[3]
    assert conflict.json()["detail"] == "event_id 'b' was already stored with different content"
    assert got[4:] == [(201, "created")] * 12
    winner = bodies[2] if res[2].status_code == 201 else bodies[3]
    assert stored(app) == {"a": "4", "b": winner["response"], **{f"u{i}": "4" for i in range(12)}}


def _base(j: int, **kw) -> dict:
    return ev(f"e{j}", response=str(j), user_id=f"u{j % 3}", label="up" if j % 2 else "down",
              created_at="2026-01-01T00:00:00Z", **kw)


@pytest.mark.parametrize("group", [True, False])
def test_results_equal_the_ungrouped_path(settings, group):
    """The same requests give the same statuses, rows and counted votes, grouped or not."""
    app, h = make(settings, ingest_group_commit=group)
    first = [_base(j) for j in range(10)]
    res = post_all(app, h, first)
    assert outcomes(res) == [(201, "created")] * 10
    again = [_base(j) for j in range(10)] + [_base(j, metadata={"x": 1}) for j in range(10)]
    # Re-votes of one user on one pair, newest by created_at wins whatever the arrival order.
    revotes = [ev(f"r{t}", response="same", user_id="v", label=label, created_at=f"2026-01-0{t}T00:00:00Z")
               for t, label in ((1, "down"), (3, "up"), (2, "down"))]
    res = post_all(app, h, again + revotes)
    assert outcomes(res) == [(200, "duplicate")] * 10 + [(409, None)] * 10 + [(201, "created")] * 3
    stats = feedback_query.feedback_stats(app.state.engine)
    assert (stats["up"], stats["down"]) == (5 + 1 + 1, 5)  # + the warm-up event's up, + r3's up
    assert feedback_query.get_event(app.state.engine, event_id="r3")["counted"] is True
    assert not any(feedback_query.get_event(app.state.engine, event_id=e)["counted"] for e in ("r1", "r2"))
    if group:
        assert app.state.group_committer.groups < len(again + revotes)


def test_one_bad_row_fails_only_its_own_request(settings, monkeypatch):
    """A row the database refuses makes the group's statement fail; the others are then written alone."""
    app, h = make(settings)
    real = feedback.prepare_event

    def prepare(event, **kw):
        p = real(event, **kw)
        if event.event_id == "bad":
            p.row["adapter_version"] = 2**70  # past any integer column: the database refuses the row
        return p

    monkeypatch.setattr(feedback, "prepare_event", prepare)
    bodies = [ev(f"ok{i}") for i in range(6)] + [ev("bad")] + [ev(f"ok{i}") for i in range(6, 12)]
    res = post_all(app, h, bodies)
    codes = [r.status_code for r in res]
    assert codes[6] == 422, res[6].text
    assert codes[:6] + codes[7:] == [201] * 12
    assert set(stored(app)) == {f"ok{i}" for i in range(12)}
    assert app.state.group_committer.groups < len(bodies) + 1  # they did meet in a group


def _broken_commits(monkeypatch, app, *, groups_only: bool) -> list[int]:
    """Every write of a group (or of anything, when not groups_only) happens, then fails before COMMIT, as
    when the connection dies: the transaction rolls back. Returns the sizes of the writes that failed."""
    real_write = feedback_write._write
    failed: list[int] = []

    def write_then_die(conn, prepared, results):
        real_write(conn, prepared, results)
        if len(prepared) > 1 or not groups_only:
            failed.append(len(prepared))
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    def one_pg_then_die(engine, p):
        with engine.begin() as conn:
            conn.execute(feedback_write._PG_INGEST_ONE, {**p.row, "voter_key": p.voter_key})
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(feedback_write, "_write", write_then_die)
    if not groups_only:
        monkeypatch.setattr(feedback_write, "_ingest_one_pg", one_pg_then_die)
    return failed


def test_commit_failure_answers_no_2xx_and_stores_nothing(settings, monkeypatch):
    app, h = make(settings)
    post_all(app, h, [])
    _broken_commits(monkeypatch, app, groups_only=False)
    res = post_all(app, h, [ev(f"x{i}") for i in range(16)] + [ev("x0")], warm=False)
    assert [r.status_code for r in res] == [503] * 17
    assert all(r.headers["retry-after"] for r in res)
    assert stored(app) == {}


def test_a_failed_group_is_retried_row_by_row_with_statuses_intact(settings, monkeypatch):
    app, h = make(settings)
    post_all(app, h, [])
    failed = _broken_commits(monkeypatch, app, groups_only=True)
    bodies = [ev("a"), ev("a"), ev("b"), ev("b", response="5"), *(ev(f"u{i}") for i in range(8))]
    res = post_all(app, h, bodies, warm=False)
    assert failed and max(failed) > 1  # a group was written and lost before its commit
    got = outcomes(res)
    assert sorted(got[:2]) == [(200, "duplicate"), (201, "created")]
    assert sorted(got[2:4]) == [(201, "created"), (409, None)]
    assert got[4:] == [(201, "created")] * 8
    winner = bodies[2] if res[2].status_code == 201 else bodies[3]
    assert stored(app) == {"a": "4", "b": winner["response"], **{f"u{i}": "4" for i in range(8)}}


def test_every_2xx_is_committed_under_random_failures(settings, monkeypatch):
    """Commits fail at random (groups and single rows alike): whatever was answered 2xx is stored, with
    the content of the request that got 201; whatever was answered 503 is not."""
    import random

    rng = random.Random(7)
    real_write, real_one = feedback_write._write, feedback_write._ingest_one_pg

    def flaky(real):
        def call(*args):
            if rng.random() < 0.4:
                raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
            return real(*args)
        return call

    app, h = make(settings)
    post_all(app, h, [])
    monkeypatch.setattr(feedback_write, "_write", flaky(real_write))
    monkeypatch.setattr(feedback_write, "_ingest_one_pg", flaky(real_one))
    bodies = [ev(f"r{i}", response=str(i)) for i in range(40)]
    res = post_all(app, h, bodies, warm=False)
    rows = stored(app)
    for body, r in zip(bodies, res, strict=True):
        assert r.status_code in (201, 503)
        if r.status_code == 201:
            assert rows[body["event_id"]] == body["response"]
        else:
            assert body["event_id"] not in rows
    assert {r.status_code for r in res} == {201, 503}  # the draw hit both outcomes

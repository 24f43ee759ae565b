"""Outbox order per target, and a worker killed (SIGKILL) between the commit of a change and its delivery.

Receivers are real HTTP servers on 127.0.0.1; the killed worker is a real Celery process.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import select

from api.queue import OUTBOX_SWEEP_TASK, send_task
from core import delivery
from core.adapter_aliases import move_alias
from core.db import session_factory, session_scope
from core.models import Delivery, utcnow
from tests.api import test_serving_targets as targets
from tests.api.test_serving_targets import Receiver, add_target, publish
from tests.worker.jobkit import Worker, wait_for

api = targets.api  # the fixture: adapter "bot"'s base model registered


def rows(engine) -> list[Delivery]:
    with session_scope(engine) as s:
        return list(s.scalars(select(Delivery).order_by(Delivery.seq)))


def test_a_later_event_waits_for_an_earlier_one_that_is_being_retried(api, tmp_path):
    client, h = api
    engine, settings = client.app.state.engine, client.app.state.settings
    first_id = []

    def answer(path, body):  # the first event is refused twice, everything else accepted
        first_id[:1] = first_id[:1] or [body["delivery_id"]]
        tries = sum(1 for r in receiver.requests if r["key"] == first_id[0])
        return (500, "not yet") if body["delivery_id"] == first_id[0] and tries < 2 else (200, "ok")

    receiver = Receiver(answer=answer)
    try:
        add_target(client, h, receiver.url)
        publish(client, tmp_path, 1)  # version.published, alias.moved latest
        publish(client, tmp_path, 2)
        assert client.put("/v1/adapters/bot/aliases/champion", json={"version": 1},
                          headers=h["train"]).status_code == 200
        ordered = [d.id for d in rows(engine)]
        assert [d.seq for d in rows(engine)] == [1, 2, 3, 4, 5]
        now = utcnow()
        assert delivery.deliver_due(engine, settings=settings, now=now) == {
            ordered[0]: "pending", **{i: None for i in ordered[1:]}}
        now += timedelta(seconds=settings.outbox_backoff_s)
        assert delivery.deliver_due(engine, settings=settings, now=now)[ordered[0]] == "pending"
        assert [r["key"] for r in receiver.requests] == [ordered[0]] * 2  # nothing overtook it
        now += timedelta(seconds=2 * settings.outbox_backoff_s)
        assert delivery.deliver_due(engine, settings=settings, now=now) == {i: "delivered" for i in ordered}
        assert [(r["key"], r["status"]) for r in receiver.requests] == [
            (ordered[0], 500), (ordered[0], 500), *((i, 200) for i in ordered)]
        events = [(r["body"]["event"], r["body"]["alias"], r["body"]["version"]) for r in receiver.requests[2:]]
        assert events == [("version.published", None, 1), ("alias.moved", "latest", 1),
                          ("version.published", None, 2), ("alias.moved", "latest", 2),
                          ("alias.moved", "champion", 1)]
    finally:
        receiver.close()


def test_a_given_up_event_no_longer_holds_the_line(api, tmp_path):
    client, h = api
    engine, settings = client.app.state.engine, client.app.state.settings
    receiver = Receiver(answer=lambda path, body: (500, "no") if body["event"] == "version.published" else (200, "ok"))
    try:
        add_target(client, h, receiver.url)
        publish(client, tmp_path, 1)
        first, second = [d.id for d in rows(engine)]
        give_up = rows(engine)[0].created_at + timedelta(seconds=settings.outbox_give_up_s)
        assert delivery.deliver_due(engine, settings=settings, now=give_up) == {first: "failed", second: "delivered"}
    finally:
        receiver.close()


def test_concurrent_changes_number_each_targets_rows_without_gaps_or_twins(api, tmp_path):
    client, h = api
    engine = client.app.state.engine
    add_target(client, h, "http://127.0.0.1:9/")
    add_target(client, h, "http://127.0.0.1:9/", name="hook2")
    publish(client, tmp_path, 1)
    errors, start = [], threading.Barrier(6)

    def move(n: int) -> None:
        try:
            start.wait()
            with session_factory(engine)() as s:
                move_alias(s, adapter_name="bot", alias=f"a{n}", version=1, moved_by="test")
                s.commit()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=move, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    per_target: dict[str, list[int]] = {}
    for d in rows(engine):
        per_target.setdefault(d.target_id, []).append(d.seq)
    assert [sorted(s) for s in per_target.values()] == [list(range(1, 9))] * 2


@pytest.mark.slow
def test_worker_killed_after_the_commit_before_the_delivery_another_delivers_once(api, settings, tmp_path):
    """At least once, deduplicated by delivery_id: the killed attempt reached the receiver but was never
    acknowledged, so the second worker sends that delivery again (same delivery_id) and the later ones after it."""
    client, h = api
    engine = client.app.state.engine
    release, hung = threading.Event(), []

    def answer(path, body):
        if not hung:  # the first request: hold it until the worker that sent it is dead
            hung.append(body["delivery_id"])
            release.wait(120)
            return 503, "the worker is gone"
        return 200, "ok"

    receiver = Receiver(answer=answer)
    env = {"outbox_lease_s": 3, "outbox_timeout_s": 300}
    try:
        add_target(client, h, receiver.url)
        publish(client, tmp_path, 1)  # committed with its outbox rows; nothing sent yet
        first = Worker(settings, "doomed", queues="default", env=env)
        send_task(settings, OUTBOX_SWEEP_TASK)
        wait_for(lambda: hung, timeout=120, what="the first worker's request", on_timeout=first.log_tail)
        first.kill()  # SIGKILL of the worker and its pool, mid-send
        release.set()
        d = rows(engine)
        assert [(r.id, r.status, r.attempts) for r in d] == [(hung[0], "pending", 1), (d[1].id, "pending", 0)]
        second = Worker(settings, "heir", queues="default", env=env)
        try:
            def delivered():
                if any(r.status == "pending" for r in rows(engine)):
                    send_task(settings, OUTBOX_SWEEP_TASK)  # beat's job, done by hand
                    return False
                return True

            wait_for(delivered, timeout=180, interval=1.0, what="both deliveries", on_timeout=second.log_tail)
        finally:
            second.stop()
    finally:
        release.set()
        receiver.close()
    ok = [r["key"] for r in receiver.requests if r["status"] == 200]
    assert ok == [r.id for r in rows(engine)]  # each acknowledged once, in outbox order
    assert Counter(r["key"] for r in receiver.requests) == {hung[0]: 2, ok[1]: 1}
    assert {r.status for r in rows(engine)} == {"delivered"}


def test_an_event_written_by_a_host_whose_clock_runs_ahead_is_due_at_once(api, tmp_path, monkeypatch):
    """Outbox rows are dated on the database's clock (core.clock), like the deliveries' leases: an API host
    running 10 minutes fast does not hold its events back from a worker with a correct clock."""
    import core.models
    import core.outbox

    client, h = api
    engine, settings = client.app.state.engine, client.app.state.settings
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite is one host's embedded file: its clock is that host's")
    receiver = Receiver()
    try:
        add_target(client, h, receiver.url)
        with monkeypatch.context() as m:
            for module in (core.outbox, core.models):
                m.setattr(module, "utcnow", lambda: utcnow() + timedelta(minutes=10), raising=False)
            publish(client, tmp_path, 1)  # version.published and alias.moved latest, on the fast host
        ordered = [d.id for d in rows(engine)]
        assert len(ordered) == 2
        assert delivery.deliver_due(engine, settings=settings) == {i: "delivered" for i in ordered}
    finally:
        receiver.close()

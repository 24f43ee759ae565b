"""Serving targets and the outbox: real HTTP receivers on 127.0.0.1, signatures, retries, leases, vLLM calls.

Time is passed to the delivery functions (``now``), so backoff and give-up are
exercised without sleeping; the receivers are real HTTP servers in threads.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections import Counter
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from sqlalchemy import select

from core import delivery
from core.adapters import publish_adapter_version
from core.base_models import register_base_model
from core.db import session_factory, session_scope
from core.models import Delivery, ServingTarget, utcnow
from tests.api_client import make_api
from tests.artifacts import make_model_dir, make_staged
from tests.worker.jobkit import Worker, wait_for

SECRET = "s3cret-s3cret-s3cret"


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request and answers ``fail_first`` 500s per delivery."""

    def __init__(self, fail_first: int = 0, answer=None):
        self.requests: list[dict] = []
        self.fail_first = fail_first
        self.answer = answer  # (path, body) -> (status, text), for the vLLM fake
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw)
                key = body.get("delivery_id") or json.dumps(body, sort_keys=True)
                seen = sum(1 for r in outer.requests if r["key"] == key)
                if outer.answer is not None:
                    status, text = outer.answer(self.path, body)
                else:
                    status, text = (500, "not yet") if seen < outer.fail_first else (200, "ok")
                outer.requests.append({"path": self.path, "raw": raw, "body": body, "key": key, "status": status,
                                       "signature": self.headers.get("X-Prospect-Signature")})
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver(fail_first=2)
    yield r
    r.close()


@pytest.fixture
def api(settings, tmp_path):
    client, h = make_api(settings)
    with session_scope(client.app.state.engine) as s:
        client.base = register_base_model(s, settings=settings, name="base",
                                          source=str(make_model_dir(tmp_path / "m")))
    return client, h


def publish(client, tmp_path, n: int) -> None:
    publish_adapter_version(session_factory(client.app.state.engine), settings=client.app.state.settings,
                            adapter_name="bot", staged_dir=make_staged(tmp_path / f"s{n}", payload=b"w%d" % n),
                            job_id=f"job{n}", base_model=client.base, snapshot=None, hyperparameters={},
                            class_counts={}, class_weights={}, eval_metrics={})


def add_target(client, h, url: str, **extra) -> dict:
    r = client.post("/v1/serving-targets", headers=h["admin"],
                    json={"name": extra.pop("name", "hook"), "kind": "webhook", "url": url, "adapter": "bot",
                          "secret": SECRET, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def drain(client, *, start=None, step_s: float = 3600.0, rounds: int = 40):
    """Sweep the outbox at ever later times until nothing is pending (one attempt per due row per sweep)."""
    engine, settings = client.app.state.engine, client.app.state.settings
    now = start or utcnow()
    for _ in range(rounds):
        delivery.deliver_due(engine, settings=settings, now=now)
        with session_scope(engine) as s:
            if not s.scalars(select(Delivery).where(Delivery.status == "pending")).first():
                return
        now += timedelta(seconds=step_s)
    raise AssertionError("deliveries still pending")


def votes(client, h, version: int, up: int, down: int, tag: str) -> None:
    events = [{"event_id": f"{tag}{i}", "prompt": "p", "response": f"{tag}{i}", "label": "up" if i < up else "down",
               "adapter": "bot", "adapter_version": version} for i in range(up + down)]
    assert client.post("/v1/feedback/batch", json={"events": events}, headers=h["ingest"]).json()["created"] == len(
        events)


def test_targets_crud_and_validation(api, receiver):
    client, h = api
    created = add_target(client, h, receiver.url)
    assert created["secret"] == SECRET and created["kind"] == "webhook"
    generated = add_target(client, h, receiver.url, name="hook2", secret=None)
    assert len(generated["secret"]) >= 32
    listed = client.get("/v1/serving-targets", headers=h["admin"]).json()
    assert [t["name"] for t in listed] == ["hook", "hook2"] and all("secret" not in t or t["secret"] is None
                                                                    for t in listed)
    assert client.get("/v1/serving-targets", headers=h["train"]).status_code == 403
    for bad, field in (({"url": "ftp://x"}, "url"), ({"kind": "grpc"}, "kind"), ({"secret": "short"}, "secret"),
                       ({"kind": "vllm"}, "adapter_root"), ({"name": "hook"}, "name")):
        body = {"name": "other", "kind": "webhook", "url": receiver.url, "adapter": "bot", **bad}
        r = client.post("/v1/serving-targets", headers=h["admin"], json=body)
        assert r.status_code in (409, 422) and (field in r.text or r.status_code == 409), (bad, r.text)
    assert client.delete(f"/v1/serving-targets/{created['id']}", headers=h["admin"]).status_code == 204
    assert client.get(f"/v1/serving-targets/{created['id']}", headers=h["admin"]).status_code == 404
    # Its deliveries go with it (schemathesis's stateful phase found them still readable after the DELETE).
    assert client.get(f"/v1/serving-targets/{created['id']}/deliveries", headers=h["admin"]).status_code == 404
    assert add_target(client, h, receiver.url)["name"] == "hook"  # the name is free again


def test_webhook_gets_every_event_once_per_delivery_id_signed_despite_500s(api, receiver, tmp_path):
    client, h = api
    target = add_target(client, h, receiver.url)
    publish(client, tmp_path, 1)
    publish(client, tmp_path, 2)
    assert client.put("/v1/adapters/bot/aliases/champion", json={"version": 1}, headers=h["train"]).status_code == 200
    rollout = client.post("/v1/adapters/bot/rollouts", headers=h["train"],
                          json={"candidate": 2, "traffic": 0.5, "min_votes": 30}).json()
    votes(client, h, 2, 30, 0, "c")
    votes(client, h, 1, 0, 30, "b")
    assert client.post(f"/v1/adapters/bot/rollouts/{rollout['id']}/evaluate",
                       headers=h["train"]).json()["status"] == "promoted"
    drain(client)

    ok = [r for r in receiver.requests if r["status"] == 200]
    per_id = Counter(r["body"]["delivery_id"] for r in ok)
    assert set(per_id.values()) == {1}, per_id  # each delivery_id answered 2xx exactly once
    assert Counter(r["body"]["delivery_id"] for r in receiver.requests) == {d: 3 for d in per_id}  # 500, 500, 200
    for r in receiver.requests:
        expected = "sha256=" + hmac.new(SECRET.encode(), r["raw"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(r["signature"], expected)
    events = sorted((r["body"]["occurred_at"], r["body"]["event"], r["body"]["alias"], r["body"]["version"])
                     for r in ok)
    assert [e[1:] for e in events[:6]] == [
        ("version.published", None, 1), ("alias.moved", "latest", 1),
        ("version.published", None, 2), ("alias.moved", "latest", 2),
        ("alias.moved", "champion", 1), ("rollout.started", None, 2),
    ]
    assert {e[1:] for e in events[6:]} == {("alias.moved", "champion", 2), ("rollout.decided", None, 2)}
    by_event = {(r["body"]["event"], r["body"]["alias"], r["body"]["version"]): r["body"] for r in ok}
    published = by_event[("version.published", None, 2)]
    tarball = client.get("/v1/adapters/bot/versions/2/download", headers=h["read"]).content
    assert published["sha256"] == hashlib.sha256(tarball).hexdigest()
    assert (published["served_name"], published["download_path"]) == ("bot-v2", "/v1/adapters/bot/versions/2/download")
    moved = by_event[("alias.moved", "champion", 2)]
    assert moved["previous_version"] == 1
    decided = by_event[("rollout.decided", None, 2)]
    assert (decided["rollout"]["id"], decided["rollout"]["status"]) == (rollout["id"], "promoted")
    listed = client.get(f"/v1/serving-targets/{target['id']}/deliveries", headers=h["admin"]).json()
    assert len(listed) == 8 and {(d["status"], d["attempts"], d["last_status_code"]) for d in listed} == {
        ("delivered", 3, 200)}


def test_a_delivery_claimed_by_a_killed_worker_is_sent_after_its_lease(api, receiver, tmp_path):
    client, h = api
    engine, settings = client.app.state.engine, client.app.state.settings
    receiver.fail_first = 0
    add_target(client, h, receiver.url)
    publish(client, tmp_path, 1)  # committed with its outbox rows; nobody has sent anything yet
    with session_scope(engine) as s:
        ids = list(s.scalars(select(Delivery.id).order_by(Delivery.created_at)))
    assert len(ids) == 2 and receiver.requests == []
    now = utcnow()
    assert delivery._claim(engine, ids[0], now, settings.outbox_lease_s)  # a worker claims one, then dies
    # The second waits for the first (outbox order), which nobody may take before its lease passes.
    assert delivery.deliver_due(engine, settings=settings, now=now) == {ids[0]: None, ids[1]: None}
    later = now + timedelta(seconds=settings.outbox_lease_s + 1)
    assert delivery.deliver_due(engine, settings=settings, now=later) == {ids[0]: "delivered", ids[1]: "delivered"}
    assert Counter(r["body"]["delivery_id"] for r in receiver.requests) == {ids[0]: 1, ids[1]: 1}


def test_backoff_doubles_and_gives_up(api, tmp_path):
    client, h = api
    engine, settings = client.app.state.engine, client.app.state.settings
    down = Receiver(fail_first=10**6)
    try:
        add_target(client, h, down.url)
        publish(client, tmp_path, 1)
        with session_scope(engine) as s:
            first = s.scalars(select(Delivery).order_by(Delivery.created_at)).first()
        now, waits = first.created_at, []
        for _ in range(4):
            assert delivery.deliver(engine, settings=settings, delivery_id=first.id, now=now) == "pending"
            with session_scope(engine) as s:
                d = s.get(Delivery, first.id)
                waits.append((d.next_attempt_at - now).total_seconds())
                assert (d.last_status_code, d.last_error) == (500, "HTTP 500: not yet")
            assert delivery.deliver(engine, settings=settings, delivery_id=first.id, now=now) is None  # not due
            now = d.next_attempt_at
        assert waits == [settings.outbox_backoff_s * 2**k for k in range(4)]
        give_up = first.created_at + timedelta(seconds=settings.outbox_give_up_s)
        assert delivery.deliver(engine, settings=settings, delivery_id=first.id, now=give_up) == "failed"
    finally:
        down.close()


def test_vllm_target_loads_and_unloads_what_routing_needs(api, tmp_path):
    client, h = api
    calls = []

    def vllm(path, body):
        calls.append((path, body))
        if path == "/v1/load_lora_adapter" and body["lora_name"] == "bot-v9":
            return 400, "The lora adapter 'bot-v9' has already been loaded."
        return 200, "Success"

    fake = Receiver(answer=vllm)
    try:
        r = client.post("/v1/serving-targets", headers=h["admin"], json={
            "name": "vllm", "kind": "vllm", "url": fake.url, "adapter": "bot", "adapter_root": "/srv/loras"})
        assert r.status_code == 201, r.text
        target_id = r.json()["id"]
        publish(client, tmp_path, 1)
        drain(client)
        assert calls == [("/v1/load_lora_adapter", {"lora_name": "bot-v1", "lora_path": "/srv/loras/bot/v1"})]
        publish(client, tmp_path, 2)  # latest moves: v2 in, v1 out
        drain(client)
        client.put("/v1/adapters/bot/aliases/champion", json={"version": 1}, headers=h["train"])  # v1 back, v2 out
        drain(client)
        rollout = client.post("/v1/adapters/bot/rollouts", headers=h["train"],
                              json={"candidate": 2, "min_votes": 20, "traffic": 0.5}).json()  # both arms
        drain(client)
        load = [("/v1/load_lora_adapter", {"lora_name": f"bot-v{n}", "lora_path": f"/srv/loras/bot/v{n}"})
                for n in (1, 2)]
        unload = [("/v1/unload_lora_adapter", {"lora_name": f"bot-v{n}"}) for n in (1, 2)]
        assert calls[1:] == [load[1], unload[0], load[0], unload[1], load[1]]
        votes(client, h, 2, 0, 20, "c")
        votes(client, h, 1, 20, 0, "b")
        client.post(f"/v1/adapters/bot/rollouts/{rollout['id']}/evaluate", headers=h["train"])
        drain(client)
        assert calls[6:] == [unload[1]]  # rolled back: v2 is not needed any more
        target = client.get(f"/v1/serving-targets/{target_id}", headers=h["admin"]).json()
        assert target["loaded"] == [1]
        # A server that already holds an adapter says so with a 400: that counts as loaded.
        with httpx.Client() as http:
            assert delivery._vllm_call(http, f"{fake.url}/v1/load_lora_adapter",
                                       {"lora_name": "bot-v9", "lora_path": "x"},
                                       done_if=("already been loaded",)) == 400
        with session_scope(client.app.state.engine) as s:
            assert s.get(ServingTarget, target_id).loaded == [1]
    finally:
        fake.close()


def test_a_real_worker_delivers_what_the_api_committed(api, receiver, settings, tmp_path):
    """The API commits an alias move and asks a worker (a real Celery process) to sweep the outbox."""
    client, h = api
    receiver.fail_first = 0
    add_target(client, h, receiver.url)
    publish(client, tmp_path, 1)  # outbox rows without a kick: the sweep the API asks for sends them too
    worker = Worker(settings, "live", queues="default")
    try:
        assert client.put("/v1/adapters/bot/aliases/champion", json={"version": 1},
                          headers=h["train"]).status_code == 200
        wait_for(lambda: len({r["body"]["delivery_id"] for r in receiver.requests}) == 3, timeout=120,
                 what="three deliveries", on_timeout=worker.log_tail)
    finally:
        worker.stop()
    assert sorted(r["body"]["event"] for r in receiver.requests) == ["alias.moved", "alias.moved",
                                                                     "version.published"]


def test_an_attempt_that_outlives_its_lease_does_not_clear_the_next_holders(api, receiver, tmp_path):
    """Worker A's send outlives its lease; B claims the row and sends. A's late result must neither drop B's
    lease (a third worker would send the row while B is in flight) nor overwrite B's outcome."""
    client, h = api
    engine, settings = client.app.state.engine, client.app.state.settings
    add_target(client, h, receiver.url)
    publish(client, tmp_path, 1)
    with session_scope(engine) as s:
        first = s.scalars(select(Delivery.id).order_by(Delivery.seq)).first()
    now = utcnow()
    lease = timedelta(seconds=settings.outbox_lease_s)
    a = delivery._claim(engine, first, now, settings.outbox_lease_s)
    b = delivery._claim(engine, first, now + lease + timedelta(seconds=1), settings.outbox_lease_s)
    assert a and b
    late = now + lease + timedelta(seconds=2)
    delivery._record(engine, settings=settings, delivery_id=first, attempt=a, now=late, error="timed out",
                     code=None, final=False)
    after_backoff = late + timedelta(seconds=delivery.backoff_s(settings, 2) + 1)
    assert after_backoff < now + 2 * lease  # B's lease runs still
    assert not delivery._claim(engine, first, after_backoff, settings.outbox_lease_s)  # B still holds it
    assert delivery._record(engine, settings=settings, delivery_id=first, attempt=b, now=late, error=None,
                            code=200, final=False) == "delivered"
    delivery._record(engine, settings=settings, delivery_id=first, attempt=a, now=late, error="refused",
                     code=400, final=True)
    with session_scope(engine) as s:
        d = s.get(Delivery, first)
        assert (d.status, d.last_status_code, d.lease_until) == ("delivered", 200, None)

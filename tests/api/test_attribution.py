"""Feedback attributed to the adapter version that served it: given, or parsed from model, on every path in."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from core import feedback
from core.attribution import parse_served_name, served_name
from core.models import FeedbackEvent
from tests.api_client import make_api


@pytest.fixture
def api(settings):
    return make_api(settings)


def _stored(client) -> dict[str, tuple]:
    with client.app.state.engine.connect() as conn:
        rows = conn.execute(select(FeedbackEvent.event_id, FeedbackEvent.adapter, FeedbackEvent.adapter_version))
        return {r[0]: (r[1], r[2]) for r in rows}


def ev(event_id: str, **kw) -> dict:
    return {"event_id": event_id, "prompt": "2+2?", "response": "4", "label": "up", **kw}


@pytest.mark.parametrize(("model", "parsed"), [
    ("support-bot-v3", ("support-bot", 3)),
    ("chat-v2-v10", ("chat-v2", 10)),  # the last -v<n> is the version
    ("smollm2-135m-instruct", None),
    ("bot-v0", None),  # versions start at 1
    ("-v3", None),
    ("bot-v3x", None),
    (None, None),
])
def test_parse_served_name(model, parsed):
    assert parse_served_name(model) == parsed
    if parsed:
        assert served_name(*parsed) == model


def test_single_event_attribution_given_parsed_and_unknown(api):
    client, h = api
    for body in (
        ev("given", adapter="bot", adapter_version=2, model="bot-v9"),  # given wins over the model
        ev("parsed", model="bot-v3"),
        ev("base", model="smollm2"),
        ev("unknown", adapter="never-published", adapter_version=7),  # stored as given
    ):
        assert client.post("/v1/feedback", json=body, headers=h["ingest"]).status_code == 201, body
    assert _stored(client) == {"given": ("bot", 2), "parsed": ("bot", 3), "base": (None, None),
                               "unknown": ("never-published", 7)}
    got = client.get("/v1/feedback/given", headers=h["read"]).json()
    assert (got["adapter"], got["adapter_version"], got["model"]) == ("bot", 2, "bot-v9")


@pytest.mark.parametrize(("extra", "field"), [
    ({"adapter": "bot"}, "adapter_version"),
    ({"adapter_version": 2}, "adapter"),
    ({"adapter": "bot", "adapter_version": 0}, "adapter_version"),
    ({"adapter": "bot", "adapter_version": "2"}, "adapter_version"),
    ({"adapter": "bot", "adapter_version": True}, "adapter_version"),
    ({"adapter": "", "adapter_version": 2}, "adapter"),
])
def test_bad_attribution_is_a_422_naming_the_field(api, extra, field):
    client, h = api
    r = client.post("/v1/feedback", json=ev("x", **extra), headers=h["ingest"])
    assert r.status_code == 422, r.text
    assert field in r.text
    assert _stored(client) == {}


def test_attribution_changes_the_content_hash_only_when_given(api):
    client, h = api
    plain = feedback.content_hash(feedback.EventInput(response="4", label="up", prompt="2+2?"))
    # An event without attribution hashes as before attribution existed (stored hashes stay valid).
    assert client.post("/v1/feedback", json=ev("a"), headers=h["ingest"]).status_code == 201
    assert client.get("/v1/feedback/a", headers=h["read"]).json()["content_hash"] == plain
    # The same id again with another version is other content: 409, the first stays.
    r = client.post("/v1/feedback", json=ev("b", adapter="bot", adapter_version=1), headers=h["ingest"])
    assert r.status_code == 201
    r = client.post("/v1/feedback", json=ev("b", adapter="bot", adapter_version=2), headers=h["ingest"])
    assert r.status_code == 409
    assert _stored(client)["b"] == ("bot", 1)


def test_batch_attribution_and_bad_items(api):
    client, h = api
    r = client.post("/v1/feedback/batch", headers=h["ingest"], json={"events": [
        ev("b1", adapter="bot", adapter_version=1),
        ev("b2", model="bot-v2"),
        ev("b3", adapter="bot"),  # invalid alone; the others are stored
    ]})
    assert r.status_code == 200
    assert [x["status"] for x in r.json()["results"]] == ["created", "created", "invalid"]
    assert "adapter_version" in r.json()["results"][2]["error"]
    assert _stored(client) == {"b1": ("bot", 1), "b2": ("bot", 2)}


def test_import_attribution_from_query_or_model(api):
    client, h = api
    rows = "\n".join(json.dumps({"prompt": f"q{i}", "completion": "a", "label": i % 2 == 0}) for i in range(3))
    r = client.post("/v1/feedback/import?adapter=bot&adapter_version=4", content=rows, headers=h["ingest"])
    assert r.status_code == 200 and r.json()["created"] == 3
    assert set(_stored(client).values()) == {("bot", 4)}
    other = rows.replace('"a"', '"b"')
    r = client.post("/v1/feedback/import?model=bot-v5", content=other, headers=h["ingest"])
    assert r.status_code == 200 and r.json()["created"] == 3
    assert sorted(set(_stored(client).values())) == [("bot", 4), ("bot", 5)]
    # Half a pair is refused up front, storing nothing.
    third = rows.replace('"a"', '"c"')
    r = client.post("/v1/feedback/import?adapter=bot", content=third, headers=h["ingest"])
    assert r.status_code == 422 and "adapter_version" in r.text
    assert len(_stored(client)) == 6

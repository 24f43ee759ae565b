"""A JSON body is accepted whatever its Content-Type on every JSON route (curl -d sends a form type)."""

from __future__ import annotations

import pytest

from core.db import session_scope
from core.models import BaseModelRecord
from tests.api_client import make_api

FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def api(settings, engine):
    with session_scope(engine) as s:
        s.add(BaseModelRecord(name="tiny", source="/m", path="/m", sha256="0" * 64))
    client, headers = make_api(settings)
    return client, headers["admin"]


@pytest.mark.parametrize("content_type", [FORM, "text/plain", None, "application/json; charset=utf-8"])
def test_json_routes_take_json_whatever_the_content_type(api, content_type):
    client, admin = api
    hdrs = {**admin, **({"Content-Type": content_type} if content_type else {})}

    def send(method, path, body):
        return client.request(method, path, content=body, headers=hdrs)

    assert send("POST", "/v1/feedback", b'{"prompt":"p","response":"r","label":"up"}').status_code == 201
    snap = send("POST", "/v1/snapshots", b'{"filters":{},"options":{"aggregation":"all"}}')
    assert snap.status_code == 201, snap.text
    job = send("POST", "/v1/jobs", b'{"adapter":"bot","base_model":"tiny"}')
    assert job.status_code == 202, job.text
    policy = send("POST", "/v1/policies", b'{"adapter":"bot","base_model":"tiny","min_new_feedback":5,'
                                          b'"min_interval_s":3600}')
    assert policy.status_code in (201, 422) and '"field":""' not in policy.text.replace(" ", "")


def test_a_body_that_is_not_json_names_the_problem(api):
    client, admin = api
    resp = client.post("/v1/jobs", content=b"adapter=bot&base_model=tiny", headers={**admin, "Content-Type": FORM})
    assert resp.status_code == 422
    assert resp.json()["errors"] == [{"field": "body", "type": "json_invalid",
                                      "message": "not valid JSON (at character 0); send a JSON object"}]


def test_the_import_route_still_reads_raw_bodies(api):
    client, admin = api
    rows = b'{"prompt":"p","completion":"c","label":true}\n{"prompt":"q","completion":"c","label":false}\n'
    resp = client.post("/v1/feedback/import", content=rows, headers={**admin, "Content-Type": FORM})
    assert resp.status_code == 200, resp.text
    assert resp.json()["created"] == 2

"""The OpenAPI schema says what the API does: 405s list the documented methods, every /v1 operation
lists the errors it can answer, query times are ISO 8601 only, names carry their pattern."""

from __future__ import annotations

import pytest

from tests.api_client import make_api


@pytest.fixture
def api(settings):
    return make_api(settings)


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("OPTIONS", "/v1/jobs", "GET, POST"),
    ("PUT", "/v1/policies/p1", "DELETE, GET"),
    ("OPTIONS", "/v1/feedback/batch", "POST"),  # not /v1/feedback/{event_id}'s methods
    ("DELETE", "/v1/base-models", "GET, POST"),
])
def test_405_allow_lists_the_documented_methods(api, method, path, allow):
    client, headers = api
    resp = client.request(method, path, headers=headers["admin"])
    assert (resp.status_code, resp.headers["allow"]) == (405, allow)
    assert allow in resp.json()["detail"]


def test_every_v1_operation_documents_its_errors(api):
    client, _ = api
    paths = client.get("/openapi.json").json()["paths"]
    for path, operations in paths.items():
        if not path.startswith("/v1/"):
            continue
        for method, op in operations.items():
            codes = set(op["responses"])
            assert {"401", "403", "422", "429", "503"} <= codes, (method, path)
            if "{" in path:
                assert "404" in codes, (method, path)
            if "requestBody" in op:
                assert {"400", "413"} <= codes, (method, path)


@pytest.mark.parametrize("path", ["/v1/feedback/stats", "/v1/feedback/export", "/v1/adapters/bot/feedback"])
def test_times_in_queries_are_iso_8601_only(api, path):
    client, headers = api
    resp = client.get(path, params={"until": "0.5"}, headers=headers["admin"])
    assert resp.status_code == 422 and "ISO 8601" in resp.text
    assert client.get(path, params={"until": "2026-01-31T12:00:00Z"}, headers=headers["admin"]).status_code == 200


def test_names_carry_their_pattern_in_the_schema(api):
    client, headers = api
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["JobIn"]["properties"]["adapter"]["pattern"] == "^[a-z0-9][a-z0-9._-]{0,99}$"
    resp = client.post("/v1/jobs", json={"adapter": "", "base_model": "x"}, headers=headers["admin"])
    assert resp.status_code == 422 and "invalid adapter name '': use 1-100 characters" in resp.json()["detail"]


def test_snapshot_times_are_iso_8601_only(api):
    client, headers = api
    resp = client.post("/v1/snapshots", json={"filters": {"since": 0}}, headers=headers["admin"])
    assert resp.status_code == 422 and "ISO 8601" in resp.text


@pytest.mark.parametrize(("content", "ctype"), [(b"", None), (b"  \n", "application/x-ndjson"),
                                                (b"\x05V", "application/json")])
def test_import_needs_a_body_and_declared_json_is_json(api, content, ctype):
    client, headers = api
    resp = client.post("/v1/feedback/import", content=content,
                       headers={**headers["admin"], **({"Content-Type": ctype} if ctype else {})})
    assert resp.status_code == 422 and resp.json()["detail"].startswith("body: ")


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/serving-targets", {"name": "t", "kind": "webhook", "url": "http://[0]", "adapter": "bot"}),
    ("/v1/base-models", {"name": "m", "source": "0" * 300}),
])
def test_unparseable_urls_and_paths_are_422_not_500(api, path, body):
    client, headers = api
    assert client.post(path, json=body, headers=headers["admin"]).status_code == 422


def test_schema_carries_the_rules_a_valid_request_must_meet(api):
    client, headers = api
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["JobIn"]["properties"]["config"]["additionalProperties"] is False
    assert "beta" in schemas["JobIn"]["properties"]["config"]["properties"]
    assert schemas["TargetIn"]["then"]["required"] == ["adapter_root"]
    assert schemas["AliasIn"]["properties"]["version"]["minimum"] == 1
    # what the schema now says is what the API checks, worded for people
    resp = client.post("/v1/feedback", json={"prompt": " ", "response": "r", "label": "up"}, headers=headers["admin"])
    assert resp.status_code == 422 and "prompt: must not be empty or blank" in resp.json()["detail"]
    resp = client.put("/v1/adapters/bot/aliases/1x", json={"version": 1}, headers=headers["admin"])
    assert resp.status_code == 422


@pytest.mark.parametrize("url", ["http://[::1]:8000", "https://[2001:db8::7]/hooks", "http://10.0.0.5:8000"])
def test_ip_literal_target_urls_are_accepted_as_before_the_schema_pattern(api, url):
    """core.serving_targets always took a bracketed IPv6 host; the schema's URL pattern refused it (422)."""
    client, headers = api
    body = {"name": "t", "kind": "webhook", "url": url, "adapter": "bot"}
    r = client.post("/v1/serving-targets", json=body, headers=headers["admin"])
    assert r.status_code == 201, r.text
    assert r.json()["url"] == url

"""/v1/policies over HTTP: create, list, get, delete, and the refusals."""

from __future__ import annotations

import pytest

from tests.api_client import make_api
from tests.artifacts import make_model_dir


@pytest.fixture
def api(settings, tmp_path):
    client, h = make_api(settings)
    r = client.post("/v1/base-models", json={"name": "base", "source": str(make_model_dir(tmp_path / "m"))},
                    headers=h["admin"])
    assert r.status_code == 201
    return client, h


def test_create_list_get_delete(api):
    client, h = api
    body = {"adapter": "chat", "base_model": "base", "min_new_feedback": 10, "min_interval_minutes": 5,
            "config": {"beta": 0.2}, "snapshot_options": {"aggregation": "all"}}
    r = client.post("/v1/policies", json=body, headers=h["train"])
    assert r.status_code == 201, r.text
    p = r.json()
    assert {k: p[k] for k in ("adapter", "base_model", "min_new_feedback", "min_interval_minutes", "config")} == {
        "adapter": "chat", "base_model": "base", "min_new_feedback": 10, "min_interval_minutes": 5,
        "config": {"beta": 0.2}}
    assert p["snapshot_options"] == {"aggregation": "all", "one_y_per_x": False} and p["enabled"] is True
    assert [x["id"] for x in client.get("/v1/policies", headers=h["read"]).json()] == [p["id"]]
    assert client.get(f"/v1/policies/{p['id']}", headers=h["read"]).json() == p
    assert client.delete(f"/v1/policies/{p['id']}", headers=h["read"]).status_code == 403
    assert client.delete(f"/v1/policies/{p['id']}", headers=h["train"]).status_code == 204
    assert client.get(f"/v1/policies/{p['id']}", headers=h["read"]).status_code == 404
    assert client.delete(f"/v1/policies/{p['id']}", headers=h["train"]).status_code == 404
    assert client.get("/v1/policies", headers=h["read"]).json() == []


def test_refusals(api):
    client, h = api
    ok = {"adapter": "chat", "base_model": "base"}
    assert client.post("/v1/policies", json=ok, headers=h["read"]).status_code == 403
    assert client.post("/v1/policies", json=ok, headers=h["train"]).status_code == 201
    cases = [
        (ok, 409, "already has a policy"),
        ({"adapter": "other", "base_model": "missing"}, 422, "not registered"),
        ({"adapter": "other", "base_model": "base", "config": [1, 2]}, 422, "config"),
        ({"adapter": "other", "base_model": "base", "min_new_feedback": 0}, 422, "min_new_feedback"),
        ({"adapter": "other", "base_model": "base", "snapshot_options": {"aggregation": "x"}}, 422, "aggregation"),
        ({"adapter": "Other!", "base_model": "base"}, 422, "invalid adapter name"),
        ({"adapter": "other", "base_model": "base", "config": {"max_steps": 10**9}}, 422, "config.max_steps"),
    ]
    for body, status, message in cases:
        r = client.post("/v1/policies", json=body, headers=h["train"])
        assert (r.status_code, message in r.json()["detail"]) == (status, True), (body, r.text)
    assert len(client.get("/v1/policies", headers=h["read"]).json()) == 1

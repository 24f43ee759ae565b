"""/v1/base-models over HTTP: register (admin, local folders), list, get, and every refusal."""

from __future__ import annotations

import pytest

from core.base_models import file_sha256, weights_sha256
from tests.api_client import make_api
from tests.artifacts import make_model_dir


@pytest.fixture
def api(settings):
    return make_api(settings)


def test_register_list_get(api, tmp_path):
    client, h = api
    folder = make_model_dir(tmp_path / "m")
    r = client.post("/v1/base-models", json={"name": "tiny", "source": str(folder)}, headers=h["admin"])
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["name"], body["sha256"], body["architecture"], body["path"]) == (
        "tiny", weights_sha256(folder), "LlamaForCausalLM", str(folder.resolve()))
    assert body["files"] == {"config.json": file_sha256(folder / "config.json"),
                             "model.safetensors": file_sha256(folder / "model.safetensors")}
    admin_id = client.get("/v1/base-models/tiny", headers=h["read"]).json()["created_by_key_id"]
    assert admin_id is not None and admin_id == body["created_by_key_id"]
    r = client.get("/v1/base-models", headers=h["read"])
    assert r.status_code == 200 and [m["name"] for m in r.json()] == ["tiny"]
    assert client.get("/v1/base-models/tiny", headers=h["read"]).json()["sha256"] == body["sha256"]
    r = client.get("/v1/base-models/other", headers=h["read"])
    assert r.status_code == 404 and "other" in r.json()["detail"]


def test_refusals(api, tmp_path):
    client, h = api
    folder = str(make_model_dir(tmp_path / "m"))
    assert client.post("/v1/base-models", json={"name": "tiny", "source": folder},
                       headers=h["train"]).status_code == 403
    assert client.post("/v1/base-models", json={"name": "tiny", "source": folder}).status_code == 401
    assert client.get("/v1/base-models").status_code == 401
    assert client.post("/v1/base-models", json={"name": "tiny", "source": folder},
                       headers=h["admin"]).status_code == 201
    cases = [
        ({"name": "tiny", "source": folder}, 409, "already registered"),
        ({"name": "org-model", "source": "org/model"}, 422, "prospect models add"),
        ({"name": "Bad Name", "source": folder}, 422, "name: invalid name 'Bad Name': use 1-100 characters"),
        ({"name": "x", "source": str(tmp_path)}, 422, "no config.json"),
        ({"name": "x", "source": "/etc"}, 422, "outside the folders base models may be registered from"),
        ({"name": "x"}, 422, "source"),
    ]
    for body, status, message in cases:
        r = client.post("/v1/base-models", json=body, headers=h["admin"])
        assert (r.status_code, message in r.json()["detail"]) == (status, True), (body, r.text)
    assert len(client.get("/v1/base-models", headers=h["read"]).json()) == 1

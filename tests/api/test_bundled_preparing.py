"""Right after a first start the bundled model is still converting: a job for it is a 503 to retry that
says so (not "no base model named ..."), and /readyz shows the model as preparing, then ready."""

from __future__ import annotations

from core.db import session_scope
from core.models import BaseModelRecord
from core.settings import Settings
from tests.api_client import make_api


def test_bundled_model_preparing_then_ready(settings, engine):
    settings = Settings(**{**settings.model_dump(), "register_bundled_model": True})
    client, headers = make_api(settings)
    name = settings.bundled_model_name
    assert client.get("/readyz").json()["base_models"] == {name: "preparing"}
    early = client.post("/v1/jobs", json={"adapter": "bot", "base_model": name}, headers=headers["train"])
    assert early.status_code == 503 and early.headers["retry-after"] == "10"
    assert "not registered yet" in early.json()["detail"] and "try again in a few seconds" in early.json()["detail"]
    other = client.post("/v1/jobs", json={"adapter": "bot", "base_model": "nope"}, headers=headers["train"])
    assert other.status_code == 404 and "no base model named 'nope'" in other.json()["detail"]

    with session_scope(engine) as s:
        s.add(BaseModelRecord(name=name, source="/m", path="/m", sha256="0" * 64))
    assert client.get("/readyz").json()["base_models"] == {name: "ready"}
    assert client.post("/v1/jobs", json={"adapter": "bot", "base_model": name},
                       headers=headers["train"]).status_code == 202


def test_without_the_bundled_model_nothing_is_preparing(settings):
    client, _ = make_api(settings)
    assert client.get("/readyz").json()["base_models"] == {}

from __future__ import annotations

from fastapi.testclient import TestClient

from api.main import create_app
from core.settings import Settings


def test_healthz_and_readyz(settings):
    client = TestClient(create_app(settings))
    assert client.get("/healthz").json() == {"status": "ok"}
    resp = client.get("/readyz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}, "base_models": {}}
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


def test_readyz_reports_database_down(tmp_path):
    settings = Settings(
        data_dir=tmp_path,
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/nothing?connect_timeout=1",
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
    )
    resp = TestClient(create_app(settings)).get("/readyz")
    assert resp.status_code == 503
    body = resp.json()
    assert body["checks"]["broker"] == "ok"
    assert body["checks"]["database"].startswith("unreachable")
    assert resp.headers["retry-after"] == "5"


def test_readyz_reports_broker_down(settings):
    broken = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    resp = TestClient(create_app(broken)).get("/readyz")
    assert resp.status_code == 503
    assert resp.json()["checks"]["database"] == "ok"
    assert resp.json()["checks"]["broker"].startswith("unreachable")


def test_readyz_details_only_for_a_key(settings):
    from tests.api_client import make_api

    broken = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    client, h = make_api(broken)
    anonymous = client.get("/readyz").json()["checks"]["broker"]
    assert anonymous == "unreachable"  # no host, port or exception text for an unauthenticated caller
    detailed = client.get("/readyz", headers=h["read"]).json()["checks"]["broker"]
    assert detailed.startswith("unreachable: ") and len(detailed) > len(anonymous)


def test_version_numbers_are_ascii_decimal(settings):
    from tests.api_client import make_api

    client, h = make_api(settings)
    for ref in ("²", "1" * 40):  # int("²") raised; a 40-digit number overflowed SQLite
        r = client.get(f"/v1/adapters/chat/versions/{ref}", headers=h["read"])
        assert r.status_code == 404, (ref, r.text)

"""The object store failing or named with hostile values: clear 4xx/503 answers, never a 500 (SeaweedFS)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError
from pydantic import ValidationError

from core import base_model_store
from core.artifact_store import S3Store, get_store
from core.cli_run import explain
from core.settings import Settings
from tests.api.test_artifacts_s3 import _publish
from tests.api_client import make_api
from tests.s3kit import client as s3_client
from tests.s3kit import s3_settings

DOWN = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
DENIED = ClientError({"Error": {"Code": "AccessDenied", "Message": "denied"},
                      "ResponseMetadata": {"HTTPStatusCode": 403}}, "HeadObject")


@pytest.fixture
def s3(settings, s3_server, s3_bucket):
    return s3_settings(settings, s3_server, s3_bucket)


@pytest.mark.parametrize("error", [DOWN, DENIED, NoCredentialsError()], ids=["down", "denied", "no-keys"])
def test_a_download_while_the_store_fails_is_a_503(s3, tmp_path, monkeypatch, error):
    """Before: the botocore error reached the framework, a 500 with a traceback."""
    client, h = make_api(s3)
    client = type(client)(client.app, raise_server_exceptions=False)
    _publish(client.app.state.engine, s3, tmp_path, 1)

    def fail(*_a, **_k):
        raise error

    monkeypatch.setattr(S3Store, "stat", fail)
    for path in ("download", "files/adapter_model.safetensors"):
        r = client.get(f"/v1/adapters/chat/versions/1/{path}", headers=h["read"])
        assert (r.status_code, r.headers.get("retry-after")) == (503, "5"), (path, r.text)
        assert "artifact store is unavailable" in r.json()["detail"]


def _register(client, h, source: str):
    return client.post("/v1/base-models", json={"name": "m", "source": source}, headers=h["admin"])


def test_hostile_s3_sources_are_refused_clearly(s3, s3_server, s3_bucket, monkeypatch):
    client, h = make_api(s3)
    client = type(client)(client.app, raise_server_exceptions=False)
    for source in ("s3://", "s3://" + s3_bucket, f"s3://{s3_bucket}/", f"s3://{s3_bucket}/../x",
                   f"s3://{s3_bucket}/a/./b", "s3://Not_A_Bucket!/m", f"s3://no-such-bucket-{s3_bucket}/m",
                   f"s3://{s3_bucket}/nothing/here", f"s3://{s3_bucket}/" + "a" * 2000):
        r = _register(client, h, source)
        assert r.status_code == 422, (source, r.status_code, r.text)
    # Thousands of objects under the prefix: refused after the cap, nothing hashed.
    store = s3_client(s3_server)
    for name in ("config.json", "model.safetensors", *(f"extra/{i}.json" for i in range(5))):
        store.put_object(Bucket=s3_bucket, Key=f"big/{name}", Body=b"{}")
    monkeypatch.setattr(base_model_store, "MAX_OBJECTS", 5)
    r = _register(client, h, f"s3://{s3_bucket}/big")
    assert r.status_code == 422 and "more than 5 objects" in r.json()["detail"], r.text
    monkeypatch.setattr(base_model_store, "MAX_OBJECTS", 10_000)

    # The store down or our keys missing: 503 with Retry-After (before: 422, as if the source were wrong).
    for error in (DOWN, NoCredentialsError()):
        def fail(*_a, _error=error, **_k):
            raise _error
        monkeypatch.setattr(S3Store, "list", fail)
        r = _register(client, h, f"s3://{s3_bucket}/big")
        assert r.status_code == 503 and r.headers["retry-after"], r.text
    # Another bucket refusing our keys is the source's problem: 422 naming it.
    monkeypatch.setattr(S3Store, "list", lambda *_a, **_k: (_ for _ in ()).throw(DENIED))
    r = _register(client, h, f"s3://{s3_bucket}/big")
    assert r.status_code == 422 and "AccessDenied" in r.json()["detail"], r.text


def test_the_s3_clients_are_built_with_the_timeout_and_attempt_settings(s3):
    """Before: botocore's 60 s for both, whatever the settings, and 6 attempts (retries={"max_attempts": 5}
    counts the retries only)."""
    assert (s3.s3_connect_timeout_s, s3.s3_read_timeout_s, s3.s3_max_attempts) == (5.0, 30.0, 3)
    tuned = s3.model_copy(update={"s3_connect_timeout_s": 1.5, "s3_read_timeout_s": 7.0, "s3_max_attempts": 4})
    for store in (get_store(s3), get_store(tuned), base_model_store._store(tuned, "s3://models/base/m")[0]):
        config = store.client.meta.config
        expected = (5.0, 30.0, 3) if store is get_store(s3) else (1.5, 7.0, 4)
        assert (config.connect_timeout, config.read_timeout, config.retries["total_max_attempts"]) == expected


@pytest.mark.parametrize("name", ["s3_connect_timeout_s", "s3_read_timeout_s"])
def test_a_timeout_must_be_positive(name, monkeypatch):
    for bad in ("0", "-1"):
        monkeypatch.setenv(f"PROSPECT_{name.upper()}", bad)
        with pytest.raises(ValidationError) as caught:
            Settings()
        assert explain(caught.value)[0] == f"invalid setting PROSPECT_{name.upper()}: Input should be greater than 0"


def test_s3_max_attempts_must_be_at_least_one(monkeypatch):
    for bad in ("0", "-2"):
        monkeypatch.setenv("PROSPECT_S3_MAX_ATTEMPTS", bad)
        with pytest.raises(ValidationError) as caught:
            Settings()
        assert explain(caught.value)[0] == ("invalid setting PROSPECT_S3_MAX_ATTEMPTS: Input should be greater "
                                            "than or equal to 1")
    monkeypatch.setenv("PROSPECT_S3_MAX_ATTEMPTS", "1")
    assert Settings().s3_max_attempts == 1


@pytest.mark.parametrize("attempts", [1, 2])
def test_a_hung_store_is_asked_s3_max_attempts_times(s3, blackhole, attempts):
    """One request to a store that never answers: one connection per attempt, on both S3 clients (the
    artifact store and store-registered base models). Before: 6 whatever the setting."""
    hung = s3.model_copy(update={"s3_endpoint_url": blackhole.endpoint, "s3_connect_timeout_s": 0.2,
                                 "s3_read_timeout_s": 0.2, "s3_max_attempts": attempts})
    seen = []
    for store in (get_store(hung), base_model_store._store(hung, "s3://models/base/m")[0]):
        before = blackhole.connections()
        with pytest.raises(ReadTimeoutError):
            store.stat("m/config.json")
        seen.append(blackhole.connections(at_least=before + attempts) - before)
    assert seen == [attempts, attempts]


@pytest.mark.timeout(120)  # before: 5 attempts of botocore's 60 s read timeout, a hang of minutes
def test_a_store_that_never_answers_is_a_503_not_a_hang(s3, blackhole, tmp_path):
    client, _ = make_api(s3)
    _publish(client.app.state.engine, s3, tmp_path, 1)
    hung = s3.model_copy(update={"s3_endpoint_url": blackhole.endpoint, "s3_connect_timeout_s": 0.2,
                                 "s3_read_timeout_s": 0.2})
    client, h = make_api(hung)
    client = type(client)(client.app, raise_server_exceptions=False)
    r = client.get("/v1/adapters/chat/versions/1/files/adapter_model.safetensors", headers=h["read"])
    assert (r.status_code, r.headers.get("retry-after")) == (503, "5"), r.text
    assert r.json()["detail"] == "the artifact store is unavailable (ReadTimeoutError); retry later"

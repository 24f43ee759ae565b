"""`prospect models|snapshots|adapters`: models against the database, the others through the REST API."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from core import cli_resources
from core.adapters import publish_adapter_version
from core.base_models import get_base_model, weights_sha256
from core.cli import app
from core.client import Client
from core.db import session_factory, session_scope
from core.settings import get_settings
from tests.api_client import make_api
from tests.artifacts import make_model_dir, make_staged


@pytest.fixture
def cli(settings, monkeypatch):
    """A CLI whose environment points at the test's database, and whose REST client talks to a TestClient."""
    monkeypatch.setenv("PROSPECT_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PROSPECT_DATABASE_URL", settings.sqlalchemy_url)
    get_settings.cache_clear()
    client, headers = make_api(settings)
    client.headers.update(headers["admin"])  # admin implies ingest, read and train

    class TestClientBackedClient(Client):
        def __init__(self, _settings=None) -> None:
            self._http = client

    monkeypatch.setattr(cli_resources, "Client", TestClientBackedClient)
    yield CliRunner(), client
    get_settings.cache_clear()


def test_models_add_and_list(cli, tmp_path, engine):
    runner, _ = cli
    folder = make_model_dir(tmp_path / "m")
    result = runner.invoke(app, ["models", "add", "tiny", str(folder)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == weights_sha256(folder)
    again = runner.invoke(app, ["models", "add", "tiny", str(folder)])
    assert again.exit_code == 2 and "already registered" in again.output
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0 and "tiny" in listed.stdout


def test_snapshots_and_adapters_through_rest(cli, tmp_path, settings, engine):
    runner, client = cli
    for event_id, label in (("e1", "up"), ("e2", "down")):
        client.post("/v1/feedback", json={"event_id": event_id, "prompt": event_id, "response": "r", "label": label})
    created = runner.invoke(app, ["snapshots", "create", "--aggregation", "all", "--tag", "lang=en"])
    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout)["filters"]["metadata"] == {"lang": "en"}
    snap = json.loads(runner.invoke(app, ["snapshots", "create"]).stdout)
    assert (snap["n_desirable"], snap["n_undesirable"]) == (1, 1)
    out = tmp_path / "snap.jsonl"
    assert runner.invoke(app, ["snapshots", "export", snap["id"], "--out", str(out)]).exit_code == 0
    assert sorted(json.loads(line)["prompt"] for line in out.read_text().splitlines()) == ["e1", "e2"]
    bad = runner.invoke(app, ["snapshots", "create", "--aggregation", "mean"])
    assert bad.exit_code == 2 and "aggregation" in bad.output

    runner.invoke(app, ["models", "add", "base", str(make_model_dir(tmp_path / "m"))])
    with session_scope(engine) as s:
        base = get_base_model(s, name="base")
    for n in (1, 2):
        publish_adapter_version(session_factory(engine), settings=settings, adapter_name="chat",
                                staged_dir=make_staged(tmp_path / f"s{n}", payload=b"w%d" % n), job_id=None,
                                base_model=base, snapshot=None, hyperparameters={}, class_counts={},
                                class_weights={}, eval_metrics={})
    listed = runner.invoke(app, ["adapters", "list"])
    assert listed.exit_code == 0 and "latest=v2" in listed.stdout
    assert "v1" in runner.invoke(app, ["adapters", "list", "chat"]).stdout
    dest = tmp_path / "dl"
    assert runner.invoke(app, ["adapters", "download", "chat", "--out", str(dest)]).exit_code == 0
    assert (dest / "chat-v2" / "adapter_model.safetensors").read_bytes() == b"w2"
    assert runner.invoke(app, ["adapters", "download", "chat", "1", "--out", str(dest), "--no-extract"]).exit_code == 0
    assert (dest / "chat-v1.tar.gz").is_file()
    promoted = runner.invoke(app, ["adapters", "promote", "chat", "champion", "1"])
    assert promoted.exit_code == 0 and json.loads(promoted.stdout)["version"] == 1
    stale = runner.invoke(app, ["adapters", "promote", "chat", "champion", "2", "--expected", "2"])
    assert stale.exit_code == 2 and "points to version 1" in stale.output

    # Listings: versions and an alias's history as commands, --json for scripts, piped tables uncut.
    versions = json.loads(runner.invoke(app, ["adapters", "versions", "chat", "--json"]).stdout)
    assert [(v["version"], v["aliases"]) for v in versions] == [(1, ["champion"]), (2, ["latest"])]
    assert runner.invoke(app, ["adapters", "promote", "chat", "champion", "2"]).exit_code == 0
    history = json.loads(runner.invoke(app, ["adapters", "history", "chat", "champion", "--json"]).stdout)
    assert [(h["from_version"], h["to_version"]) for h in history] == [(None, 1), (1, 2)]
    table = runner.invoke(app, ["adapters", "history", "chat", "champion"]).stdout
    assert "v1" in table and "v2" in table
    assert json.loads(runner.invoke(app, ["adapters", "list", "--json"]).stdout)[0]["name"] == "chat"
    models = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    assert models[0]["name"] == "base" and len(models[0]["sha256"]) == 64
    piped = runner.invoke(app, ["models", "list"]).stdout
    row = next(line for line in piped.splitlines() if "base" in line)
    assert models[0]["path"] in row  # the whole path on one line, however long
    keys = json.loads(runner.invoke(app, ["keys", "list", "--json"]).stdout)
    assert {"admin", "read"} <= {k["scopes"] for k in keys} and "hash" not in json.dumps(keys)


def _hostile_server(headers: dict[str, str], body: bytes = b"tarball bytes"):
    """A Client whose API answers every download with ``body`` and ``headers``."""
    import httpx

    class HostileClient(Client):
        def __init__(self, _settings=None) -> None:
            self._http = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(
                lambda request: httpx.Response(200, content=body, headers=[
                    (k.encode(), v.encode()) for k, v in headers.items()])))

    return HostileClient


@pytest.mark.parametrize(
    ("version_header", "etag", "asked", "message"),
    [
        ("../../escaped", None, "latest", "invalid X-Adapter-Version"),
        ("1/../../../escaped", None, "latest", "invalid X-Adapter-Version"),
        ("²", None, "latest", "invalid X-Adapter-Version"),
        ("0", None, "latest", "invalid X-Adapter-Version"),
        ("3", None, "2", "asked for version 2, the server sent version 3"),
        ("2", '"' + "0" * 64 + '"', "latest", "does not match the ETag"),
        ("2", "", "latest", "does not match the ETag"),
    ],
)
def test_download_refuses_a_hostile_or_corrupt_answer(tmp_path, monkeypatch, version_header, etag, asked, message):
    body = b"tarball bytes"
    good_etag = '"' + hashlib.sha256(body).hexdigest() + '"'
    headers = {"x-adapter-version": version_header, "etag": good_etag if etag is None else etag}
    monkeypatch.setenv("PROSPECT_API_KEY", "k")
    get_settings.cache_clear()
    monkeypatch.setattr(cli_resources, "Client", _hostile_server(headers, body))
    dest = tmp_path / "deep" / "dl"
    result = CliRunner().invoke(app, ["adapters", "download", "chat", asked, "--out", str(dest), "--no-extract"])
    get_settings.cache_clear()
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []  # nothing kept, nothing outside


def test_download_keeps_a_verified_tarball(tmp_path, monkeypatch):
    body = b"tarball bytes"
    headers = {"x-adapter-version": "7", "etag": '"' + hashlib.sha256(body).hexdigest() + '"'}
    monkeypatch.setenv("PROSPECT_API_KEY", "k")
    get_settings.cache_clear()
    monkeypatch.setattr(cli_resources, "Client", _hostile_server(headers, body))
    result = CliRunner().invoke(app, ["adapters", "download", "chat", "--out", str(tmp_path), "--no-extract"])
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert (tmp_path / "chat-v7.tar.gz").read_bytes() == body
    bad = CliRunner().invoke(app, ["adapters", "download", "../x", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "invalid adapter name" in bad.output

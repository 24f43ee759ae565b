"""docker-compose.yml is valid and describes the production services."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"postgres", "redis", "migrate", "api", "worker-train", "worker", "beat"}


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_accepts_the_file():
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed: cannot run `compose config`")
    secrets = {"POSTGRES_PASSWORD": "pg-secret", "REDIS_PASSWORD": "redis-secret", "S3_ACCESS_KEY": "s3-key",
               "S3_SECRET_KEY": "s3-secret"}
    env = {k: v for k, v in os.environ.items() if k not in secrets}
    refused = subprocess.run([*cmd, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True,
                             text=True, check=False, env=env)
    assert refused.returncode != 0 and any(name in refused.stderr + refused.stdout for name in secrets)
    out = subprocess.run([*cmd, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True,
                         check=False, env={**env, **secrets})
    assert out.returncode == 0, out.stderr
    rendered = yaml.safe_load(out.stdout)
    assert SERVICES <= set(rendered["services"])


def test_compose_file_shape():
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = spec["services"]
    assert SERVICES <= set(services)
    assert "healthcheck" in services["postgres"]
    train = services["worker-train"]
    assert "training" in train["command"] and "--concurrency" in train["command"]
    assert train["command"][train["command"].index("--concurrency") + 1] == "1"
    assert train["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["migrate"]["command"] == ["prospect", "migrate"]
    for name in ("api", "worker-train", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_compose_has_no_default_secrets_and_redis_needs_a_password():
    text = (ROOT / "docker-compose.yml").read_text()
    # Every use of a password is required (`:?`), never defaulted (`:-`).
    uses = re.findall(r"\$\{(POSTGRES_PASSWORD|REDIS_PASSWORD|S3_ACCESS_KEY|S3_SECRET_KEY)(:.)", text)
    assert uses and {op for _, op in uses} == {":?"}
    spec = yaml.safe_load(text)
    env = spec["x-prospect"]["environment"]
    assert env["PROSPECT_BROKER_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    assert env["PROSPECT_RESULT_BACKEND"].startswith("redis://:${REDIS_PASSWORD:?")
    assert "${POSTGRES_PASSWORD:?" in env["PROSPECT_DATABASE_URL"]
    redis = spec["services"]["redis"]
    assert redis["command"][redis["command"].index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert "REDISCLI_AUTH" in redis["environment"]
    assert "ports" not in spec["services"]["postgres"] and "ports" not in redis
    assert all(p.startswith("${PROSPECT_PUBLISH_ADDR:-127.0.0.1}:") for p in spec["services"]["api"]["ports"])


def test_services_share_no_disk_and_artifacts_go_to_the_object_store():
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = spec["services"]
    env = spec["x-prospect"]["environment"]
    assert env["PROSPECT_ARTIFACT_URL"].startswith("s3://") and "seaweedfs:8333" in env["PROSPECT_S3_ENDPOINT_URL"]
    assert env["AWS_ACCESS_KEY_ID"].startswith("${S3_ACCESS_KEY:?")
    assert env["AWS_SECRET_ACCESS_KEY"].startswith("${S3_SECRET_KEY:?")
    store = services["seaweedfs"]
    assert store["command"][0] == "mini" and "healthcheck" in store and "ports" not in store
    mounts = {}
    for name in ("api", "worker-train", "worker", "beat"):
        assert services[name]["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
        for volume in services[name].get("volumes", []):
            mounts.setdefault(volume.split(":")[0], []).append(name)
    assert all(len(users) == 1 for users in mounts.values()), mounts  # no volume shared between services


def test_workers_and_beat_run_the_prospect_role_commands():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["worker-train"]["command"] == ["prospect", "worker", "--queues", "training", "--concurrency", "1"]
    assert services["worker"]["command"][:4] == ["prospect", "worker", "--queues", "default"]
    assert services["beat"]["command"] == ["prospect", "beat"]

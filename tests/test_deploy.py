"""docker-compose.yml is valid and describes the production services."""

from __future__ import annotations

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
    out = subprocess.run([*cmd, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True,
                         check=False)
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

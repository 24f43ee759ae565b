"""The CLI finds the `prospect up` of its data folder; the banner says what to paste; a second `up` is refused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from core import instance
from core.cli_run import CliError
from core.cli_up import banner, check_port_free, hold_data_lock
from core.client import Client
from core.settings import Settings


@pytest.fixture
def data(tmp_path, monkeypatch):
    for name in ("PROSPECT_API_URL", "PROSPECT_HOST", "PROSPECT_PORT"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_cli_follows_the_running_instance(data):
    settings = Settings(data_dir=data, api_key="pk_x")
    assert instance.client_base_url(settings) == "http://127.0.0.1:8000"  # nothing running
    instance.write_instance(settings, url="http://127.0.0.1:8765")
    assert instance.client_base_url(settings) == "http://127.0.0.1:8765"
    assert str(Client(settings)._http.base_url).rstrip("/") == "http://127.0.0.1:8765"
    # What the user set explicitly wins over the file.
    assert instance.client_base_url(Settings(data_dir=data, port=9000)) == "http://127.0.0.1:9000"
    assert instance.client_base_url(Settings(data_dir=data, api_url="http://h:1/")) == "http://h:1"
    instance.remove_instance(settings)
    assert not instance.instance_file(settings).exists()


def test_a_killed_instance_is_not_followed(data):
    settings = Settings(data_dir=data)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    instance.instance_file(settings).write_text(json.dumps({"url": "http://127.0.0.1:8765",
                                                            "pid": int(dead.stdout)}))
    assert instance.client_base_url(settings) == "http://127.0.0.1:8000"
    instance.instance_file(settings).write_text("{not json")
    assert instance.client_base_url(settings) == "http://127.0.0.1:8000"


def test_remove_leaves_another_processes_file(data):
    settings = Settings(data_dir=data)
    instance.instance_file(settings).write_text(json.dumps({"url": "http://x:1", "pid": os.getppid()}))
    instance.remove_instance(settings)
    assert instance.instance_file(settings).exists()


def test_any_address_is_reached_on_loopback():
    assert instance.url_for("0.0.0.0", 8765) == "http://127.0.0.1:8765"
    assert instance.url_for("::1", 80) == "http://[::1]:80"


def test_banner_ends_with_the_framed_key_and_the_exports(data):
    settings = Settings(data_dir=data)
    lines = banner(url="http://127.0.0.1:8765", settings=settings, admin_key="pk_secret", logs=data / "logs")
    frame_top = next(i for i, line in enumerate(lines) if line.startswith("+-"))
    assert lines[-1] == lines[frame_top] and frame_top > lines.index("press Ctrl-C to stop")
    framed = [line.strip("| ").rstrip() for line in lines[frame_top + 1:-1]]
    assert "pk_secret" in framed
    assert "export PROSPECT_API_URL=http://127.0.0.1:8765" in framed
    assert "export PROSPECT_API_KEY=pk_secret" in framed
    assert any("the CLI is" in line and "prospect" in line for line in framed)
    assert any("keys create --name me --scopes admin" in line for line in framed)
    assert len({len(line) for line in lines[frame_top:]}) == 1  # a closed frame
    assert any(str(data / "logs") in line for line in lines)
    again = banner(url="http://127.0.0.1:8765", settings=settings, admin_key=None, logs=None)
    assert any("export PROSPECT_API_KEY=<an admin key>" in line for line in again)


def test_second_up_on_the_same_data_folder_is_refused_naming_the_first(data):
    settings = Settings(data_dir=data)
    held = hold_data_lock(settings)
    instance.write_instance(settings, url="http://127.0.0.1:8765")
    with pytest.raises(CliError) as refused:
        hold_data_lock(settings)
    assert f"pid {os.getpid()}" in refused.value.message and "http://127.0.0.1:8765" in refused.value.message
    held.close()
    hold_data_lock(settings).close()  # free again once the first one ends


def test_busy_port_is_refused_before_anything_starts():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CliError) as refused:
            check_port_free("127.0.0.1", port)
    assert f"127.0.0.1:{port}" in refused.value.message and f"PROSPECT_PORT={port + 1}" in refused.value.message

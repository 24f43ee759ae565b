"""Where the running instance is: `prospect up` writes its URL to a small file in the data folder, and the
CLI, started with the same settings, reads it, so `PROSPECT_PORT=8765 make up` needs no second setting.

Precedence for the CLI: PROSPECT_API_URL; else PROSPECT_HOST / PROSPECT_PORT when set; else the running
instance's file (when the process that wrote it is alive); else http://127.0.0.1:8000.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from core.settings import Settings

FILENAME = "instance.json"
ANY_ADDRESS = ("0.0.0.0", "::", "")


def url_for(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server bound to ``host``."""
    host = "127.0.0.1" if host in ANY_ADDRESS else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def instance_file(settings: Settings) -> Path:
    return settings.data_path / FILENAME


def write_instance(settings: Settings, *, url: str) -> Path:
    path = instance_file(settings)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    tmp.replace(path)
    return path


def remove_instance(settings: Settings) -> None:
    """Remove the file if this process wrote it (a second `prospect up` must not remove the first one's)."""
    path = instance_file(settings)
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def running_instance(settings: Settings) -> dict | None:
    """{"url", "pid"} of the live `prospect up` on this data folder, or None (none, or it was killed)."""
    try:
        info = json.loads(instance_file(settings).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("url"), str) or not _alive(info.get("pid")):
        return None
    return info


def client_base_url(settings: Settings) -> str:
    if settings.api_url:
        return settings.api_url.rstrip("/")
    if {"host", "port"} & settings.model_fields_set:
        return url_for(settings.host, settings.port)
    info = running_instance(settings)
    return info["url"].rstrip("/") if info else url_for(settings.host, settings.port)

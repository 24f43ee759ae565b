"""`prospect up`: the whole embedded stack (API, one Celery worker, beat) as child processes.

Before anything starts, the data folder's lock and the API port are checked, so a second `make up`
says which process holds them instead of starting a second worker and beat on the same folder.
Children write to log files under ``data_dir/logs`` (``--verbose`` shows them here instead); the banner
comes once the API answers, and ends with the admin key of a first start, framed, and the two lines
the CLI needs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Annotated

import httpx
import typer

from core import keys as keys_mod
from core.cli_roles import QUEUES, beat_command, worker_command
from core.cli_run import CliError
from core.db import get_engine, session_scope
from core.instance import remove_instance, running_instance, url_for, write_instance
from core.settings import Settings, get_settings

log = logging.getLogger("prospect.cli")

STOP_GRACE_S = 15.0
READY_TIMEOUT_S = 120.0
LOCK_FILE = "up.lock"
NEW_ADMIN_KEY = "prospect keys create --name me --scopes admin"


def redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


def first_admin_key() -> str | None:
    """Create an admin key on first start (when no usable admin key exists)."""
    with session_scope(get_engine()) as session:
        if any(k.revoked_at is None and "admin" in k.scopes.split(",") for k in keys_mod.list_keys(session)):
            return None
        _, plaintext = keys_mod.create_key(session, name="admin (first start)", scopes="admin")
        return plaintext


def hold_data_lock(settings: Settings) -> IO:
    """An exclusive lock on the data folder for the life of this process (released when it exits)."""
    fh = open(settings.data_path / LOCK_FILE, "a+")  # noqa: SIM115 - held until the process ends
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        other = running_instance(settings)
        who = f" (pid {other['pid']}, serving {other['url']})" if other else ""
        raise CliError(f"another `prospect up`{who} is using the data folder {settings.data_path}: stop it "
                       "(Ctrl-C in its terminal), or give this one its own PROSPECT_DATA_DIR") from None
    return fh


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise CliError(f"cannot listen on {host}:{port} ({exc.strerror}): another program uses the port; "
                           f"stop it, or choose another one, e.g. `PROSPECT_PORT={port + 1} make up`") from None


def children(host: str, port: int) -> list[tuple[str, list[str]]]:
    settings = get_settings()
    return [
        ("api", [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", host,
                 "--port", str(port)]),
        ("worker", worker_command(settings, queues=list(QUEUES), concurrency=2)),
        ("beat", beat_command(settings)),
    ]


def stop_all(procs: dict[str, subprocess.Popen]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", name, STOP_GRACE_S)
            proc.kill()
            proc.wait()


def cli_path() -> str:
    """The `prospect` next to this Python (the venv's), as the user would type it from here."""
    path = Path(sys.executable).parent / "prospect"
    on_path = shutil.which("prospect")
    if on_path and Path(on_path).resolve() == path.resolve():
        return "prospect"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def banner(*, url: str, settings: Settings, admin_key: str | None, logs: Path | None) -> list[str]:
    lines = [
        f"Prospect is up: {url}  (API docs: {url}/docs)",
        f"dashboard: {url}/ui  (sign in with an API key; metrics: {url}/metrics)",
        f"data directory: {settings.data_path}",
        f"database: {redact(settings.sqlalchemy_url)}",
        f"broker:   {redact(settings.celery_broker_url)}",
    ]
    if logs is not None:
        lines.append(f"logs:     {logs}/{{api,worker,beat}}.log  (`prospect up --verbose` shows them here)")
    lines.append("press Ctrl-C to stop")
    cli = cli_path()
    exports = [f"export PROSPECT_API_URL={url}",
               f"export PROSPECT_API_KEY={admin_key or '<an admin key>'}"]
    if admin_key:
        head = ["first start: an admin API key was created (shown once):", admin_key, "",
                f"the CLI is {cli}; in another shell, paste:"]
        tail = [f"lost the key? `{cli} {NEW_ADMIN_KEY.removeprefix('prospect ')}` makes another"]
    else:
        head = [f"the CLI is {cli}; in another shell, paste (with your key):"]
        tail = [f"no key at hand? `{cli} {NEW_ADMIN_KEY.removeprefix('prospect ')}` makes an admin key"]
    framed = [*head, *exports, *tail]
    width = max(len(line) for line in framed)
    rule = "+" + "-" * (width + 2) + "+"
    return [*lines, rule, *(f"| {line.ljust(width)} |" for line in framed), rule]


def _wait_for_api(url: str, procs: dict[str, subprocess.Popen], stopping) -> str | None:
    """None once the API answers /healthz, else why not (a child exited, or Ctrl-C)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and not stopping():
        for name, proc in procs.items():
            if proc.poll() is not None:
                return f"{name} exited with code {proc.returncode}"
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return None
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return "interrupted" if stopping() else f"the API did not answer within {READY_TIMEOUT_S:.0f}s"


def up(
    host: Annotated[str | None, typer.Option(help="API bind address (default: PROSPECT_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="API port (default: PROSPECT_PORT).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the API's, worker's and beat's output here "
                                          "(default: log files in the data folder).")] = False,
) -> None:
    """Migrate, then run the API, one Celery worker and Celery beat until Ctrl-C."""
    from core.migrate import upgrade

    settings = get_settings()
    host = host or settings.host
    port = port or settings.port
    settings.ensure_dirs()
    lock = hold_data_lock(settings)  # noqa: F841 - held until we exit
    check_port_free(host, port)
    if not verbose:  # one line per migration on a first start: noise above the banner
        logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    upgrade(settings.sqlalchemy_url)
    admin_key = first_admin_key()
    from core.metrics import reset_dir  # sets PROMETHEUS_MULTIPROC_DIR, which the children inherit

    reset_dir()

    logs = None if verbose else settings.data_path / "logs"
    if logs is not None:
        logs.mkdir(exist_ok=True)
    procs: dict[str, subprocess.Popen] = {}
    stopping = False

    def _on_signal(signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    for name, cmd in children(host, port):
        out = None if logs is None else open(logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        # Own process group: the terminal's Ctrl-C reaches only us, and we stop children in order.
        procs[name] = subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True,
                                       stdout=out, stderr=subprocess.STDOUT if out else None)
        if out is not None:
            out.close()

    url = url_for(host, port)
    exit_code = 0
    problem = _wait_for_api(url, procs, lambda: stopping)
    if problem is None:
        write_instance(settings, url=url)
        print("\n".join(banner(url=url, settings=settings, admin_key=admin_key, logs=logs)), flush=True)
    elif problem != "interrupted":
        log.error("%s; stopping everything%s", problem, f" (see {logs})" if logs else "")
        stopping, exit_code = True, 1
    while not stopping:
        for name, proc in procs.items():
            if proc.poll() is not None:
                log.error("%s exited with code %s; stopping everything%s", name, proc.returncode,
                          f" (see {logs / (name + '.log')})" if logs else "")
                stopping, exit_code = True, 1
                break
        time.sleep(0.5)
    print("stopping…", flush=True)
    remove_instance(settings)
    stop_all(procs)
    print("stopped", flush=True)
    raise typer.Exit(exit_code)

"""The `prospect` command line.

`prospect up` runs the whole embedded stack (API, one Celery worker, beat) as
child processes; the other commands manage the database and API keys. The CLI
imports neither the API nor the worker: it starts them as processes.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core import keys as keys_mod
from core.cli_feedback import feedback_app
from core.cli_jobs import jobs_app
from core.cli_live import rollouts_app
from core.cli_resources import adapters_app, models_app, snapshots_app
from core.cli_run import ProspectTyper, database_engine
from core.db import get_engine, session_scope
from core.errors import DomainError
from core.logging import configure_logging
from core.settings import get_settings

app = ProspectTyper(help="Prospect: thumbs feedback in, KTO-aligned LoRA adapters out.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(snapshots_app, name="snapshots")
app.add_typer(adapters_app, name="adapters")
app.add_typer(jobs_app, name="jobs")
app.add_typer(feedback_app, name="feedback")
app.add_typer(rollouts_app, name="rollouts")
console = Console(stderr=True)
log = logging.getLogger("prospect.cli")

STOP_GRACE_S = 15.0


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show the Python traceback of an error (anywhere on the line).")]
    = False,
) -> None:
    configure_logging(get_settings().log_level)


@app.command()
def migrate() -> None:
    """Apply all database migrations (idempotent)."""
    from core.migrate import upgrade

    settings = get_settings()
    settings.ensure_dirs()
    upgrade(settings.sqlalchemy_url)
    console.print(f"database migrated: {_redact(settings.sqlalchemy_url)}")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: ingest,read,train,admin.")] = "ingest",
) -> None:
    """Create an API key; its plaintext is printed once, as the last line of stdout."""
    engine = database_engine()
    try:
        with session_scope(engine) as session:
            row, plaintext = keys_mod.create_key(session, name=name, scopes=scopes)
            key_id, key_scopes = row.id, row.scopes
    except DomainError as exc:
        _fail(exc.message)
    console.print(f"created key {key_id} '{name}' with scopes {key_scopes}; store it now, it is not shown again")
    print(plaintext)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (never their secrets)."""
    with session_scope(database_engine()) as session:
        rows = keys_mod.list_keys(session)
    table = Table("id", "name", "prefix", "scopes", "created", "last used (±1 min)", "revoked")
    for r in rows:
        table.add_row(
            str(r.id), r.name, r.prefix + "…", r.scopes, r.created_at.isoformat(timespec="seconds"),
            r.last_used_at.isoformat(timespec="seconds") if r.last_used_at else "",
            r.revoked_at.isoformat(timespec="seconds") if r.revoked_at else "",
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="The key's id (see `prospect keys list`).")]) -> None:
    """Revoke an API key; requests with it fail within a few seconds."""
    try:
        with session_scope(database_engine()) as session:
            keys_mod.revoke_key(session, key_id=key_id)
    except DomainError as exc:
        _fail(exc.message)
    console.print(f"revoked key {key_id}")


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


def _first_admin_key() -> str | None:
    """Create an admin key on first start (when no usable admin key exists)."""
    with session_scope(get_engine()) as session:
        if any(k.revoked_at is None and "admin" in k.scopes.split(",") for k in keys_mod.list_keys(session)):
            return None
        _, plaintext = keys_mod.create_key(session, name="admin (first start)", scopes="admin")
        return plaintext


def _children(host: str, port: int) -> list[tuple[str, list[str]]]:
    settings = get_settings()
    py = sys.executable
    return [
        ("api", [py, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", host, "--port", str(port)]),
        (
            "worker",
            [py, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "training,default",
             "--concurrency", "2", "--loglevel", settings.log_level, "-n", "prospect@%h"],
        ),
        (
            "beat",
            [py, "-m", "celery", "-A", "worker.celery_app", "beat", "--loglevel", settings.log_level,
             "-s", str(settings.data_path / "celerybeat-schedule")],
        ),
    ]


def _stop_all(procs: dict[str, subprocess.Popen]) -> None:
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


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="API bind address (default: PROSPECT_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="API port (default: PROSPECT_PORT).")] = None,
) -> None:
    """Migrate, then run the API, one Celery worker and Celery beat until Ctrl-C."""
    from core.migrate import upgrade

    settings = get_settings()
    host = host or settings.host
    port = port or settings.port
    settings.ensure_dirs()
    upgrade(settings.sqlalchemy_url)
    admin_key = _first_admin_key()
    from core.metrics import reset_dir  # sets PROMETHEUS_MULTIPROC_DIR, which the children inherit

    reset_dir()

    procs: dict[str, subprocess.Popen] = {}
    stopping = False

    def _on_signal(signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    for name, cmd in _children(host, port):
        # Own process group: the terminal's Ctrl-C reaches only us, and we stop children in order.
        procs[name] = subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True)

    print(f"Prospect is up: http://{host}:{port}  (API docs: http://{host}:{port}/docs)")
    print(f"dashboard: http://{host}:{port}/ui  (sign in with an API key; metrics: http://{host}:{port}/metrics)")
    print(f"data directory: {settings.data_path}")
    print(f"database: {_redact(settings.sqlalchemy_url)}")
    print(f"broker:   {_redact(settings.celery_broker_url)}")
    if admin_key:
        print("first start: an admin API key was created (shown once):")
        print(admin_key)
    print("press Ctrl-C to stop", flush=True)

    exit_code = 0
    while not stopping:
        for name, proc in procs.items():
            if proc.poll() is not None:
                log.error("%s exited with code %s; stopping everything", name, proc.returncode)
                stopping, exit_code = True, 1
                break
        time.sleep(0.5)
    print("stopping…", flush=True)
    _stop_all(procs)
    print("stopped", flush=True)
    raise typer.Exit(exit_code)


if __name__ == "__main__":
    app()

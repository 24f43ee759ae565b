"""The `prospect` command line.

`prospect up` (core/cli_up.py) runs the whole embedded stack (API, one Celery
worker, beat) as child processes; `prospect worker` and `prospect beat`
(core/cli_roles.py) run one role each, for hosts of their own; the other commands manage the database and
API keys. The CLI imports neither the API nor the worker: it starts them as
processes. core/cli_run.py says how every command ends (messages, exit codes).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from core import keys as keys_mod
from core.cli_feedback import feedback_app
from core.cli_jobs import jobs_app
from core.cli_live import rollouts_app
from core.cli_output import JsonOption, print_rows
from core.cli_resources import adapters_app, models_app, snapshots_app
from core.cli_roles import beat, worker
from core.cli_run import ProspectTyper, database_engine
from core.cli_try import adapters_try  # noqa: F401 - registers `adapters try`
from core.cli_up import redact, up
from core.db import session_scope
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


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {message}", soft_wrap=True)  # one line: copyable
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
    console.print(f"database migrated: {redact(settings.sqlalchemy_url)}")


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
def keys_list(as_json: JsonOption = False) -> None:
    """List API keys (never their secrets)."""
    def when(t):
        return t.isoformat(timespec="seconds") if t else None

    with session_scope(database_engine()) as session:
        rows = [{"id": r.id, "name": r.name, "prefix": r.prefix, "scopes": r.scopes, "created_at": when(r.created_at),
                 "last_used_at": when(r.last_used_at), "revoked_at": when(r.revoked_at)}
                for r in keys_mod.list_keys(session)]
    print_rows(rows, {"id": lambda r: r["id"], "name": lambda r: r["name"], "prefix": lambda r: r["prefix"] + "…",
                      "scopes": lambda r: r["scopes"], "created": lambda r: r["created_at"],
                      "last used (±1 min)": lambda r: r["last_used_at"], "revoked": lambda r: r["revoked_at"]},
               as_json=as_json)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="The key's id (see `prospect keys list`).")]) -> None:
    """Revoke an API key; requests with it fail within a few seconds."""
    try:
        with session_scope(database_engine()) as session:
            keys_mod.revoke_key(session, key_id=key_id)
    except DomainError as exc:
        _fail(exc.message)
    console.print(f"revoked key {key_id}")


app.command()(up)
app.command()(worker)
app.command()(beat)


if __name__ == "__main__":
    app()

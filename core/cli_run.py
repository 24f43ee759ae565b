"""How a `prospect` command ends: errors in one or two lines, one set of exit codes.

Exit codes, for every command (and every command that waits for a job):
0 succeeded, 1 failed (a job that failed or was cancelled, an unexpected error),
2 usage or connection errors (bad option, no database, API unreachable or
refusing), 130 interrupted (Ctrl-C). A Python traceback is printed only when
``--debug`` is given (anywhere on the command line).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy import make_url
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from typer._click import ClickException  # Typer vendors its own click: catch its exceptions

from core.errors import DomainError
from core.settings import Settings, get_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEBUG_FLAG = "--debug"
_console = Console(stderr=True)

WHERE = ("run `prospect up` (or `make up`) first, or point PROSPECT_DATA_DIR (or PROSPECT_DATABASE_URL) "
         "at the data folder `prospect up` uses")


class CliError(Exception):
    """An error whose message says what to do; ends the command with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def database_engine(settings: Settings | None = None) -> Engine:
    """The engine of an existing database, for the commands that use it directly (keys, models): a missing
    SQLite file is an error here rather than an empty file created by connecting to it."""
    from core.db import get_engine

    settings = settings or get_settings()
    url = make_url(settings.sqlalchemy_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        raise CliError(f"no database at {url.database}: {WHERE}")
    return get_engine(settings)


def explain(exc: BaseException) -> tuple[str, int]:
    """One or two lines for an error, and the exit code."""
    if isinstance(exc, CliError):
        return exc.message, exc.code
    if isinstance(exc, DomainError):
        return exc.message, EXIT_USAGE
    if isinstance(exc, ValidationError):  # a PROSPECT_* setting
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "settings"
        return f"invalid setting PROSPECT_{field.upper()}: {first['msg']}", EXIT_USAGE
    if isinstance(exc, DBAPIError):
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        if "no such table" in reason or "does not exist" in reason:
            return f"the database is not migrated ({reason}): run `prospect migrate`, or {WHERE}", EXIT_USAGE
        return f"cannot use the database ({reason}): {WHERE}", EXIT_USAGE
    if isinstance(exc, SQLAlchemyError):
        return f"database error: {str(exc).splitlines()[0]}", EXIT_USAGE
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}", EXIT_FAILED


def run(app: typer.Typer, args: list[str] | None = None) -> None:
    """Run ``app`` as the `prospect` program and exit with the codes above."""
    args = list(sys.argv[1:] if args is None else args)
    debug = DEBUG_FLAG in args
    args = [a for a in args if a != DEBUG_FLAG]
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="prospect", standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C (Typer also turns it into Exit(130))
        _console.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except ClickException as exc:  # usage errors
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        if debug:
            raise
        message, code = explain(exc)
        _console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        if code == EXIT_FAILED:
            _console.print(f"(run again with {DEBUG_FLAG} for the traceback)", highlight=False, soft_wrap=True)
        sys.exit(code)
    sys.exit(result if isinstance(result, int) else EXIT_OK)


class ProspectTyper(typer.Typer):
    """A Typer app that ends through :func:`run` (no traceback without --debug, exit codes above)."""

    def __call__(self, *args, **kwargs):
        run(self, kwargs.get("args"))

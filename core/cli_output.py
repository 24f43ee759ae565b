"""Listings of the CLI: a table on a terminal, the same table uncut when piped, or JSON with --json."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

JsonOption = Annotated[bool, typer.Option("--json", help="Print the rows as JSON (for scripts).")]
PIPE_WIDTH = 10_000  # piped output is never cut to a terminal's width


def print_rows(rows: Iterable[Any], columns: dict[str, Callable[[Any], object]], *, as_json: bool,
               raw: Callable[[Any], object] = lambda r: r) -> None:
    """``columns`` maps a header to how a row shows there; ``raw`` is what --json prints of a row."""
    rows = list(rows)
    if as_json:
        print(json.dumps([raw(r) for r in rows], indent=2, sort_keys=True, default=str))
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*(_cell(show(row)) for show in columns.values()))
    table_console().print(table)


def table_console(min_width: int = 0) -> Console:
    """The terminal's width (at least ``min_width``) on a terminal; uncut when piped."""
    if sys.stdout.isatty():
        return Console(width=max(Console().width, min_width))
    return Console(width=PIPE_WIDTH, soft_wrap=True)


def _cell(value: object) -> str:
    return "" if value is None else str(value)

"""`prospect feedback import --source S PATH...`: bring another tool's feedback export in.

The export is read and converted here (files, folders, zip / tar.gz
archives; no size limit beyond memory), then sent to
``POST /v1/feedback/import?source=events`` in batches that fit the API's
body limit, with a progress bar. Each batch is one transaction; event ids
come from the source's ids, so an interrupted import is simply run again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from core import importers
from core.client import ApiError, Client
from core.errors import DomainError
from core.importers.base import Options
from core.settings import get_settings

console = Console(stderr=True)
feedback_app = typer.Typer(help="Import feedback exports of other tools (REST).", no_args_is_help=True)
COUNTS = ("created", "duplicate", "conflict", "invalid")


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", soft_wrap=True)  # one line: copyable
    raise typer.Exit(2)


def read_paths(paths: list[Path]) -> dict[str, bytes]:
    """{name: bytes} of every file given or under a folder given; archives are unpacked."""
    files: dict[str, bytes] = {}
    for path in paths:
        if not path.exists():
            _fail(f"{path}: no such file or folder")
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for p in found:
            name = str(p.relative_to(path)) if path.is_dir() else p.name
            for inner, data in importers.unpack(p.read_bytes(), name=name, max_uncompressed_bytes=sys.maxsize).items():
                files[f"{name}/{inner}" if inner != name else name] = data
    return files


def batches(events: list[dict[str, Any]], *, max_events: int, max_bytes: int) -> list[list[bytes]]:
    """JSON lines grouped so that each group has at most ``max_events`` lines and ``max_bytes`` bytes."""
    out: list[list[bytes]] = []
    cur: list[bytes] = []
    size = 0
    for event in events:
        line = orjson.dumps(event)
        if cur and (len(cur) >= max_events or size + len(line) + 1 > max_bytes):
            out.append(cur)
            cur, size = [], 0
        cur.append(line)
        size += len(line) + 1
    if cur:
        out.append(cur)
    return out


def _client() -> Client:
    try:
        return Client(get_settings(), timeout_s=300.0)
    except ApiError as exc:
        _fail(exc.message)


@feedback_app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Export files, folders, zip or tar.gz archives.")],
    source: Annotated[str, typer.Option(help=f"One of: {', '.join(importers.SOURCES)}.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would happen; write nothing.")] = False,
    model: Annotated[str | None, typer.Option(help="Model for events whose source names none.")] = None,
    score_name: Annotated[list[str] | None, typer.Option(help="Langfuse score name that is thumbs; repeatable.")] = None,
    feedback_key: Annotated[list[str] | None, typer.Option(help="LangSmith feedback key; repeatable.")] = None,
    numeric_threshold: Annotated[float, typer.Option(help="Langfuse NUMERIC: up when value > this.")] = 0.0,
    categorical_up: Annotated[list[str] | None, typer.Option(help="Categorical value meaning up; repeatable.")] = None,
    categorical_down: Annotated[list[str] | None, typer.Option(help="Value meaning down; repeatable.")] = None,
    batch_events: Annotated[int, typer.Option(min=1, help="Most events per request.")] = 500,
) -> None:
    """Convert an export and send it in batches; prints the report as JSON."""
    settings = get_settings()
    d = Options()
    options = Options(model=model, score_names=tuple(score_name or d.score_names),
                      feedback_keys=tuple(feedback_key or d.feedback_keys), numeric_threshold=numeric_threshold,
                      categorical_up=tuple(categorical_up or d.categorical_up),
                      categorical_down=tuple(categorical_down or d.categorical_down),
                      max_metadata_bytes=settings.max_metadata_bytes, max_metadata_depth=settings.max_metadata_depth)
    try:
        conv = importers.convert(source, read_paths(paths), options)
    except DomainError as exc:
        _fail(exc.message)
    events = [e for _, e in conv.events]
    report: dict[str, Any] = {"rows": conv.records, "events": 0, **{k: 0 for k in COUNTS},
                              "skipped": conv.skipped, "skipped_total": len(conv.skipped),
                              "errors": [{"record": r, "status": "invalid", "message": m} for r, m in conv.invalid],
                              "dry_run": dry_run}
    report["invalid"] = len(conv.invalid)
    client = _client() if events else None
    # Stay under the API's body limit with some room to spare.
    groups = batches(events, max_events=batch_events, max_bytes=int(settings.max_body_bytes * 0.9))
    columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("import", total=len(events), counts="")
        for group in groups:
            try:
                out = client.request("POST", "/v1/feedback/import", content=b"\n".join(group),
                                     params={"source": "events", "dry_run": str(dry_run).lower()},
                                     headers={"Content-Type": "application/x-ndjson"}).json()
            except ApiError as exc:
                progress.stop()
                print(json.dumps(report, indent=2))
                _fail(f"{exc.message} (events already sent are stored; run the same command again to resume)")
            for k in (*COUNTS, "events"):
                report[k] += out[k]
            report["errors"].extend(out["errors"])
            progress.update(task, advance=len(group),
                            counts=" ".join(f"{k} {report[k]}" for k in COUNTS if report[k]))
    print(json.dumps(report, indent=2))
    console.print(f"{'dry run: ' if dry_run else ''}{report['rows']} records, {report['created']} created, "
                  f"{report['duplicate']} duplicate, {report['conflict']} conflict, {report['invalid']} invalid, "
                  f"{report['skipped_total']} skipped")

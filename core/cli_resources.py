"""`prospect models|snapshots|adapters ...`.

``models`` talks to the database directly (like ``keys``: an operator's
command on the server, which may download a hub model). ``snapshots`` and
``adapters`` call the REST API with the key in PROSPECT_API_KEY.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from core import base_models
from core.cli_output import JsonOption, print_rows
from core.cli_run import database_engine
from core.client import ApiError, Client
from core.db import session_scope
from core.errors import DomainError
from core.settings import get_settings

console = Console(stderr=True)
models_app = typer.Typer(help="Register and list base models (the pinned reference).", no_args_is_help=True)
snapshots_app = typer.Typer(help="Take and export snapshots of the feedback (REST).", no_args_is_help=True)
adapters_app = typer.Typer(help="List, download and promote adapter versions (REST).", no_args_is_help=True)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", soft_wrap=True)  # one line: copyable
    raise typer.Exit(2)


def _client() -> Client:
    try:
        return Client(get_settings())
    except ApiError as exc:
        _fail(exc.message)


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="Unique name, e.g. 'smollm2-135m-instruct'.")],
    source: Annotated[str, typer.Argument(help="A model folder, s3://bucket/prefix (objects a worker fetches), "
                                                "or a hub id 'org/model' (needs a network).")],
    revision: Annotated[str | None, typer.Option(help="Hub revision (branch, tag or commit).")] = None,
) -> None:
    """Register a base model and pin the sha256 of its weights."""
    settings = get_settings()
    settings.ensure_dirs()
    try:
        with session_scope(database_engine(settings)) as session:
            rec = base_models.register_base_model(session, settings=settings, name=name, source=source,
                                                  revision=revision)
            sha, path = rec.sha256, rec.path
    except DomainError as exc:
        _fail(exc.message)
    console.print(f"registered base model {name} at {path}")
    print(sha)


@models_app.command("list")
def models_list(as_json: JsonOption = False) -> None:
    """List registered base models."""
    with session_scope(database_engine()) as session:
        rows = [{"name": r.name, "architecture": r.architecture, "sha256": r.sha256, "path": r.path,
                 "source": r.source, "status": r.status, "error": r.error,
                 "created_at": r.created_at.isoformat(timespec="seconds")}
                for r in base_models.list_base_models(session)]
    print_rows(rows, {"name": lambda r: r["name"], "status": lambda r: r["status"],
                      "architecture": lambda r: r["architecture"],
                      "sha256": lambda r: r["sha256"][:16] + "…", "path": lambda r: r["path"],
                      "created": lambda r: r["created_at"]}, as_json=as_json)


def _tags(pairs: list[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"--tag {pair!r}: write KEY=VALUE")
        tags[key] = value
    return tags


@snapshots_app.command("create")
def snapshots_create(
    aggregation: Annotated[str, typer.Option(help="majority (ties dropped) | latest | all.")] = "majority",
    one_y_per_x: Annotated[bool, typer.Option("--one-y-per-x", help="Keep one response per prompt.")] = False,
    since: Annotated[str | None, typer.Option(help="ISO time, inclusive.")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time, exclusive.")] = None,
    model: Annotated[str | None, typer.Option(help="Only feedback on this model's responses.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Metadata KEY=VALUE (string) to match; repeatable.")] = None,
) -> None:
    """Take a snapshot now; prints it as JSON."""
    filters = {k: v for k, v in {"since": since, "until": until, "model": model}.items() if v is not None}
    filters["metadata"] = _tags(tag or [])
    body = {"filters": filters, "options": {"aggregation": aggregation, "one_y_per_x": one_y_per_x}}
    try:
        _print_json(_client().post("/v1/snapshots", json=body))
    except ApiError as exc:
        _fail(exc.message)


@snapshots_app.command("export")
def snapshots_export(
    snapshot_id: Annotated[str, typer.Argument(help="The snapshot's id.")],
    out: Annotated[Path | None, typer.Option(help="File to write; default: stdout.")] = None,
) -> None:
    """Write a snapshot's JSONL (TRL KTO rows) to a file or stdout."""
    try:
        if out is None:
            _client().stream_to(f"/v1/snapshots/{snapshot_id}/export", sys.stdout.buffer)
            return
        with open(out, "wb") as fh:
            _client().stream_to(f"/v1/snapshots/{snapshot_id}/export", fh)
    except ApiError as exc:
        _fail(exc.message)
    console.print(f"wrote {out}")


@adapters_app.command("list")
def adapters_list(
    name: Annotated[str | None, typer.Argument(help="Show the versions of this adapter.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List adapters, or the versions of one adapter."""
    if name is not None:
        adapters_versions(name, as_json=as_json)
        return
    rows = _get("/v1/adapters")
    print_rows(rows, {
        "adapter": lambda a: a["name"], "versions": lambda a: a["n_versions"],
        "latest": lambda a: f"v{a['latest_version']}",
        "aliases": lambda a: ", ".join(f"{k}=v{v}" for k, v in sorted(a["aliases"].items())),
        "updated": lambda a: a["updated_at"],
    }, as_json=as_json)


@adapters_app.command("versions")
def adapters_versions(
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    as_json: JsonOption = False,
) -> None:
    """The immutable versions of one adapter, with their aliases."""
    print_rows(_get(f"/v1/adapters/{name}/versions"), {
        "version": lambda v: f"v{v['version']}", "aliases": lambda v: ", ".join(v["aliases"]),
        "base model": lambda v: v["base_model"], "job": lambda v: v["job_id"],
        "snapshot": lambda v: v["snapshot_id"], "gate": lambda v: v.get("gate"), "created": lambda v: v["created_at"],
    }, as_json=as_json)


@adapters_app.command("history")
def adapters_history(
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    alias: Annotated[str, typer.Argument(help="Alias, e.g. champion or latest.")],
    as_json: JsonOption = False,
) -> None:
    """Every move of an alias, oldest first (rolling back is `prospect adapters promote` to an older one)."""
    print_rows(_get(f"/v1/adapters/{name}/aliases/{alias}/history"), {
        "from": lambda h: f"v{h['from_version']}" if h["from_version"] else "",
        "to": lambda h: f"v{h['to_version']}", "moved by": lambda h: h["moved_by"], "moved at": lambda h: h["moved_at"],
    }, as_json=as_json)


def _get(path: str):
    try:
        return _client().get(path)
    except ApiError as exc:
        _fail(exc.message)


class _HashingWriter:
    """Writes to ``fh`` and hashes what it wrote."""

    def __init__(self, fh) -> None:
        self.fh, self.digest = fh, hashlib.sha256()

    def write(self, chunk: bytes) -> int:
        self.digest.update(chunk)
        return self.fh.write(chunk)


def _checked_download(headers, digest: str, *, asked: str) -> int:
    """The version number from the server's headers, refused unless it is a plain number (it names a local
    file: a hostile server must not write outside the folder) and the bytes match the ETag (their sha256)."""
    raw = headers.get("x-adapter-version", "")
    if not (raw.isascii() and raw.isdecimal() and len(raw) <= 10) or int(raw) < 1:
        raise ValueError(f"the server sent an invalid X-Adapter-Version {raw[:40]!r}")
    if asked.isdecimal() and int(asked) != int(raw):
        raise ValueError(f"asked for version {asked}, the server sent version {raw}")
    etag = headers.get("etag", "").removeprefix("W/").strip('"')
    if etag != digest:
        raise ValueError(f"the download's sha256 {digest} does not match the ETag {etag[:80]!r}: corrupt or altered")
    return int(raw)


@adapters_app.command("download")
def adapters_download(
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    version: Annotated[str, typer.Argument(help="Version number or alias.")] = "latest",
    out: Annotated[Path, typer.Option(help="Folder to write into.")] = Path("."),
    extract: Annotated[bool, typer.Option(help="Unpack the .tar.gz (a <name>-v<N>/ folder).")] = True,
) -> None:
    """Download a version as .tar.gz (and unpack it): ready for PEFT or vLLM --lora-modules.

    The sha256 of the bytes must equal the ETag, or nothing is kept."""
    try:
        base_models.check_name(name, what="adapter")
    except DomainError as exc:
        _fail(exc.message)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f".{name}-download.tar.gz.part"
    try:
        with open(partial, "wb") as fh:
            writer = _HashingWriter(fh)
            resp = _client().stream_to(f"/v1/adapters/{name}/versions/{version}/download", writer)
        number = _checked_download(resp.headers, writer.digest.hexdigest(), asked=version)
    except (ApiError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        _fail(exc.message if isinstance(exc, ApiError) else str(exc))
    tarball = out / f"{name}-v{number}.tar.gz"
    partial.replace(tarball)
    if not extract:
        console.print(f"wrote {tarball} (sha256 {writer.digest.hexdigest()})")
        return
    with tarfile.open(tarball, "r:gz") as tar:
        tar.extractall(out, filter="data")  # no member may land outside ``out``
    tarball.unlink()
    console.print(f"wrote {out / tarball.name.removesuffix('.tar.gz')}")


@adapters_app.command("promote")
def adapters_promote(
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    alias: Annotated[str, typer.Argument(help="Alias to move, e.g. champion.")],
    version: Annotated[int, typer.Argument(help="Version it should point to.")],
    expected: Annotated[int | None, typer.Option(help="Move only if the alias points here now (else 409).")] = None,
) -> None:
    """Point an alias at a version (compare-and-swap with --expected); rolling back is promoting an older one."""
    body = {"version": version} if expected is None else {"version": version, "expected_version": expected}
    try:
        _print_json(_client().put(f"/v1/adapters/{name}/aliases/{alias}", json=body))
    except ApiError as exc:
        _fail(exc.message)

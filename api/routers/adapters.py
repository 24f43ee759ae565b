"""/v1/adapters: immutable adapter versions, their files and downloads, and aliases.

``{version_or_alias}`` is a version number (``3``) or an alias (``latest``,
``champion``). Downloads carry a strong ETag (the sha256 of the bytes) and
answer 304 to a matching If-None-Match.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from api.artifact_response import artifact_response, headers_only
from api.deps import ReadKey, SessionDep, SettingsDep, TrainKey
from api.http_cache import not_modified, quoted
from api.queue import commit_and_kick
from api.schemas.adapters import AdapterOut, AdapterVersionOut, AliasIn, AliasMoveOut, AliasOut
from core import adapter_aliases, adapter_publish, adapters
from core.adapter_objects import tarball_key
from core.artifact_store import get_store
from core.errors import NotFound
from core.keys import Principal

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The key lacks the scope."},
    404: {"description": "No such adapter, version, alias or file."},
    409: {"description": "expected_version is stale (compare-and-swap)."},
    422: {"description": "Invalid input; the message says how to fix it."},
}
CACHED = {304: {"description": "If-None-Match matched the ETag."}}


def moved_by(principal: Principal) -> str:
    return f"key {principal.key_id} ({principal.name})"


@router.get("", response_model=list[AdapterOut], summary="List adapters", responses=ERRORS)
def list_adapters(session: SessionDep, _: ReadKey) -> list[dict]:
    return adapters.list_adapters(session)


@router.get("/{name}/versions", response_model=list[AdapterVersionOut], summary="List versions", responses=ERRORS)
def list_versions(name: str, session: SessionDep, _: ReadKey) -> list[AdapterVersionOut]:
    by_version: dict[int, list[str]] = {}
    for alias, version in adapter_aliases.aliases_of(session, adapter_name=name).items():
        by_version.setdefault(version, []).append(alias)
    return [
        AdapterVersionOut(adapter=v.adapter_name, version=v.version, created_at=v.created_at, job_id=v.job_id,
                          snapshot_id=v.snapshot_id, base_model=v.manifest["base_model"]["name"],
                          manifest_sha256=v.manifest_sha256, aliases=by_version.get(v.version, []),
                          gate=adapter_publish.gate_verdict(v.manifest))
        for v in adapters.list_versions(session, adapter_name=name)
    ]


@router.get("/{name}/versions/{version_or_alias}", summary="A version's manifest",
            responses={**ERRORS, **CACHED})
def get_manifest(name: str, version_or_alias: str, request: Request, session: SessionDep, _: ReadKey) -> Response:
    """manifest.json: files with sha256 and size, base model, snapshot, job, hyper-parameters, metrics."""
    v = adapters.resolve_version(session, adapter_name=name, version_or_alias=version_or_alias)
    return not_modified(request, v.manifest_sha256) or JSONResponse(
        v.manifest, headers={"ETag": quoted(v.manifest_sha256), "X-Adapter-Version": str(v.version)})


@router.get("/{name}/versions/{version_or_alias}/download", summary="The version as one .tar.gz",
            responses={**ERRORS, **CACHED, 200: {"content": {"application/gzip": {}}}})
@router.head("/{name}/versions/{version_or_alias}/download", include_in_schema=False)
def download(name: str, version_or_alias: str, request: Request, session: SessionDep, settings: SettingsDep,
             _: ReadKey) -> Response:
    """Deterministic tarball of the version folder (``<name>-v<version>/...``); ETag = its sha256.

    HEAD answers the same headers without the body."""
    v = adapters.resolve_version(session, adapter_name=name, version_or_alias=version_or_alias)
    session.close()  # nothing below needs the database: a slow client must not hold a connection
    checked = v.tarball_sha256 is None  # the first download hashes the files: check they exist first
    if checked:
        adapters.require_members(settings, v)  # a clear 404, not an error half-way through the hashing
    adapters.ensure_tarball_sha256(request.app.state.engine, settings=settings, version=v)
    cached = not_modified(request, v.tarball_sha256)
    if cached is not None:
        return cached
    filename = f"{v.adapter_name}-v{v.version}.tar.gz"
    if get_store(settings).local_root is None:  # the tarball stored at publish: one object
        with contextlib.suppress(NotFound):  # not for versions copied from a local install: built below
            return artifact_response(settings, request, tarball_key(v), sha256=v.tarball_sha256, filename=filename,
                                     media_type="application/gzip", headers={"X-Adapter-Version": str(v.version)},
                                     missing="no stored tarball")
    if not checked:
        adapters.require_members(settings, v)
    return headers_only(request, StreamingResponse(adapters.iter_tarball(settings, v), media_type="application/gzip",
                                                   headers={"ETag": quoted(v.tarball_sha256),
                                                            "Content-Disposition": f'attachment; filename="{filename}"',
                                                            "X-Adapter-Version": str(v.version)}))


@router.get("/{name}/versions/{version_or_alias}/files/{filename}", summary="One file of a version",
            responses={**ERRORS, **CACHED})
@router.head("/{name}/versions/{version_or_alias}/files/{filename}", include_in_schema=False)
def get_file(name: str, version_or_alias: str, filename: str, request: Request, session: SessionDep,
             settings: SettingsDep, _: ReadKey) -> Response:
    """Only the files the manifest lists, and manifest.json; any other name is a 404. HEAD: headers only."""
    v = adapters.resolve_version(session, adapter_name=name, version_or_alias=version_or_alias)
    session.close()  # as for download
    key, sha = adapters.version_file_key(v, filename)
    return not_modified(request, sha) or artifact_response(
        settings, request, key, sha256=sha, filename=filename,
        missing=f"{filename} of {v.adapter_name} v{v.version} is missing")


# An alias a client may move: a name that starts with a letter (a number names a version); 'latest' (which moves
# only on publish) is the one name of this form refused, with a 422 that says so.
MovableAlias = Annotated[str, Path(pattern=r"^[a-z][a-z0-9._-]{0,99}$", description=(
    "The alias, starting with a letter (a number names a version); not 'latest', which moves only on publish."))]


@router.put("/{name}/aliases/{alias}", response_model=AliasOut, summary="Move an alias", responses=ERRORS)
def move_alias(name: str, alias: MovableAlias, body: AliasIn, session: SessionDep, settings: SettingsDep,
               principal: TrainKey) -> AliasOut:
    """Point the alias at ``version``; with ``expected_version`` a compare-and-swap (409 when stale).

    ``latest`` moves only on publish. Rolling back is moving an alias back.
    """
    row = adapter_aliases.move_alias(session, adapter_name=name, alias=alias, version=body.version,
                              expected_version=body.expected_version, moved_by=moved_by(principal))
    commit_and_kick(session, settings)
    return AliasOut(adapter=row.adapter_name, alias=row.alias, version=row.version, updated_at=row.updated_at)


@router.get("/{name}/aliases/{alias}/history", response_model=list[AliasMoveOut], summary="Moves of an alias",
            responses=ERRORS)
def alias_history(name: str, alias: str, session: SessionDep, _: ReadKey) -> list[AliasMoveOut]:
    return [AliasMoveOut(from_version=h.from_version, to_version=h.to_version, moved_by=h.moved_by,
                         moved_at=h.moved_at) for h in adapter_aliases.alias_history(session, adapter_name=name, alias=alias)]

"""Adapter versions: listing them and reaching their files (the registry's read side).

Publishing lives in ``core.adapter_publish``, aliases (and resolving a version or an alias) in
``core.adapter_aliases``, the tarball in ``core.adapter_tarball``, object-store uploads in
``core.adapter_objects``. The names re-exported below are the ones most callers reach through here.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.adapter_aliases import resolve_version  # noqa: F401 (adapters.*)
from core.adapter_publish import cleanup_leftovers, publish_adapter_version  # noqa: F401 (adapters.*)
from core.adapter_tarball import (  # noqa: F401 (adapters.*)
    ensure_tarball_sha256,
    iter_tarball,
    require_members,
    tarball_sha256,
)
from core.errors import NotFound
from core.models import AdapterAlias, AdapterVersion
from core.settings import Settings


def version_dir(settings: Settings, version: AdapterVersion) -> Path:
    return settings.artifacts_dir / version.path


def list_adapters(session: Session) -> list[dict]:
    """One entry per adapter name: versions count, newest version and its time, aliases."""
    rows = session.execute(
        select(AdapterVersion.adapter_name, func.count(), func.max(AdapterVersion.version),
               func.max(AdapterVersion.created_at))
        .group_by(AdapterVersion.adapter_name).order_by(AdapterVersion.adapter_name)
    ).all()
    aliases: dict[str, dict[str, int]] = {}
    for a in session.scalars(select(AdapterAlias).order_by(AdapterAlias.alias)):
        aliases.setdefault(a.adapter_name, {})[a.alias] = a.version
    return [{"name": name, "n_versions": n, "latest_version": latest, "updated_at": updated,
             "aliases": aliases.get(name, {})} for name, n, latest, updated in rows]


def list_versions(session: Session, *, adapter_name: str) -> list[AdapterVersion]:
    versions = list(session.scalars(select(AdapterVersion).where(AdapterVersion.adapter_name == adapter_name)
                                    .order_by(AdapterVersion.version)))
    if not versions:
        raise NotFound(f"no adapter named {adapter_name!r}; see GET /v1/adapters")
    return versions


def version_file_key(version: AdapterVersion, filename: str) -> tuple[str, str | None]:
    """Store key and sha256 of one file of a version: only names the manifest lists, and manifest.json."""
    if filename == "manifest.json":
        return f"{version.path}/{filename}", version.manifest_sha256
    for entry in version.manifest.get("files", []):
        if entry["name"] == filename:
            return f"{version.path}/{entry['name']}", entry["sha256"]
    raise NotFound(f"adapter {version.adapter_name!r} v{version.version} has no file {filename!r}")


def version_file(settings: Settings, version: AdapterVersion, filename: str) -> tuple[Path, str | None]:
    """Path and sha256 of one file of a version on the local store."""
    key, sha = version_file_key(version, filename)
    return settings.artifacts_dir / key, sha

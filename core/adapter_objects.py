"""Adapter versions in an S3-compatible store, where a folder cannot be renamed into place.

A publish uploads the version's files under ``adapters/<name>/<version>.<staging id>/``: the
staging id is random and recorded in the version row (``path``), so no reader reaches the
objects before that row commits, and a publish that dies first leaves only unreferenced
objects (``core.artifact_sweep`` removes them). The deterministic tarball is uploaded too, so
a download is one object to stream or to presign, and its sha256 (the ETag) is known at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterable
from pathlib import Path

from core.artifact_store import ArtifactStore
from core.models import AdapterVersion

TARBALL = ".prospect-download.tar.gz"  # not a manifest name: GET .../files/{name} never serves it


def upload_version(store: ArtifactStore, folder: Path, *, adapter_name: str, version: int) -> str:
    """Upload the files of ``folder``; returns the key prefix to record in the row."""
    prefix = f"adapters/{adapter_name}/{version}.{uuid.uuid4().hex}"
    try:
        store.put_tree(prefix, folder)
    except BaseException:
        with contextlib.suppress(Exception):  # else the orphan sweep removes them later
            store.delete_prefix(prefix)
        raise
    return prefix


def tarball_key(version: AdapterVersion) -> str:
    return f"{version.path}/{TARBALL}"


def upload_tarball(store: ArtifactStore, version: AdapterVersion, chunks: Iterable[bytes]) -> str:
    """Store the tarball's bytes next to the files; returns their sha256."""
    digest = hashlib.sha256()
    with store.writer(tarball_key(version)) as fh:
        for chunk in chunks:
            digest.update(chunk)
            fh.write(chunk)
    return digest.hexdigest()

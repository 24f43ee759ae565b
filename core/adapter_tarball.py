"""An adapter version as one deterministic ``.tar.gz``: the download, and its sha256 (the ETag).

The same version always gives the same bytes (with the same zlib), whether its files are read
from the local store, from an S3 bucket, or from the folder a publish is staging.
"""

from __future__ import annotations

import hashlib
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Engine, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from core.artifact_store import ArtifactStore, get_store
from core.errors import Conflict, NotFound
from core.models import AdapterVersion
from core.settings import Settings

_CHUNK = 1 << 20
_TAR_BLOCK = 512
_TAR_RECORD = 20 * _TAR_BLOCK


def _tar_members(version: AdapterVersion) -> list[tuple[str, int | None]]:
    members = [(f["name"], f["size"]) for f in version.manifest["files"]] + [("manifest.json", None)]
    return sorted(members)


def iter_tarball(settings: Settings, version: AdapterVersion, *, folder: Path | None = None) -> Iterator[bytes]:
    """The version folder as a deterministic .tar.gz, streamed chunk by chunk.

    Sorted names under ``<name>-v<version>/``, mtime = the version's creation
    time, uid/gid 0, mode 0644, gzip header without name or time: the same
    version always gives the same bytes (with the same zlib), hence a stable sha256.
    ``folder`` (default: the version's folder in the local store) holds the files;
    on an S3 store the files are read from the bucket.
    """
    store = get_store(settings)
    if folder is None and store.local_root is None:
        yield from _tar_chunks(version, lambda name: _open_object(store, f"{version.path}/{name}"))
        return
    folder = folder or settings.artifacts_dir / version.path

    def open_file(name: str) -> tuple[int, BinaryIO, str]:
        path = folder / name
        return path.stat().st_size, open(path, "rb"), str(path)

    yield from _tar_chunks(version, open_file)


def require_members(settings: Settings, version: AdapterVersion) -> None:
    """NotFound naming the version's files missing from the store. Checked before a download is answered:
    once the 200 is sent, a missing file can only cut the stream short."""
    store = get_store(settings)
    keys = [f"{version.path}/{name}" for name, _ in _tar_members(version)]
    if store.local_root is not None:
        missing = [k for k in keys if not (store.local_root / k).is_file()]
    else:
        missing = [k for k in keys if store.stat(k) is None]
    if missing:
        raise NotFound(f"adapter {version.adapter_name!r} v{version.version}: {len(missing)} of its files are "
                       f"missing from the artifact store ({', '.join(k.rsplit('/', 1)[1] for k in missing)})")


def _open_object(store: ArtifactStore, key: str) -> tuple[int, BinaryIO, str]:
    entry = store.stat(key)
    if entry is None:
        raise NotFound(f"artifact {key!r} is missing")
    return entry.size, store.open(key), key


def _tar_chunks(version: AdapterVersion, open_member: Callable[[str], tuple[int, BinaryIO, str]]) -> Iterator[bytes]:
    prefix = f"{version.adapter_name}-v{version.version}/"
    mtime = int(version.created_at.timestamp())
    gz = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    written = 0
    for name, size in _tar_members(version):
        actual, fh, path = open_member(name)
        if size is not None and actual != size:
            fh.close()
            raise Conflict(f"{path} changed on disk: {actual} bytes, the manifest says {size}")
        info = tarfile.TarInfo(prefix + name)
        info.size, info.mtime, info.mode, info.uname, info.gname = actual, mtime, 0o644, "", ""
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        parts = [gz.compress(header)]
        written += len(header)
        with fh:
            while chunk := fh.read(_CHUNK):
                parts.append(gz.compress(chunk))
                written += len(chunk)
                yield b"".join(parts)
                parts = []
        pad = -written % _TAR_BLOCK
        parts.append(gz.compress(b"\0" * pad))
        written += pad
        yield b"".join(parts)
    end = 2 * _TAR_BLOCK
    end += -(written + end) % _TAR_RECORD
    yield gz.compress(b"\0" * end) + gz.flush()


def ensure_tarball_sha256(engine: Engine, *, settings: Settings, version: AdapterVersion) -> str:
    """Like ``tarball_sha256``, for callers without a write transaction: the tarball is hashed outside any
    transaction, then one short UPDATE stores it (the same bytes, whoever wins a race)."""
    if version.tarball_sha256 is None:
        digest = hashlib.sha256()
        for chunk in iter_tarball(settings, version):
            digest.update(chunk)
        with engine.begin() as conn:
            conn.execute(update(AdapterVersion).where(AdapterVersion.id == version.id)
                         .values(tarball_sha256=digest.hexdigest()))
        set_committed_value(version, "tarball_sha256", digest.hexdigest())  # not dirty: nothing to flush
    return version.tarball_sha256


def tarball_sha256(session: Session, *, settings: Settings, version: AdapterVersion) -> str:
    """The download's sha256 (its ETag): computed on first use and kept on the row; caller commits."""
    if version.tarball_sha256 is None:
        digest = hashlib.sha256()
        for chunk in iter_tarball(settings, version):
            digest.update(chunk)
        version.tarball_sha256 = digest.hexdigest()
        session.flush()
    return version.tarball_sha256

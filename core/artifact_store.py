"""Where artifacts live: a local folder (the embedded default) or an S3-compatible bucket.

Keys are relative POSIX paths (``snapshots/<id>.jsonl``, ``adapters/<name>/<version>/...``,
``checkpoints/<job id>/checkpoint.pt``). ``PROSPECT_ARTIFACT_URL`` picks the backend: empty keeps
them under ``<data_dir>/artifacts`` (the layout of a single-host install); ``s3://bucket/prefix``
puts them in a bucket that API and workers on different hosts share, with
``PROSPECT_S3_ENDPOINT_URL`` for non-AWS stores and the standard AWS credential variables.

S3 has no rename: a single object is replaced atomically by a PUT, but a folder is not. Callers
therefore publish folders under a key no reader can reach until a database row names it (see
``core.adapters``), and ``core.artifact_sweep`` removes what a crash left unreferenced.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from core.errors import InvalidInput, NotFound
from core.settings import Settings

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    key: str
    size: int
    mtime: float  # seconds since the epoch
    etag: str | None = None  # an S3 object's ETag: tells two uploads of one key apart within a second


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidInput(f"invalid artifact key {key!r}")
    return key


# S3 error codes that mean the store cannot serve now, or refuses this server's credentials: not the request's fault.
STORE_DOWN_CODES = {"SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError", "Throttling"}
CREDENTIAL_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}


def store_unavailable(exc: Exception, *, denied: bool = True) -> bool:
    """Whether a botocore error means the store is unreachable, slow or failing, the server has no keys, or
    (``denied``) the store refuses them, rather than a wrong bucket, key or parameter."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        CredentialRetrievalError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = exc.response.get("Error", {}).get("Code")
        return status >= 500 or code in STORE_DOWN_CODES or (denied and code in CREDENTIAL_CODES)
    return isinstance(exc, (ConnectionError, HTTPClientError, NoCredentialsError, PartialCredentialsError,
                            CredentialRetrievalError))


def s3_errors() -> tuple[type[Exception], ...]:
    """What the S3 store's calls raise when the store fails them (for an ``except`` clause)."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, S3UploadFailedError)


def s3_cause(exc: Exception) -> Exception:
    """The botocore error behind one of ``s3_errors()``: boto3's upload_file wraps a ClientError (a 5xx as
    much as a wrong bucket) in S3UploadFailedError, which ``store_unavailable`` cannot read."""
    from boto3.exceptions import S3UploadFailedError

    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, Exception):
        return exc.__context__
    return exc


class ArtifactStore(ABC):
    """The few operations Prospect needs; every key is checked by ``check_key``."""

    #: The folder the keys are files in, for a local store (callers may hand out paths); else None.
    local_root: Path | None = None

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A buffered binary reader (iterates lines); NotFound when the key does not exist."""

    @abstractmethod
    def stat(self, key: str) -> Entry | None: ...

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Store a local file under ``key``, replacing it atomically (readers see old or new bytes)."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[Entry]:
        """Every key under the folder ``prefix`` (``prefix`` without a trailing slash)."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Delete keys; missing ones are ignored."""

    def presigned_url(self, key: str, *, filename: str, expires_s: int, head: bool = False) -> str | None:
        """A URL that fetches ``key`` (or, ``head``, answers a HEAD for it) without the API, or None when the
        store cannot sign one."""
        return None

    # --- helpers built on the above

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.writer(key) as fh:
            fh.write(data)

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        with self.open(key) as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    def open_range(self, key: str, *, start: int, end: int) -> BinaryIO:
        """A reader positioned at byte ``start`` that has at least the bytes up to ``end`` (inclusive)."""
        fh = self.open(key)
        fh.seek(start)
        return fh

    def iter_range(self, key: str, *, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` (inclusive, as in an HTTP Range) of ``key``, chunk by chunk."""
        left = end - start + 1
        with self.open_range(key, start=start, end=end) as fh:
            while left > 0 and (chunk := fh.read(min(CHUNK, left))):
                left -= len(chunk)
                yield chunk

    def get_file(self, key: str, dest: Path) -> None:
        """Copy ``key`` to the local file ``dest`` (written under a temporary name, then renamed)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with self.open(key) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def put_tree(self, prefix: str, folder: Path) -> list[str]:
        """Store every file of ``folder`` (not recursive) under ``prefix/``; returns the keys."""
        keys = []
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            self.put_file(f"{prefix}/{path.name}", path)
            keys.append(f"{prefix}/{path.name}")
        return keys

    def get_tree(self, prefix: str, folder: Path) -> None:
        """Copy every key directly under ``prefix/`` into ``folder``."""
        for entry in self.list(prefix):
            name = entry.key[len(prefix) + 1:]
            if "/" not in name:
                self.get_file(entry.key, folder / name)

    def delete_prefix(self, prefix: str) -> int:
        keys = [e.key for e in self.list(prefix)]
        self.delete(keys)
        return len(keys)

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """Write ``key`` through a local temporary file; stored only if the block ends without error."""
        fd, name = tempfile.mkstemp(prefix=".upload-", dir=self._spool())
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb", buffering=CHUNK) as fh:
                yield fh
            self.put_file(key, tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def _spool(self) -> str | None:
        return None


class LocalStore(ArtifactStore):
    """Keys are files under ``root``; a write lands under a temporary name and is renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = self.local_root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb", buffering=CHUNK)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound(f"artifact {key!r} is missing") from exc

    def stat(self, key: str) -> Entry | None:
        try:
            st = self.path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Entry(key, st.st_size, st.st_mtime) if not os.path.isdir(self.path(key)) else None

    def put_file(self, key: str, path: Path) -> None:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            shutil.copyfile(path, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        # The snapshot's historical temporary name: ``.<name>.tmp`` next to the file.
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp")
        try:
            with open(tmp, "wb", buffering=CHUNK) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[Entry]:
        base = self.path(prefix)
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in sorted(files):
                full = Path(dirpath) / name
                with _ignore_vanished():
                    st = full.stat()
                    yield Entry(full.relative_to(self.root).as_posix(), st.st_size, st.st_mtime)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        n = sum(1 for _ in self.list(prefix))
        shutil.rmtree(self.path(prefix), ignore_errors=True)
        return n


@contextmanager
def _ignore_vanished():
    try:
        yield
    except FileNotFoundError:
        pass


class _Body(io.RawIOBase):
    """botocore's StreamingBody as a raw stream, so ``io.BufferedReader`` gives lines and read(n)."""

    def __init__(self, body) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self._body.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


@dataclass(frozen=True)
class S3Options:
    """Every setting an S3 client is built with; hashable, so it keys get_store's cache too."""

    endpoint_url: str | None
    spool: Path  # where writes are staged before the upload
    connect_timeout_s: float
    read_timeout_s: float
    max_attempts: int  # per request, the first one included


def s3_options(settings: Settings) -> S3Options:
    """The one reading of the S3 settings: the artifact store and store-registered base models both use it."""
    return S3Options(endpoint_url=settings.s3_endpoint_url, spool=settings.data_path / "tmp",
                     connect_timeout_s=settings.s3_connect_timeout_s, read_timeout_s=settings.s3_read_timeout_s,
                     max_attempts=settings.s3_max_attempts)


def s3_store(settings: Settings, *, bucket: str, prefix: str) -> S3Store:
    return S3Store(bucket, prefix, s3_options(settings))


class S3Store(ArtifactStore):
    """Any S3-compatible store through boto3 (path-style addressing works with MinIO and SeaweedFS)."""

    def __init__(self, bucket: str, prefix: str, options: S3Options) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix, self.spool = bucket, prefix.strip("/"), options.spool
        self.client = boto3.client(
            "s3", endpoint_url=options.endpoint_url or None,
            # total_max_attempts counts the first request; botocore's max_attempts counts retries only.
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"total_max_attempts": options.max_attempts, "mode": "standard"},
                          connect_timeout=options.connect_timeout_s, read_timeout=options.read_timeout_s),
        )

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _unkey(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def _spool(self) -> str:
        self.spool.mkdir(parents=True, exist_ok=True)
        return str(self.spool)

    def open(self, key: str) -> BinaryIO:
        return self._get(key)

    def open_range(self, key: str, *, start: int, end: int) -> BinaryIO:
        # Only the range travels: seeking a bucket's stream would read (and discard) what comes before.
        return self._get(key, Range=f"bytes={start}-{end}")

    def _get(self, key: str, **params) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **params)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise NotFound(f"artifact {key!r} is missing") from exc
            raise
        return io.BufferedReader(_Body(obj["Body"]), CHUNK)

    def stat(self, key: str) -> Entry | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return Entry(key, head["ContentLength"], head["LastModified"].timestamp(), head.get("ETag"))

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def list(self, prefix: str) -> Iterator[Entry]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                     Prefix=self._key(prefix) + "/")
        for page in pages:
            for obj in page.get("Contents", []):
                yield Entry(self._unkey(obj["Key"]), obj["Size"], obj["LastModified"].timestamp())

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[i:i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def presigned_url(self, key: str, *, filename: str, expires_s: int, head: bool = False) -> str | None:
        # The signature covers the method: a GET URL answers a HEAD with 403, so a HEAD gets a HEAD URL.
        if head:
            return self.client.generate_presigned_url(
                "head_object", ExpiresIn=expires_s, Params={"Bucket": self.bucket, "Key": self._key(key)},
                HttpMethod="HEAD")
        return self.client.generate_presigned_url(
            "get_object", ExpiresIn=expires_s,
            Params={"Bucket": self.bucket, "Key": self._key(key),
                    "ResponseContentDisposition": f'attachment; filename="{filename}"'})


def parse_artifact_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise InvalidInput(f"PROSPECT_ARTIFACT_URL {url!r}: expected s3://bucket/prefix (or empty for local files)")
    return parsed.netloc, parsed.path.strip("/")


@lru_cache(maxsize=8)
def _cached(url: str, artifacts_dir: Path, options: S3Options) -> ArtifactStore:
    if not url:
        return LocalStore(artifacts_dir)
    bucket, prefix = parse_artifact_url(url)
    return S3Store(bucket, prefix, options)


def get_store(settings: Settings) -> ArtifactStore:
    """The store the settings name (one client per process and configuration)."""
    return _cached(settings.artifact_url, settings.artifacts_dir, s3_options(settings))


def older_than(entry: Entry, grace_s: float, now: float | None = None) -> bool:
    return (now or time.time()) - entry.mtime >= grace_s

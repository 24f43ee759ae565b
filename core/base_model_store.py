"""Base models kept in object storage: registered from an ``s3://bucket/prefix`` source, fetched by workers.

Registration streams every loaded object once to hash it (no local copy on the API host) and pins the
hashes like a folder's (``core.base_models``). A worker fetches the pinned files into
``<data_dir>/base-models/<digest>``, keyed by the sha256 over every pinned file's name and hash, so a
worker on another host needs no shared disk; the files are verified against the pinned hashes before
the folder is renamed into place, and later jobs reuse it (each job still re-hashes its local copy,
as for a folder-registered model). A changed or missing object fails the job with BaseModelTampered; a
store that cannot answer now (down, timing out, 5xx, throttling) raises Unavailable, and the job waits in
the queue for it (``worker.pipeline``).

The bucket is read with the artifact store's endpoint (``PROSPECT_S3_ENDPOINT_URL``) and the standard
AWS credentials.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlparse

from core.artifact_store import S3Store, s3_store, store_unavailable
from core.errors import InvalidInput, NotFound, Unavailable
from core.settings import Settings

log = logging.getLogger(__name__)

SCHEME = "s3://"
MAX_OBJECTS = 10_000  # objects listed under a source prefix before registration is refused


def is_store_source(source: str | None) -> bool:
    return bool(source) and source.startswith(SCHEME)


def _store(settings: Settings, source: str) -> tuple[S3Store, str]:
    """The store holding ``source``'s parent and the key of its folder (S3 keys need a folder to list)."""
    parsed = urlparse(source)
    path = parsed.path.strip("/")
    if parsed.scheme != "s3" or not parsed.netloc or not path or any(p in (".", "..") for p in path.split("/")):
        raise InvalidInput(f"{source!r}: a base model in object storage is named s3://bucket/prefix/of/the/model")
    parent, _, leaf = path.rpartition("/")
    return s3_store(settings, bucket=parsed.netloc, prefix=parent), leaf


def _listing_sha256(hashes: dict[str, str]) -> str:
    from core.base_models import (
        _listing_sha256 as listing,  # the folder pinning's digest; imported late: cycle
    )

    return listing(hashes)


def _listed(store: S3Store, leaf: str, source: str) -> list:
    """The objects under the prefix, at most MAX_OBJECTS: a model folder holds tens of files, and a prefix
    holding a whole bucket's tree would be listed (and its loaded files hashed) inside the request."""
    entries = []
    for entry in store.list(leaf):
        entries.append(entry)
        if len(entries) > MAX_OBJECTS:
            raise InvalidInput(f"{source}: more than {MAX_OBJECTS} objects under this prefix; name the folder a "
                               "model was saved to")
    return entries


def pin_store_model(settings: Settings, *, source: str):
    """Hash every loaded object under ``source`` (streamed); returns a PinnedModel whose folder is None."""
    from botocore.exceptions import BotoCoreError, ClientError

    from core.base_models import PinnedModel, is_loaded_name

    store, leaf = _store(settings, source)
    try:
        names = sorted(n for e in _listed(store, leaf, source) if is_loaded_name(n := e.key[len(leaf) + 1:]))
        weights = [n for n in names if "/" not in n and n.endswith(".safetensors")]
        if not weights:
            raise InvalidInput(f"no top-level *.safetensors under {source}: only safetensors weights are loaded")
        if "config.json" not in names:
            raise InvalidInput(f"{source} has no config.json: upload the folder a transformers model was saved to")
        files = {}
        for name in names:
            digest = hashlib.sha256()
            for chunk in store.iter_chunks(f"{leaf}/{name}"):
                digest.update(chunk)
            files[name] = digest.hexdigest()
        config = json.loads(store.read_bytes(f"{leaf}/config.json"))
    except (BotoCoreError, ClientError) as exc:
        if store_unavailable(exc, denied=False):  # another bucket may refuse our keys: the request's fault
            raise Unavailable(f"cannot read {source} now ({type(exc).__name__}: {exc}); retry later") from exc
        raise InvalidInput(f"cannot read {source}: {exc}") from exc
    except ValueError as exc:
        raise InvalidInput(f"{source}/config.json is not valid JSON: {exc}") from exc
    archs = config.get("architectures") if isinstance(config, dict) else None
    architecture = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    return PinnedModel(folder=None, sha256=_listing_sha256({n: files[n] for n in weights}), files=files,
                       architecture=architecture)


def cache_folder(settings: Settings, files: dict[str, str]) -> Path:
    return settings.data_path / "base-models" / _listing_sha256(files)


def fetch_store_model(settings: Settings, record) -> Path:
    """The local folder of a store-registered base model: the cached copy, or fetched and verified now.

    BaseModelTampered when an object is missing or its bytes differ from the pinned sha256; Unavailable when
    the store is down, slow or failing (the job is retried later)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from core.base_models import BaseModelTampered, file_sha256

    target = cache_folder(settings, record.files)
    if target.is_dir():
        log.info("base model %s: using the cached copy %s", record.name, target)
        return target
    store, leaf = _store(settings, record.source)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    log.info("base model %s: fetching %d files from %s into %s", record.name, len(record.files), record.source,
             target)
    try:
        for name in record.files:
            store.get_file(f"{leaf}/{name}", tmp / name)
        changed = sorted(n for n, sha in record.files.items() if file_sha256(tmp / n) != sha)
        if changed:
            raise BaseModelTampered(
                f"base model {record.name!r} changed in the store ({record.source}): sha256 of "
                f"{', '.join(changed)} differs from the pinned one; re-register it under a new name if the "
                "change is intended")
        try:
            os.rename(tmp, target)
        except OSError:  # another job of this worker fetched it first
            if not target.is_dir():
                raise
    except NotFound as exc:
        raise BaseModelTampered(f"base model {record.name!r} is missing from the store: {exc.message}") from exc
    except (BotoCoreError, ClientError) as exc:
        if store_unavailable(exc, denied=False):  # an outage passes: the job waits for the store, not fails
            raise Unavailable(f"base model {record.name!r}: the store cannot serve {record.source} now "
                              f"({type(exc).__name__}: {exc})") from exc
        raise BaseModelTampered(f"base model {record.name!r}: cannot fetch {record.source}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target

"""An uploaded export as named files, and files as JSON records.

A body is one JSON or JSONL document, or a zip / tar.gz / gzip of several
(the ChatGPT export is a zip; Langfuse and LangSmith exports are one file per
kind). Nothing is written to disk. Decompression counts the bytes it actually
produces and stops at ``max_uncompressed_bytes`` (413), whatever sizes the
archive's headers claim, so a zip bomb costs at most that much memory.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import PurePosixPath
from typing import Any

import orjson

from core.errors import InvalidInput, PayloadTooLarge
from core.importers.base import Malformed

MAX_MEMBERS = 10_000
CHUNK = 1 << 20
# Wrappers of API list responses: {"data": [...]} (Langfuse), {"runs": [...]} (LangSmith), ...
LIST_KEYS = ("data", "items", "records", "results", "runs", "feedback", "scores", "traces", "observations")


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"body: uncompressed export exceeds the limit of {limit} bytes",
                           details=[{"field": "body", "message": f"more than {limit} bytes uncompressed"}])


def _gunzip(data: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out, size, pending = [], 0, data
    try:
        while pending and not d.eof:
            chunk = d.decompress(pending, CHUNK)
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            out.append(chunk)
            pending = d.unconsumed_tail
    except zlib.error as exc:
        raise InvalidInput(f"body: not a valid gzip stream ({exc})") from None
    return b"".join(out)


def _keep(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return bool(parts) and not any(p.startswith((".", "__MACOSX")) for p in parts)


def _unzip(data: bytes, limit: int) -> dict[str, bytes]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in zf.infolist() if not i.is_dir() and _keep(i.filename)]
        if len(infos) > MAX_MEMBERS:
            raise InvalidInput(f"body: the archive has more than {MAX_MEMBERS} files")
        files, size = {}, 0
        for info in infos:
            parts = []
            with zf.open(info) as fh:
                while chunk := fh.read(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(limit)
                    parts.append(chunk)
            files[info.filename] = b"".join(parts)
        return files
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError) as exc:
        raise InvalidInput(f"body: not a readable zip archive ({exc})") from None


def _untar(data: bytes) -> dict[str, bytes]:
    # ``data`` is already decompressed (bounded), so the members cannot exceed the limit.
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            files = {}
            for member in tar:
                if len(files) >= MAX_MEMBERS:
                    raise InvalidInput(f"body: the archive has more than {MAX_MEMBERS} files")
                if member.isfile() and _keep(member.name):
                    fh = tar.extractfile(member)
                    if fh is not None:
                        files[member.name] = fh.read()
            return files
    except tarfile.TarError as exc:
        raise InvalidInput(f"body: not a readable tar archive ({exc})") from None


def unpack(body: bytes, *, name: str = "body", max_uncompressed_bytes: int) -> dict[str, bytes]:
    """{file name: bytes}: the members of a zip / tar(.gz) archive, or the body itself."""
    if body.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _unzip(body, max_uncompressed_bytes)
    if body.startswith(b"\x1f\x8b"):
        body = _gunzip(body, max_uncompressed_bytes)
        name = name.removesuffix(".gz")
    elif len(body) > max_uncompressed_bytes:
        raise _too_large(max_uncompressed_bytes)
    if len(body) > 262 and body[257:262] == b"ustar":
        return _untar(body)
    return {name: body}


def _records_of(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, Mapping):
        for key in LIST_KEYS:
            if isinstance(value.get(key), list) and not ("id" in value and key in ("scores", "observations")):
                return value[key]
    return [value]


def decode(name: str, data: bytes) -> list[Any]:
    """A file's records: a JSON array, an API page ({"data": [...]}), one object, or JSON lines."""
    text = data.lstrip(b"\xef\xbb\xbf").strip()
    if not text:
        return []
    if text[:1] in (b"[", b"{"):
        try:
            return _records_of(orjson.loads(text))
        except orjson.JSONDecodeError:
            if text[:1] == b"[":
                raise Malformed(f"{name}: not valid JSON") from None
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise Malformed(f"{name} line {n}: not valid JSON ({exc})",
                            details=[{"record": f"{name}:{n}", "field": "", "message": str(exc)}]) from None
    return records


def json_files(files: Mapping[str, bytes]) -> Iterator[tuple[str, list[Any]]]:
    """(name, records) for every JSON/JSONL-looking file; HTML, images and the like are ignored."""
    for name in sorted(files):
        lower = name.lower()
        if lower.endswith((".json", ".jsonl", ".ndjson")) or "." not in PurePosixPath(lower).name \
                or name == "body":
            yield name, decode(name, files[name])

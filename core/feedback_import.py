"""POST /v1/feedback/import with bounded memory: rows are decoded and written a chunk at a time.

The whole import is still one transaction (all rows or none), but only one
chunk of decoded rows, events and SQL parameters is alive at once, so memory
stays a small multiple of the body instead of ~65 bytes per body byte. The
row count is checked before anything is decoded (413 over ``max_import_rows``).
Runs in a worker thread: nothing here may touch the event loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from sqlalchemy import Engine

from core import attribution, feedback
from core.errors import DomainError, PayloadTooLarge
from core.feedback import EventInput, ImportSummary, InvalidItem, Limits

CHUNK_ROWS = 500
DEFAULT_LIMITS = Limits()


def _jsonl_lines(body: bytes) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of the non-blank lines, without copying the body into a list."""
    pos, n, size = 0, 0, len(body)
    while pos < size:
        end = body.find(b"\n", pos)
        if end < 0:
            end = size
        n += 1
        line = body[pos:end]
        pos = end + 1
        if line.strip():
            yield n, line


def _is_list(body: bytes) -> bool:
    return body.lstrip()[:1] == b"["


def count_rows(body: bytes) -> int:
    if _is_list(body):
        return -1  # known only after parsing
    return sum(1 for _ in _jsonl_lines(body))


def iter_records(body: bytes, *, max_rows: int) -> Iterator[tuple[int, Any]]:
    """Decoded rows as (line or index, value), one at a time; a bad line yields its DomainError."""
    if _is_list(body):
        try:
            values = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise feedback._bad("body", f"is not valid JSON: {exc}") from None
        if not isinstance(values, list):
            raise feedback._bad("body", "must be a JSON list of rows or JSONL")
        _check_rows(len(values), max_rows)
        values.reverse()  # pop from the end, so decoded rows are freed as they are written
        index = 0
        while values:
            index += 1
            yield index, values.pop()
        return
    _check_rows(count_rows(body), max_rows)
    for n, line in _jsonl_lines(body):
        try:
            yield n, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield n, feedback._bad(f"line {n}", f"is not valid JSON: {exc}")


def _check_rows(rows: int, max_rows: int) -> None:
    if rows > max_rows:
        raise PayloadTooLarge(f"body: {rows} rows exceeds the limit of {max_rows} rows per import; split the file")


def _chunks(records: Iterator[tuple[int, Any]], model: str | None, summary: ImportSummary, *,
            adapter: str | None = None, adapter_version: int | None = None,
            ) -> Iterator[tuple[list[EventInput | InvalidItem], list[int]]]:
    items: list[EventInput | InvalidItem] = []
    lines: list[int] = []
    for line, record in records:
        summary.rows += 1
        try:
            if isinstance(record, DomainError):
                raise record
            events = feedback._record_events(record, model)
        except DomainError as exc:
            items.append(InvalidItem(exc.message))
            lines.append(line)
        else:
            for e in events:
                e.adapter, e.adapter_version = adapter, adapter_version
            items.extend(events)
            lines.extend([line] * len(events))
        if len(items) >= CHUNK_ROWS:
            yield items, lines
            items, lines = [], []
    if items:
        yield items, lines


def import_body(
    engine: Engine,
    *,
    body: bytes,
    max_rows: int,
    limits: Limits = DEFAULT_LIMITS,
    model: str | None = None,
    api_key_id: int | None = None,
    adapter: str | None = None,
    adapter_version: int | None = None,
) -> ImportSummary:
    """Import a JSONL body (or a JSON list) in one transaction, a chunk of rows at a time.

    ``model``, ``adapter`` and ``adapter_version`` apply to every event of the import."""
    if adapter is not None or adapter_version is not None:  # a bad pair fails the import, not every row
        attribution.resolve(adapter=adapter, adapter_version=adapter_version, model=model)
    summary = ImportSummary()
    records = iter_records(body, max_rows=max_rows)
    with engine.begin() as conn:
        for items, lines in _chunks(records, model, summary, adapter=adapter, adapter_version=adapter_version):
            results = feedback._ingest_items(conn, items, limits, api_key_id)
            for line, r in zip(lines, results, strict=True):
                setattr(summary, r.status, getattr(summary, r.status) + 1)
                if r.status != "invalid":
                    summary.events += 1
                if r.error and len(summary.errors) < feedback.MAX_IMPORT_ERRORS:
                    summary.errors.append({"line": line, "status": r.status, "message": r.error})
    return summary

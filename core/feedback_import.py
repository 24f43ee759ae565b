"""POST /v1/feedback/import with bounded memory: rows are decoded and written a chunk at a time.

The whole import is still one transaction (all rows or none), but only one
chunk of decoded rows, events and SQL parameters is alive at once, so memory
stays a small multiple of the body instead of ~65 bytes per body byte. The
row count is checked before anything is decoded (413 over ``max_import_rows``).
Runs in a worker thread: nothing here may touch the event loop. Also here: how one TRL row (KTO
or paired) becomes events, shared with ``core.importers.trl``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Engine

from core import attribution
from core.errors import DomainError, PayloadTooLarge
from core.feedback import EventInput, InvalidItem, Limits, _bad, _canonical, _sha
from core.feedback_write import _ingest_items

CHUNK_ROWS = 500
MAX_IMPORT_ERRORS = 50
DEFAULT_LIMITS = Limits()


@dataclass
class ImportSummary:
    rows: int = 0
    events: int = 0
    created: int = 0
    duplicate: int = 0
    conflict: int = 0
    invalid: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


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
            raise _bad("body", f"is not valid JSON: {exc}") from None
        if not isinstance(values, list):
            raise _bad("body", "must be a JSON list of rows or JSONL")
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
            yield n, _bad(f"line {n}", f"is not valid JSON: {exc}")


def _check_rows(rows: int, max_rows: int) -> None:
    if rows > max_rows:
        raise PayloadTooLarge(f"body: {rows} rows exceeds the limit of {max_rows} rows per import; split the file")


def _prompt_fields(prompt: Any) -> dict[str, Any]:
    if isinstance(prompt, list):
        return {"messages": prompt}
    if isinstance(prompt, str):
        return {"prompt": prompt}
    raise _bad("prompt", "must be a string or a list of {role, content} messages")


def _record_events(record: Any, model: str | None) -> list[EventInput]:
    """One KTO row -> one event; one paired row -> an up and a down event. Ids derive from the content,
    so importing the same file twice stores nothing new."""
    if not isinstance(record, dict):
        raise _bad("row", "must be a JSON object")
    base_id = "import-" + _sha(_canonical(record))[:40]
    meta = {"source": "import"}
    if "completion" in record:
        extra = set(record) - {"prompt", "completion", "label"}
        if extra:
            raise _bad("row", f"unexpected field(s) {', '.join(sorted(extra))} in a KTO row")
        if not isinstance(record.get("label"), bool):
            raise _bad("label", "must be true or false in a KTO row")
        return [
            EventInput(
                response=record["completion"],
                label="up" if record["label"] else "down",
                event_id=base_id,
                model=model,
                metadata=meta,
                **_prompt_fields(record.get("prompt")),
            )
        ]
    if "chosen" in record or "rejected" in record:
        extra = set(record) - {"prompt", "chosen", "rejected"}
        if extra:
            raise _bad("row", f"unexpected field(s) {', '.join(sorted(extra))} in a paired row")
        p = _prompt_fields(record.get("prompt"))
        return [
            EventInput(response=record.get("chosen"), label="up", event_id=base_id + "-c", model=model,
                       metadata=meta, **p),
            EventInput(response=record.get("rejected"), label="down", event_id=base_id + "-r", model=model,
                       metadata=meta, **p),
        ]
    raise _bad("row", "expected {prompt, completion, label} (KTO) or {prompt, chosen, rejected} (paired)")


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
            events = _record_events(record, model)
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
            results = _ingest_items(conn, items, limits, api_key_id)
            for line, r in zip(lines, results, strict=True):
                setattr(summary, r.status, getattr(summary, r.status) + 1)
                if r.status != "invalid":
                    summary.events += 1
                if r.error and len(summary.errors) < MAX_IMPORT_ERRORS:
                    summary.errors.append({"line": line, "status": r.status, "message": r.error})
    return summary

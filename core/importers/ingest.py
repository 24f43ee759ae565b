"""Write a conversion in one transaction (or roll it back: a dry run) and report what happened.

The report: ``{rows, events, created, duplicate, conflict, invalid, skipped:
[{record, reason}], skipped_total, errors: [{record, status, message}],
dry_run}``. A dry run runs the very same inserts and rolls them back, so its
created / duplicate / conflict counts are what a real run would answer now.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from core import feedback_import, feedback_write
from core.feedback import EventInput, InvalidItem, Limits
from core.importers import convert
from core.importers.base import Conversion, Options
from core.importers.files import unpack

MAX_LISTED = 1000  # skipped records listed in a report; skipped_total counts them all
EVENT_FIELDS = {f.name for f in fields(EventInput)}
DEFAULT_LIMITS = Limits()


def to_input(event: Any) -> EventInput | InvalidItem:
    """An event dict (the batch endpoint's shape) as the domain's input; type errors become InvalidItem."""
    if not isinstance(event, Mapping):
        return InvalidItem("event: must be a JSON object")
    eid = event.get("event_id") if isinstance(event.get("event_id"), str) else None
    unknown = set(event) - EVENT_FIELDS
    if unknown:
        return InvalidItem(f"event: unexpected field(s) {', '.join(sorted(unknown))}", eid)
    missing = [k for k in ("response", "label") if k not in event]
    if missing:
        return InvalidItem(f"{missing[0]}: field required", eid)
    created = event.get("created_at")
    if created is not None:
        try:
            created = datetime.fromisoformat(str(created))
        except ValueError:
            return InvalidItem("created_at: not an ISO-8601 time", eid)
    return EventInput(**{**event, "created_at": created})


def ingest(engine: Engine, *, conversion: Conversion, limits: Limits = DEFAULT_LIMITS, api_key_id: int | None = None,
           dry_run: bool = False) -> dict[str, Any]:
    """Store the conversion's events in one transaction (rolled back when ``dry_run``); the report."""
    refs: list[str] = []
    items: list[EventInput | InvalidItem] = []
    for ref, message in conversion.invalid:
        refs.append(ref)
        items.append(InvalidItem(message))
    for ref, event in conversion.events:
        refs.append(ref)
        items.append(to_input(event))
    with engine.connect() as conn:
        tx = conn.begin()
        try:
            results = feedback_write._ingest_items(conn, items, limits, api_key_id)
        except BaseException:
            tx.rollback()
            raise
        if dry_run:
            tx.rollback()
        else:
            tx.commit()
    report: dict[str, Any] = {"rows": conversion.records, "events": 0, "created": 0, "duplicate": 0,
                              "conflict": 0, "invalid": 0, "skipped": conversion.skipped[:MAX_LISTED],
                              "skipped_total": len(conversion.skipped), "errors": [], "dry_run": dry_run}
    for ref, r in zip(refs, results, strict=True):
        report[r.status] += 1
        report["events"] += r.status != "invalid"
        if r.error and len(report["errors"]) < feedback_import.MAX_IMPORT_ERRORS:
            report["errors"].append({"record": ref, "status": r.status, "message": r.error})
    return report


def import_export(engine: Engine, *, body: bytes, source: str, options: Options, limits: Limits = DEFAULT_LIMITS,
                  api_key_id: int | None = None, dry_run: bool = False,
                  max_uncompressed_bytes: int = 64 * 1024 * 1024) -> dict[str, Any]:
    """Unpack, convert and ingest one uploaded export (a JSON/JSONL document or a zip / tar.gz)."""
    files = unpack(body, max_uncompressed_bytes=max_uncompressed_bytes)
    conversion = convert(source, files, options)
    return ingest(engine, conversion=conversion, limits=limits, api_key_id=api_key_id, dry_run=dry_run)

"""/v1/feedback: thumbs events in (single, batch, import), events, stats and TRL export out.

Handlers read the body themselves, bounded by ``max_body_bytes`` (413 from the
Content-Length or from the bytes actually received), and parse it with
orjson: invalid JSON or invalid UTF-8 is a 422, and one bad batch item does
not turn the whole batch into a 422. The blocking database work runs in the
thread pool; a 2xx is sent only after the commit. Concurrent single events are
written in group commits (``api.group_commit``), and ``POST /v1/feedback``
reaches ``post_feedback`` without the framework's routing (``api.fast_ingest``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from api import group_commit
from api.deps import IngestKey, ReadKey, RetractKey
from api.schemas import DB_INT_MAX, IsoDateTime
from api.schemas.feedback import (
    BatchOut,
    FeedbackEventIn,
    FeedbackEventOut,
    ImportOut,
    IngestOut,
    RetractOut,
    StatsOut,
    batch_body,
    json_body,
    parse_batch_item,
    parse_event,
)
from api.schemas.importers import ImportParams
from core import feedback, feedback_import, feedback_query, feedback_write, metrics
from core.errors import Conflict, IncompleteRequest, InvalidInput, PayloadTooLarge
from core.importers import ingest as importers

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The key lacks the scope."},
    413: {"description": "Body, batch or a text field over its limit."},
    422: {"description": "Invalid input; the message names the field and the reason."},
    429: {"description": "Rate limited; see Retry-After."},
    503: {"description": "Database unavailable; nothing was written; see Retry-After."},
}
Since = Annotated[IsoDateTime | None, Query(description="Inclusive lower bound on created_at (ISO 8601).")]
Until = Annotated[IsoDateTime | None, Query(description="Exclusive upper bound on created_at (ISO 8601).")]
ModelQ = Annotated[str | None, Query(max_length=200, description="Only this model (adapter version).")]


def _json(payload: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


async def _read_body(request: Request) -> bytes:
    limit = request.app.state.settings.max_body_bytes
    # From the raw scope: building request.headers cost more than the rest of this function.
    declared = next((v.decode("latin-1") for k, v in request.scope["headers"] if k == b"content-length"), None)
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput("Content-Length: must be a non-negative integer")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body: {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body: more than the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise IncompleteRequest(f"body: the client disconnected after {size} bytes") from None
    return b"".join(chunks)


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body: not valid UTF-8 JSON ({exc})", details=[{"field": "body", "message": str(exc)}])


def _limits(request: Request) -> feedback.Limits:
    return feedback.Limits.from_settings(request.app.state.settings)


@router.post(
    "",
    status_code=201,
    response_model=IngestOut,
    summary="Ingest one event",
    responses={200: {"description": "Duplicate of a stored event.", "model": IngestOut},
               409: {"description": "event_id stored with different content."}, **ERRORS},
    openapi_extra=json_body(FeedbackEventIn),
)
async def post_feedback(request: Request, principal: IngestKey) -> Response:
    """201 created; 200 when the same event_id with the same content is stored already; 409 when the
    content differs."""
    event = parse_event(_loads(await _read_body(request)))
    state, settings = request.app.state, request.app.state.settings
    try:
        if settings.ingest_group_commit:
            prepared = feedback.prepare_event(event, limits=_limits(request), api_key_id=principal.key_id)
            # SQLite has one write lock: more writers than one per process would only queue on it.
            writers = 1 if state.engine.dialect.name == "sqlite" else settings.ingest_group_writers
            committer = group_commit.for_loop(state, state.engine, max_events=settings.ingest_group_max_events,
                                              writers=writers, max_queued=settings.ingest_group_max_queued)
            result = feedback_write.raise_conflict(await committer.ingest(prepared))
        else:
            result = await run_in_threadpool(feedback_write.ingest_event, state.engine, event=event,
                                             limits=_limits(request), api_key_id=principal.key_id)
    except (Conflict, InvalidInput, PayloadTooLarge) as exc:
        metrics.feedback_ingested([("conflict" if isinstance(exc, Conflict) else "invalid", event.label)])
        raise
    metrics.feedback_ingested([(result.status, event.label)])
    return _json({"event_id": result.event_id, "status": result.status}, 201 if result.status == "created" else 200)


@router.post(
    "/batch",
    response_model=BatchOut,
    summary="Ingest a batch of events",
    responses=ERRORS,
    openapi_extra=batch_body(),
)
async def post_batch(request: Request, principal: IngestKey) -> Response:
    """One transaction for the valid items; a result per item, in order: created, duplicate, conflict or
    invalid (with the reason)."""
    settings = request.app.state.settings
    body = _loads(await _read_body(request))
    if not isinstance(body, dict) or set(body) != {"events"} or not isinstance(body["events"], list):
        raise InvalidInput("body: must be an object {\"events\": [...]}",
                           details=[{"field": "events", "message": "a list of events is required"}])
    raw = body["events"]
    if len(raw) > settings.max_batch_events:
        raise PayloadTooLarge(f"events: {len(raw)} events exceeds the limit of {settings.max_batch_events}")
    items = [parse_batch_item(obj) for obj in raw]
    results = await run_in_threadpool(
        feedback_write.ingest_batch,
        request.app.state.engine,
        items=items,
        limits=_limits(request),
        api_key_id=principal.key_id,
    )
    counts = {s: 0 for s in ("created", "duplicate", "conflict", "invalid")}
    out = []
    for i, r in enumerate(results):
        counts[r.status] += 1
        out.append({"index": i, "event_id": r.event_id, "status": r.status, "error": r.error})
    metrics.feedback_ingested((r.status, getattr(item, "label", None)) for item, r in zip(items, results, strict=True))
    return _json({**counts, "results": out})


@router.get("/stats", response_model=StatsOut, summary="Counted votes", responses=ERRORS)
async def get_stats(request: Request, _: ReadKey, since: Since = None, until: Until = None,
                    model: ModelQ = None) -> Response:
    """Up/down counts of the counted votes (after re-votes and retractions), overall and per model."""
    stats = await run_in_threadpool(
        feedback_query.feedback_stats, request.app.state.read_engine, since=since, until=until, model=model
    )
    return _json(stats)


@router.get(
    "/export",
    summary="Export counted votes as TRL KTO JSONL",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}},
                     "description": "One {prompt, completion, label: bool} object per line."}, **ERRORS},
)
async def export(request: Request, _: ReadKey, format: Literal["kto-jsonl"] = "kto-jsonl",
                 since: Since = None, until: Until = None, model: ModelQ = None) -> StreamingResponse:
    """Streamed JSONL in TRL's unpaired KTO format; prompt is the text or the messages list."""
    chunks = feedback_query.iter_kto_jsonl(request.app.state.read_engine, since=since, until=until, model=model)
    # Read the first chunk before answering, so a database outage is a 503 rather than a cut stream.
    first = await run_in_threadpool(next, chunks, None)
    body: Iterator[bytes] = iter(()) if first is None else itertools.chain([first], chunks)
    return StreamingResponse(body, media_type="application/x-ndjson")


def _check_import_body(request: Request, body: bytes) -> None:
    """The body is required; declared JSON must be a list of rows or an export's object (parsed later, a chunk
    at a time); JSONL goes as application/x-ndjson (or any other type)."""
    if not body.strip():
        raise InvalidInput("body: empty; send the rows (JSONL, or a JSON list of objects) or the export file",
                           details=[{"field": "body", "message": "required"}])
    declared = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if declared == "application/json" and body.lstrip()[:1] not in (b"[", b"{"):
        raise InvalidInput("body: Content-Type application/json but not a JSON list or object; send JSONL "
                           "as application/x-ndjson", details=[{"field": "body", "message": "not JSON"}])


@router.post(
    "/import",
    response_model=ImportOut,
    summary="Import a TRL dataset or another tool's feedback export",
    responses=ERRORS,
    openapi_extra={"requestBody": {"required": True, "description": (
        "JSONL, one object per line (or a JSON list of objects): {prompt, completion, label: bool} rows "
        "(TRL unpaired KTO) and/or {prompt, chosen, rejected} rows (each becomes an up and a down event). "
        "prompt is text or a messages list. Event ids derive from the row content, so re-importing a file "
        "stores nothing new. With ?source=openwebui|librechat|langfuse|langsmith|chatgpt: that tool's export, "
        "as JSON, JSONL or a zip / tar.gz of its files (see the README)."),
        "content": {"application/x-ndjson": {"schema": {"type": "string"}},
                    # Rows are checked one by one (a bad one is reported in errors): any list, or an export.
                    "application/json": {"schema": {"anyOf": [{"type": "array"}, {"type": "object"}]}},
                    "application/zip": {"schema": {"type": "string", "format": "binary"}},
                    "application/gzip": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def import_dataset(
    request: Request, principal: IngestKey, params: Annotated[ImportParams, Query()], model: ModelQ = None,
    adapter: Annotated[str | None, Query(max_length=200, description="The adapter that served every row.")] = None,
    adapter_version: Annotated[int | None, Query(ge=1, le=DB_INT_MAX, description="Its version (with adapter).")] = None,
) -> Response:
    """One transaction; returns counts, the skipped records and the first errors (with their line or record).
    TRL rows are decoded and written a chunk at a time in a worker thread (413 over max_import_rows)."""
    body = await _read_body(request)
    _check_import_body(request, body)
    if params.source is not None or params.dry_run:
        settings = request.app.state.settings
        report = await run_in_threadpool(
            importers.import_export, request.app.state.engine, body=body, source=params.source or "auto",
            options=params.options(settings, model), limits=_limits(request), api_key_id=principal.key_id,
            dry_run=params.dry_run, max_uncompressed_bytes=settings.max_import_uncompressed_bytes)
        return _json(report)
    summary = await run_in_threadpool(
        feedback_import.import_body,
        request.app.state.engine,
        body=body,
        max_rows=request.app.state.settings.max_import_rows,
        limits=_limits(request),
        model=model,
        api_key_id=principal.key_id,
        adapter=adapter,
        adapter_version=adapter_version,
    )
    return _json(summary.__dict__)


@router.get("/{event_id}", response_model=FeedbackEventOut, summary="One stored event", responses=ERRORS)
async def get_event(request: Request, event_id: str, _: ReadKey) -> Response:
    return _json(await run_in_threadpool(feedback_query.get_event, request.app.state.read_engine, event_id=event_id))


@router.delete("/{event_id}", response_model=RetractOut, summary="Retract an event", responses=ERRORS)
async def retract(request: Request, event_id: str, principal: RetractKey) -> Response:
    """Excludes the event's vote from stats, exports and future snapshots; the raw event is kept, marked.
    Only the key that created the event, or a train/admin key, may retract it; others get 404."""
    any_key = bool(principal.scopes & {"train", "admin"})
    return _json(await run_in_threadpool(feedback_write.retract_event, request.app.state.engine, event_id=event_id,
                                         api_key_id=principal.key_id, any_key=any_key))

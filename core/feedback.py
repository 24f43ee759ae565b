"""Feedback events: the input types, the validation rules and the keys a stored row carries.

Rules (shared with snapshots, see ``core/models.py``):

- ``feedback_events`` is append-only. An event's identity is its ``event_id``;
  its content hash is the sha256 of the canonical JSON of what the client sent
  (prompt/messages, response, label, ids, model, metadata, created_at when the
  client gave one). The same id with the same hash is a duplicate (no write);
  with another hash a conflict.
- ``votes`` holds the counted vote per (voter, pair): voter = ``user:<user_id>`` or
  ``event:<event_id>``; pair = sha256 of the canonical (prompt, response). A
  newer event of the same voter on the same pair (by ``created_at``; ties go
  to the later arrival) moves the row; retracting the event a row points at
  deletes the row. A prompt given as text and the same words given as one
  user message are different prompts.
- Every write is one transaction; the caller sees success only after commit.
  Uniqueness is enforced by the database (INSERT .. ON CONFLICT), so
  concurrent retries of one event store it once on SQLite and Postgres.

The write path (single, batch, retract) is ``core.feedback_write``, group commit
``core.feedback_group``, reads (event, stats, TRL export) ``core.feedback_query``,
import ``core.feedback_import``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson

from core import attribution
from core.errors import InvalidInput, PayloadTooLarge
from core.models import FeedbackEvent, Vote, utcnow
from core.settings import Settings

EVENTS = FeedbackEvent.__table__
VOTES = Vote.__table__

ROLES = ("system", "user", "assistant")
LABELS = {"up": True, "down": False}
ID_MAX_CHARS = 200
# Ids travel in URL paths (GET/DELETE /v1/feedback/{event_id}): keep them path-safe.
EVENT_ID_RE = re.compile(r"[A-Za-z0-9._~:@+=-]{1,200}")  # fullmatch: "$" would let "abc\n" through
# These names are routes under /v1/feedback/, so they cannot be event ids.
RESERVED_EVENT_IDS = frozenset({"batch", "stats", "export", "import"})
MAX_CLOCK_SKEW = timedelta(minutes=5)

Status = Literal["created", "duplicate", "conflict", "invalid"]


@dataclass(frozen=True, slots=True)
class Limits:
    max_text_bytes: int = 64 * 1024
    max_metadata_bytes: int = 16 * 1024
    max_metadata_depth: int = 8

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.max_text_bytes, settings.max_metadata_bytes, settings.max_metadata_depth)


@dataclass(slots=True)
class EventInput:
    """One event as the client sent it (types checked; domain rules not yet)."""

    response: str
    label: str  # "up" | "down"
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    event_id: str | None = None
    user_id: str | None = None
    conversation_id: str | None = None
    response_id: str | None = None
    model: str | None = None
    metadata: dict[str, Any] | None = None
    created_at: datetime | None = None
    adapter: str | None = None  # core.attribution: the adapter version that served the response
    adapter_version: int | None = None


@dataclass(frozen=True, slots=True)
class InvalidItem:
    """A batch item that failed validation before reaching the domain."""

    message: str
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    event_id: str | None
    status: Status
    error: str | None = None


@dataclass(slots=True)
class PreparedEvent:
    """A validated event's row and voter; ``index`` is its place in the batch being written."""

    index: int
    row: dict[str, Any]
    voter_key: str


# --------------------------------------------------------------------------- validation


def _bad(field_name: str, reason: str) -> InvalidInput:
    return InvalidInput(f"{field_name}: {reason}", details=[{"field": field_name, "message": reason}])


def _check_text(name: str, value: str, limits: Limits, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise _bad(name, "must be a string")
    if not allow_empty and not value.strip():
        raise _bad(name, "must not be empty")
    if "\x00" in value:
        raise _bad(name, "must not contain NUL (\\u0000) characters")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise _bad(name, "is not valid Unicode (lone surrogate)") from None
    if size > limits.max_text_bytes:
        raise PayloadTooLarge(
            f"{name}: {size} bytes exceeds the limit of {limits.max_text_bytes} bytes",
            details=[{"field": name, "message": f"longer than {limits.max_text_bytes} bytes"}],
        )


def _check_short(name: str, value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise _bad(name, "must be a string")
    if not value or len(value) > ID_MAX_CHARS:
        raise _bad(name, f"must be 1 to {ID_MAX_CHARS} characters")
    if "\x00" in value:
        raise _bad(name, "must not contain NUL (\\u0000) characters")


def _metadata_depth_and_nul(value: Any, max_depth: int) -> None:
    # Iterative walk: a recursive one could itself blow the stack on hostile input.
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > max_depth:
                raise _bad("metadata", f"nested deeper than {max_depth} levels")
            children = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in children:
                if isinstance(k, str) and "\x00" in k:
                    raise _bad("metadata", "keys must not contain NUL (\\u0000) characters")
                stack.append((v, depth + 1))
        elif isinstance(node, str) and "\x00" in node:
            raise _bad("metadata", "strings must not contain NUL (\\u0000) characters")


def _canonical(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _utc(value: datetime) -> datetime:
    try:
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC)
    except (OverflowError, ValueError):
        raise _bad("created_at", "is out of the representable range") from None


def prompt_key(prompt: str | list[dict[str, Any]]) -> str:
    """sha256 of the canonical prompt (text or messages)."""
    return _sha(_canonical(prompt))


def pair_key(prompt: str | list[dict[str, Any]], response: str) -> str:
    """sha256 of the canonical (prompt, response): what one vote is about."""
    return _sha(_canonical([prompt, response]))


def validate_event(event: EventInput, limits: Limits) -> None:
    """Enforce the domain rules; raises InvalidInput (422) or PayloadTooLarge (413) naming the field."""
    if event.event_id is not None:
        if not isinstance(event.event_id, str) or not EVENT_ID_RE.fullmatch(event.event_id):
            raise _bad("event_id", f"must be 1 to {ID_MAX_CHARS} characters out of A-Z a-z 0-9 . _ ~ : @ + = -")
        if event.event_id in RESERVED_EVENT_IDS:
            raise _bad("event_id", f"'{event.event_id}' is reserved")
    if event.label not in LABELS:
        raise _bad("label", "must be 'up' or 'down'")
    if event.created_at is not None and _utc(event.created_at) > utcnow() + MAX_CLOCK_SKEW:
        # A vote dated far ahead would win every later re-vote of its voter for ever.
        raise _bad("created_at", f"is more than {MAX_CLOCK_SKEW.seconds // 60} minutes in the future")
    if (event.prompt is None) == (event.messages is None):
        raise _bad("prompt", "give exactly one of 'prompt' (text) or 'messages' (a chat), not both or neither")
    if event.prompt is not None:
        _check_text("prompt", event.prompt, limits)
    else:
        msgs = event.messages
        if not isinstance(msgs, list) or not msgs:
            raise _bad("messages", "must be a non-empty list of {role, content}")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or set(m) != {"role", "content"}:
                raise _bad(f"messages.{i}", "must be an object with exactly 'role' and 'content'")
            if m["role"] not in ROLES:
                raise _bad(f"messages.{i}.role", f"must be one of {', '.join(ROLES)}")
            _check_text(f"messages.{i}.content", m["content"], limits)
        if msgs[-1]["role"] != "user":
            raise _bad("messages", "must end with a 'user' turn (the conversation before the response)")
    _check_text("response", event.response, limits)
    for name in ("user_id", "conversation_id", "response_id", "model"):
        _check_short(name, getattr(event, name))
    attribution.resolve(adapter=event.adapter, adapter_version=event.adapter_version, model=event.model)
    if event.metadata is not None:
        if not isinstance(event.metadata, dict):
            raise _bad("metadata", "must be a JSON object")
        _metadata_depth_and_nul(event.metadata, limits.max_metadata_depth)
        try:
            size = len(orjson.dumps(event.metadata))
        except TypeError as exc:
            raise _bad("metadata", f"is not serialisable as JSON ({exc})") from None
        if size > limits.max_metadata_bytes:
            raise _bad("metadata", f"{size} bytes serialised exceeds the limit of {limits.max_metadata_bytes}")


def content_hash(event: EventInput) -> str:
    """sha256 of the canonical JSON of the event's content (not its id)."""
    return _sha(
        _canonical(
            {
                "prompt": event.prompt,
                "messages": event.messages,
                "response": event.response,
                "label": event.label,
                "user_id": event.user_id,
                "conversation_id": event.conversation_id,
                "response_id": event.response_id,
                "model": event.model,
                "metadata": event.metadata,
                "created_at": _utc(event.created_at).isoformat() if event.created_at else None,
                **attribution.hash_fields(event.adapter, event.adapter_version),
            }
        )
    )


def voter_key(user_id: str | None, event_id: str) -> str:
    """Namespaced, so a user_id such as "event:x" cannot share an anonymous event's key."""
    return f"user:{user_id}" if user_id is not None else f"event:{event_id}"


def _prepare(index: int, event: EventInput, limits: Limits, api_key_id: int | None, now: datetime) -> PreparedEvent:
    validate_event(event, limits)
    # Without an id the content names the event, so a retried request is a duplicate, not a second vote.
    event_id = event.event_id or "auto-" + content_hash(event)[:40]
    prompt = event.prompt if event.prompt is not None else event.messages
    created_at = _utc(event.created_at) if event.created_at else now
    adapter, adapter_version = attribution.resolve(adapter=event.adapter, adapter_version=event.adapter_version,
                                                   model=event.model)
    row = {
        "event_id": event_id,
        "content_hash": content_hash(event),
        "prompt": event.prompt,
        "messages": event.messages,
        "prompt_key": prompt_key(prompt),
        "pair_key": pair_key(prompt, event.response),
        "response": event.response,
        "label": LABELS[event.label],
        "user_id": event.user_id,
        "conversation_id": event.conversation_id,
        "response_id": event.response_id,
        "model": event.model,
        "adapter": adapter,
        "adapter_version": adapter_version,
        "metadata": event.metadata,
        "created_at": created_at,
        "received_at": now,
        "retracted_at": None,
        "erased_at": None,
        "api_key_id": api_key_id,
    }
    voter = voter_key(event.user_id, event_id)
    return PreparedEvent(index, row, voter)


def prepare_event(event: EventInput, *, limits: Limits = Limits(), api_key_id: int | None = None) -> PreparedEvent:
    """Validate one event and build its row (no I/O); raises InvalidInput or PayloadTooLarge."""
    return _prepare(0, event, limits, api_key_id, utcnow())

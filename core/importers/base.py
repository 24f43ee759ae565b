"""What every importer shares: the conversion result, event ids, timestamps, threads, metadata.

An importer is a pure function ``convert(files, options) -> Conversion``: it
reads the decoded records of an export and returns event dicts in the shape
``POST /v1/feedback/batch`` accepts, plus the records it skipped and why. It
raises ``Malformed`` (a 422) when a record does not follow the source's own
schema; a record that follows it but carries no usable thumbs is skipped.

Event ids are ``<source>:<source record id>:<digest of the event>``: importing
the same export twice stores nothing new, and a record whose rating changed
since the last import becomes a new event of the same voter on the same
(prompt, response), i.e. a re-vote. Where the source names no user, the source
record is the voter (``user_id = <source>-record:<id>``), so that a changed
rating replaces its vote instead of counting twice.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from core.errors import InvalidInput

SAFE_ID_RE = re.compile(r"^[A-Za-z0-9._~:@+=-]{1,120}$")
MAX_THREAD_DEPTH = 10_000


class Malformed(InvalidInput):
    """A record that does not follow the source's schema: the whole import is refused (422)."""


class Skip(Exception):
    """A well-formed record that yields no event; ``reason`` goes to the report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Options:
    """Source options (query parameters of the endpoint, flags of the CLI)."""

    model: str | None = None  # fallback when the source names no model
    score_names: tuple[str, ...] = ("user-feedback", "user_feedback", "feedback", "thumbs")
    feedback_keys: tuple[str, ...] = ("user_score", "user-score", "user_feedback", "user-feedback", "feedback",
                                      "thumbs")
    numeric_threshold: float = 0.0  # NUMERIC scores: up when value > threshold, else down
    categorical_up: tuple[str, ...] = ("up", "thumbs_up", "thumbsup", "positive", "good", "helpful", "yes", "true",
                                       "1")
    categorical_down: tuple[str, ...] = ("down", "thumbs_down", "thumbsdown", "negative", "bad", "not_helpful",
                                         "unhelpful", "no", "false", "0", "-1")
    max_metadata_bytes: int = 16 * 1024
    max_metadata_depth: int = 8

    def categorical_label(self, value: Any) -> str | None:
        key = str(value).strip().lower()
        if key in {v.lower() for v in self.categorical_up}:
            return "up"
        if key in {v.lower() for v in self.categorical_down}:
            return "down"
        return None


@dataclass
class Conversion:
    """Events (each with the record it came from) and skipped records, in export order."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (record, message): reported, not fatal
    records: int = 0  # candidate feedback records read

    def skip(self, record: str | int, reason: str) -> None:
        self.skipped.append({"record": record, "reason": reason})


def each_record(conv: Conversion, source: str, items: list[tuple[str, Any]],
                one: Callable[[str, Any], dict[str, Any] | None], id_field: str = "id") -> Conversion:
    """Run ``one(ref, record)`` over (ref, record) pairs, collecting events and Skip reasons; a skipped
    record is named ``source:<its id>`` when it has one, else by file and index."""
    for ref, rec in items:
        conv.records += 1
        rid = opt_str(rec.get(id_field)) if isinstance(rec, Mapping) else None
        name = f"{source}:{rid}" if rid else ref
        try:
            event = one(ref, rec)
        except Skip as exc:
            conv.skip(name, exc.reason)
            continue
        if event is not None:
            conv.events.append((name, event))
    return conv


# --------------------------------------------------------------------------- fields


def require(rec: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """The field, or Malformed naming the record and the field."""
    value = rec.get(name) if isinstance(rec, Mapping) else None
    if not isinstance(value, kind) or (isinstance(value, str) and not value):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        found = "missing" if value is None else f"a {type(value).__name__}"
        raise Malformed(f"{where}: field '{name}' must be a non-empty {expected}, found {found}",
                        details=[{"record": where, "field": name, "message": f"expected {expected}"}])
    return value


def as_object(rec: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(rec, Mapping):
        raise Malformed(f"{where}: must be a JSON object, found {type(rec).__name__}",
                        details=[{"record": where, "field": "", "message": "expected an object"}])
    return rec


def opt_str(value: Any) -> str | None:
    """A short id-like field as a string (numbers too), or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | str):
        text = str(value)
        return text if text else None
    return None


def timestamp(value: Any) -> str | None:
    """ISO-8601 (UTC) from epoch seconds/milliseconds, an ISO string or Mongo's {"$date": ...}; else None."""
    try:
        if isinstance(value, Mapping) and "$date" in value:
            value = value["$date"]
            if isinstance(value, Mapping) and "$numberLong" in value:
                value = int(value["$numberLong"]) / 1000
            elif isinstance(value, int | float):
                value = value / 1000
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, int | float):
            seconds = value / 1000 if value > 1e11 else value  # 13 digits: milliseconds
            return datetime.fromtimestamp(seconds, UTC).isoformat()
        if isinstance(value, str) and value:
            parsed = datetime.fromisoformat(value)
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    except (ValueError, TypeError, OverflowError, OSError):
        return None
    return None


# --------------------------------------------------------------------------- threads


def walk_thread(nodes: Mapping[str, Any], leaf: str, parent_of: Callable[[Any], str | None]) -> list[Any]:
    """The chain root..leaf following parent links; Skip when a parent is absent or the links loop."""
    chain, seen, cur = [], set(), leaf
    while cur is not None:
        if cur in seen or len(chain) > MAX_THREAD_DEPTH:
            raise Skip(f"the parent links loop at message '{cur}'")
        seen.add(cur)
        node = nodes.get(cur)
        if node is None:
            raise Skip(f"message '{cur}' is missing from the export (the conversation before "
                       f"'{leaf}' is incomplete)")
        chain.append(node)
        cur = parent_of(node)
    chain.reverse()
    return chain


def prompt_messages(turns: list[dict[str, str]]) -> list[dict[str, str]]:
    """Keep non-empty system/user/assistant turns; the prompt must end with the user's turn."""
    kept = [t for t in turns if t["role"] in ("system", "user", "assistant") and t["content"].strip()]
    if not kept or kept[-1]["role"] != "user":
        last = kept[-1]["role"] if kept else "nothing"
        raise Skip(f"the conversation before the response ends with {last}, not a user turn")
    return kept


# --------------------------------------------------------------------------- metadata and ids


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of containers, counted no further than ``limit`` + 1 (hostile input is deep)."""
    if limit < 0 or not isinstance(value, Mapping | list):
        return 0
    children = value.values() if isinstance(value, Mapping) else value
    return 1 + max((_depth(v, limit - 1) for v in children), default=0)


def fit_metadata(base: dict[str, Any], extra: Mapping[str, Any], options: Options) -> dict[str, Any]:
    """``base`` plus the non-empty ``extra`` fields that fit the metadata limits; the largest go first,
    and their names are listed under ``dropped``."""
    meta = dict(base)
    items = [(k, v) for k, v in extra.items() if v not in (None, "", [], {})]
    dropped = []
    for k, v in items:
        if 1 + _depth(v, options.max_metadata_depth) > options.max_metadata_depth:
            dropped.append(k)
        else:
            meta[k] = v

    def size(m: dict[str, Any]) -> int:
        return len(orjson.dumps(m))

    while size(meta) > options.max_metadata_bytes - 200 and len(meta) > len(base):
        largest = max((k for k in meta if k not in base), key=lambda k: len(orjson.dumps(meta[k])))
        del meta[largest]
        dropped.append(largest)
    if dropped:
        meta["dropped"] = sorted(dropped)
    return meta


def safe_id(value: str) -> str:
    """A source id usable inside an event id (path-safe, bounded); otherwise its hash."""
    return value if SAFE_ID_RE.match(value) else "h" + hashlib.sha256(value.encode()).hexdigest()[:32]


def make_event(source: str, record_id: str, **fields: Any) -> dict[str, Any]:
    """An event dict with ``event_id = source:record:digest``; the digest covers the content, so a
    re-import is a duplicate and a changed record is a new event (a re-vote)."""
    event = {k: v for k, v in fields.items() if v is not None}
    if event.get("user_id") is None:
        event["user_id"] = f"{source}-record:{record_id}"[:200]
    digest = hashlib.sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    return {"event_id": f"{source}:{safe_id(record_id)}:{digest}", **event}

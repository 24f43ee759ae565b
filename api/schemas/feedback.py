"""Request and response models of /v1/feedback.

The models check JSON types and closed vocabularies (label, roles); the domain
rules that need settings (sizes, depth) or span fields (exactly one of
prompt/messages, last turn is the user's) live in ``core.feedback`` so that
imports obey them too.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.schemas import EVENT_ID_PATTERN, NO_NUL, PATTERN_RULES, TEXT_PATTERN
from core.errors import InvalidInput
from core.isotime import IsoDateTime

# user_id, conversation_id, response_id, model (core.feedback._check_short).
ShortText = Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL)]
from core.feedback import EventInput, InvalidItem


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(pattern=TEXT_PATTERN)


class FeedbackEventIn(BaseModel):
    """One thumbs event. Give exactly one of ``prompt`` or ``messages``."""

    model_config = ConfigDict(extra="forbid")

    event_id: str | None = Field(
        None, pattern=EVENT_ID_PATTERN, description="Client idempotency key (1-200 chars of A-Z a-z 0-9 . _ ~ : @ + = -)."
    )
    prompt: str | None = Field(None, pattern=TEXT_PATTERN, description="The prompt as text.")
    messages: list[MessageIn] | None = Field(
        None, min_length=1, description="The conversation before the response, ending with a user turn."
    )
    response: str = Field(pattern=TEXT_PATTERN, description="The model's response that was judged.")
    label: Literal["up", "down"]
    user_id: ShortText | None = None
    conversation_id: ShortText | None = None
    response_id: ShortText | None = None
    model: ShortText | None = Field(None, description="The model or adapter version that produced the response; "
                              "'<adapter>-v<n>' is read as adapter and adapter_version when both are absent.")
    adapter: str | None = Field(None, description="The adapter that served the response (with adapter_version).")
    adapter_version: int | None = Field(None, ge=1, strict=True, description="Its version number.")
    metadata: dict[str, Any] | None = None
    created_at: IsoDateTime | None = Field(None, description="When the user voted (ISO 8601); default: when received.")

    def to_domain(self) -> EventInput:
        return EventInput(
            response=self.response,
            label=self.label,
            prompt=self.prompt,
            messages=[m.model_dump() for m in self.messages] if self.messages is not None else None,
            event_id=self.event_id,
            user_id=self.user_id,
            conversation_id=self.conversation_id,
            response_id=self.response_id,
            model=self.model,
            metadata=self.metadata,
            created_at=self.created_at,
            adapter=self.adapter,
            adapter_version=self.adapter_version,
        )


class BatchIn(BaseModel):
    events: list[FeedbackEventIn]


class IngestOut(BaseModel):
    event_id: str
    status: Literal["created", "duplicate"]


class BatchItemOut(BaseModel):
    index: int
    event_id: str | None
    status: Literal["created", "duplicate", "conflict", "invalid"]
    error: str | None = None


class BatchOut(BaseModel):
    created: int
    duplicate: int
    conflict: int
    invalid: int
    results: list[BatchItemOut]


class FeedbackEventOut(BaseModel):
    event_id: str
    content_hash: str
    prompt: str | None
    messages: list[MessageIn] | None
    response: str
    label: Literal["up", "down"]
    user_id: str | None
    conversation_id: str | None
    response_id: str | None
    model: str | None
    adapter: str | None
    adapter_version: int | None
    metadata: dict[str, Any] | None
    created_at: datetime
    received_at: datetime
    retracted_at: datetime | None
    erased_at: datetime | None = Field(None, description="When an admin erased the user's feedback (texts gone).")
    counted: bool = Field(description="Whether this event is its voter's counted vote now.")


class RetractOut(BaseModel):
    event_id: str
    status: Literal["retracted"]
    retracted_at: datetime


class ModelStats(BaseModel):
    model: str | None
    up: int
    down: int
    total: int


class StatsOut(BaseModel):
    up: int
    down: int
    total: int
    by_model: list[ModelStats]


class ImportOut(BaseModel):
    rows: int = Field(description="Records read from the body.")
    events: int = Field(description="Events they became (a paired row makes two).")
    created: int
    duplicate: int
    conflict: int
    invalid: int
    errors: list[dict[str, Any]] = Field(description="The first failures, with their line or record.")
    skipped: list[dict[str, Any]] = Field(default_factory=list, description=(
        "Source records that carry no usable thumbs: {record, reason} (the first 1,000)."))
    skipped_total: int = 0
    dry_run: bool = False


def validation_message(exc: ValidationError, prefix: str = "") -> tuple[str, list[dict[str, str]]]:
    """'field: reason' for the client, plus the per-field list."""
    details = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        pattern = (err.get("ctx") or {}).get("pattern")
        details.append({"field": prefix + loc, "message": PATTERN_RULES.get(pattern) or err.get("msg", "invalid")})
    return "; ".join(f"{d['field'] or 'body'}: {d['message']}" for d in details[:5]), details


def parse_event(obj: Any) -> EventInput:
    """Validate one decoded JSON value; raises InvalidInput naming the fields."""
    try:
        return FeedbackEventIn.model_validate(obj).to_domain()
    except ValidationError as exc:
        message, details = validation_message(exc)
        raise InvalidInput(f"invalid event: {message}", details=details) from None


def parse_batch_item(obj: Any) -> EventInput | InvalidItem:
    try:
        return FeedbackEventIn.model_validate(obj).to_domain()
    except ValidationError as exc:
        eid = obj.get("event_id") if isinstance(obj, dict) else None
        return InvalidItem(validation_message(exc)[0], eid if isinstance(eid, str) else None)


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its $defs inlined, to embed in openapi_extra."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def json_body(model: type[BaseModel], description: str = "") -> dict[str, Any]:
    """openapi_extra documenting a JSON body the endpoint reads itself (to bound and parse it)."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": inline_refs(model.model_json_schema())}},
        }
    }


def batch_body() -> dict[str, Any]:
    """openapi_extra of POST /v1/feedback/batch. Each item is checked on its own: one that is not a valid
    event comes back ``invalid`` in ``results`` instead of refusing the batch, so the schema types an item as
    an event or, failing that, any value (a generated client still sees the event)."""
    extra = json_body(BatchIn, "Up to max_batch_events events; each is validated on its own: an item that is "
                      "not a valid event is answered `invalid` in results, the others are stored.")
    schema = extra["requestBody"]["content"]["application/json"]["schema"]
    event = schema["properties"]["events"]["items"]
    schema["properties"]["events"]["items"] = {"anyOf": [event, {"description": "Any other value: `invalid`."}]}
    schema["additionalProperties"] = False
    return extra

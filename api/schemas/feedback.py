"""Request and response models of /v1/feedback.

The models check JSON types and closed vocabularies (label, roles); the domain
rules that need settings (sizes, depth) or span fields (exactly one of
prompt/messages, last turn is the user's) live in ``core.feedback`` so that
imports obey them too.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import InvalidInput
from core.feedback import EventInput, InvalidItem


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class FeedbackEventIn(BaseModel):
    """One thumbs event. Give exactly one of ``prompt`` or ``messages``."""

    model_config = ConfigDict(extra="forbid")

    event_id: str | None = Field(
        None, description="Client idempotency key (1-200 chars of A-Z a-z 0-9 . _ ~ : @ + = -)."
    )
    prompt: str | None = Field(None, description="The prompt as text.")
    messages: list[MessageIn] | None = Field(
        None, description="The conversation before the response, ending with a user turn."
    )
    response: str = Field(description="The model's response that was judged.")
    label: Literal["up", "down"]
    user_id: str | None = None
    conversation_id: str | None = None
    response_id: str | None = None
    model: str | None = Field(None, description="The model or adapter version that produced the response; "
                              "'<adapter>-v<n>' is read as adapter and adapter_version when both are absent.")
    adapter: str | None = Field(None, description="The adapter that served the response (with adapter_version).")
    adapter_version: int | None = Field(None, ge=1, strict=True, description="Its version number.")
    metadata: dict[str, Any] | None = None
    created_at: datetime | None = Field(None, description="When the user voted; default: when received.")

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
        details.append({"field": prefix + loc, "message": err.get("msg", "invalid")})
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


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
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
            "content": {"application/json": {"schema": _inline_refs(model.model_json_schema())}},
        }
    }

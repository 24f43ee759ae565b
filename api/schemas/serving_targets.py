"""Request and response models of /v1/serving-targets."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import NAME_PATTERN, NO_NUL

# An absolute http(s) URL: a host name, IPv4 or bracketed IPv6 address with an optional port, then any path
# (core.serving_targets refuses a bracketed host that is no IPv6 address with a 422).
URL_PATTERN = (r"^https?://([^\s/?#\[\]@\x00]+@)?(\[[0-9A-Fa-f:.]+\]|[^\s/?#\[\]@\x00:]+)(:[0-9]{1,5})?"
               r"([/?#][^\s\x00]*)?$")


class TargetIn(BaseModel):
    # A vllm target needs adapter_root (JSON Schema's if/then says so to generated clients).
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "if": {"properties": {"kind": {"const": "vllm"}}, "required": ["kind"]},
        "then": {"required": ["adapter_root"], "properties": {"adapter_root": {"type": "string", "minLength": 1}}},
    })

    name: str = Field(max_length=100, pattern=NAME_PATTERN)
    kind: Literal["webhook", "vllm"]
    url: str = Field(max_length=1000, pattern=URL_PATTERN,
                     description="webhook: where events are POSTed; vllm: the server's base URL (http or https).")
    adapter: str = Field(max_length=100, pattern=NAME_PATTERN,
                         description="The adapter whose events this target hears.")
    secret: str | None = Field(None, min_length=16, max_length=200, pattern=NO_NUL, description="HMAC key of the signature header; "
                               "omit to get a generated one (shown once).")
    adapter_root: str | None = Field(None, max_length=1000, pattern=NO_NUL, description="vllm: the folder on the vLLM host "
                                     "holding <adapter>/v<version> (each a version's unpacked download).")
    max_lora_rank: int | None = Field(None, description="vllm: the server's --max-lora-rank (one of vLLM's "
                                      "1, 8, 16, 32, 64, 128, 256, 320, 512; default 16, vLLM's default). "
                                      "Versions of a higher rank are refused for this target.")


class TargetOut(BaseModel):
    id: str
    name: str
    kind: str
    url: str
    adapter: str
    adapter_root: str | None
    max_lora_rank: int | None
    loaded: list[int] = Field(description="vllm: the versions the server was told to hold.")
    created_at: datetime
    secret: str | None = Field(None, description="Only in the answer to the POST that created it.")


class DeliveryOut(BaseModel):
    delivery_id: str
    event: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]

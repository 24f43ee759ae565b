"""Request and response models of /v1/base-models."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import NAME_PATTERN


class BaseModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=100, pattern=NAME_PATTERN,
                      description="Unique name, e.g. 'llama-3-8b-instruct' (lower case).")
    source: str = Field(max_length=1000, description="A model folder on the server (config.json + weights), or "
                        "s3://bucket/prefix: the folder's files in object storage, which workers fetch, verify "
                        "and cache.")
    revision: str | None = Field(None, max_length=200, description="Recorded as given (hub models: CLI only).")


class BaseModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    source: str
    revision: str | None
    path: str
    sha256: str = Field(description="sha256 of the top-level safetensors (`sha256sum *.safetensors | sha256sum`).")
    files: dict[str, str] | None = Field(
        description="sha256 of every file a job loads (weights, config, tokenizer, templates); jobs refuse to "
        "train if one changed, vanished or appeared. None: registered before files were pinned (weights only)."
    )
    architecture: str | None
    created_by_key_id: int | None = Field(description="The API key that registered it (None: the CLI or bootstrap).")
    status: Literal["ready", "preparing", "failed"] = Field(
        "ready", description="preparing: the bundled model while the worker converts it (jobs for it wait "
        "queued); failed: the conversion failed (error says why; its jobs failed with it).")
    error: str | None = None
    created_at: datetime

"""Request and response models of /v1/base-models."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class BaseModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=100, description="Unique name, e.g. 'llama-3-8b-instruct' (lower case).")
    source: str = Field(max_length=1000, description="A model folder on the server (config.json + weights).")
    revision: str | None = Field(None, max_length=200, description="Recorded as given (hub models: CLI only).")


class BaseModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    source: str
    revision: str | None
    path: str
    sha256: str = Field(description="sha256 of the weight files; jobs refuse to train if it changed.")
    architecture: str | None
    created_at: datetime

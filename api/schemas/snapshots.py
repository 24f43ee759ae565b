"""Request and response models of /v1/snapshots."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.snapshots import SnapshotFilters, SnapshotOptions


class SnapshotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filters: SnapshotFilters = Field(default_factory=SnapshotFilters)
    options: SnapshotOptions = Field(default_factory=SnapshotOptions)


class SnapshotOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    status: str
    content_hash: str | None = Field(description="sha256 of the exported JSONL bytes.")
    filters: dict[str, Any]
    options: dict[str, Any]
    cutoff: datetime = Field(description="Votes received after this instant are not included.")
    n_rows: int
    n_desirable: int
    n_undesirable: int
    redacted_at: datetime | None = Field(
        None, description="When a user's erasure rewrote the file (content_hash and counts are the new file's)."
    )
    created_by_key_id: int | None = Field(None, description="The API key that took it (None: a job took it).")
    created_at: datetime

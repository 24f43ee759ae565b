"""Request and response models of /v1/adapters."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import DB_INT_MAX


class AdapterOut(BaseModel):
    name: str
    n_versions: int
    latest_version: int
    updated_at: datetime
    aliases: dict[str, int]


class AdapterVersionOut(BaseModel):
    adapter: str
    version: int
    created_at: datetime
    job_id: str | None
    snapshot_id: str | None
    base_model: str
    manifest_sha256: str
    aliases: list[str] = Field(description="Aliases that point to this version now.")
    gate: str | None = Field(None, description="The held-out gate's verdict: passed, or skipped (force_publish; "
                             "the manifest says whether it would have passed); null when no job published it.")


class AliasIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=DB_INT_MAX, description="The version the alias should point to.")
    expected_version: int | None = Field(
        None, ge=1, le=DB_INT_MAX, description="Compare-and-swap: move only if the alias points here now (409 otherwise); "
        "omit to move unconditionally (and to create the alias)."
    )


class AliasOut(BaseModel):
    adapter: str
    alias: str
    version: int
    updated_at: datetime


class AliasMoveOut(BaseModel):
    from_version: int | None
    to_version: int
    moved_by: str | None
    moved_at: datetime

"""Response model of DELETE /v1/users/{user_id}/feedback."""

from __future__ import annotations

from pydantic import BaseModel, Field


class RedactedSnapshot(BaseModel):
    snapshot_id: str
    rows_removed: int


class TrainedVersion(BaseModel):
    adapter: str
    version: int
    snapshot_id: str


class ErasureOut(BaseModel):
    user_id: str
    events: int = Field(description="The user's events (erased now or before); their ids stay, so retries dedupe.")
    events_erased: int = Field(description="Events whose texts and metadata were erased by this call.")
    votes_removed: int = Field(description="Counted votes removed: stats, exports and snapshots no longer see them.")
    snapshots_redacted: list[RedactedSnapshot] = Field(description="Snapshot files rewritten without their rows.")
    snapshot_rows_removed: int
    adapter_versions: list[TrainedVersion] = Field(
        description="Versions trained on a redacted snapshot: retrain (and retire them) to remove the rows' influence."
    )

"""Request and response models of /v1/policies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import DB_INT_MAX, NAME_PATTERN
from api.schemas.jobs import ConfigOverrides
from api.schemas.live import RolloutOptions
from core.snapshots import SnapshotFilters, SnapshotOptions


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(max_length=100, pattern=NAME_PATTERN,
                         description="The adapter the policy trains (one live policy per adapter).")
    base_model: str = Field(max_length=100, pattern=NAME_PATTERN,
                            description="A registered base model (GET /v1/base-models).")
    min_new_feedback: int = Field(100, ge=1, le=DB_INT_MAX, description="New counted votes since the last job before a new one.")
    min_interval_minutes: int = Field(60, ge=1, le=DB_INT_MAX, description="Minutes at least between two jobs of this policy.")
    config: ConfigOverrides = Field(default_factory=dict, description="Alignment config overrides for its jobs.")
    snapshot_options: SnapshotOptions = Field(default_factory=SnapshotOptions)
    snapshot_filters: SnapshotFilters = Field(
        default_factory=SnapshotFilters, description="Which votes its snapshots take: model, metadata, since, until."
    )
    rollout: RolloutOptions | None = Field(
        None, description="Start a rollout of each published version against the champion "
        "(see POST /v1/adapters/{name}/rollouts); absent fields take their defaults.")


class PolicyOut(BaseModel):
    id: str
    adapter: str
    base_model: str
    min_new_feedback: int
    min_interval_minutes: int
    config: dict[str, Any]
    snapshot_options: dict[str, Any]
    snapshot_filters: dict[str, Any]
    rollout: dict[str, Any] | None
    enabled: bool
    last_job_id: str | None
    last_triggered_at: datetime | None
    created_by_key_id: int | None = Field(None, description="The API key that created it.")
    created_at: datetime

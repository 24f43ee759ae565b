"""Request and response models of /v1/jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import NAME_PATTERN

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(description="Adapter name; each published version is <adapter> vN.", max_length=100,
                         pattern=NAME_PATTERN)
    base_model: str = Field(description="A registered base model name (GET /v1/base-models).", max_length=100,
                            pattern=NAME_PATTERN)
    snapshot_id: str | None = Field(None, description="Train on this snapshot; default: take a new one.")
    config: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the alignment config (KTOConfig fields), e.g. {\"beta\": 0.2}."
    )
    snapshot_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the snapshot taken when snapshot_id is absent "
        "(aggregation: majority|latest|all, one_y_per_x)."
    )
    snapshot_filters: dict[str, Any] = Field(
        default_factory=dict, description="Which votes the snapshot takes when snapshot_id is absent, as in "
        "POST /v1/snapshots: model, metadata (tags), since, until."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Pipeline options: heldout_fraction (0.2), gate_min_loss_improvement "
        "(0.01), gate_min_reward_margin (0.0), gate_min_heldout_per_class (10); thresholds must be >= 0; "
        "base_model_name_or_path (a hub id or folder written to the adapter's adapter_config.json)."
    )
    force_publish: bool = Field(False, description="Publish even when the held-out gate would refuse.")


class Progress(BaseModel):
    step: int
    total: int


class ClassCounts(BaseModel):
    desirable: int | None
    undesirable: int | None


class CountsBySet(BaseModel):
    snapshot: ClassCounts = Field(description="Labels in the job's snapshot.")
    train: ClassCounts | None = Field(description="Labels of the rows trained on (known once the job evaluated).")
    heldout: ClassCounts | None = Field(description="Labels of the held-out rows the gate used.")


class AdapterVersionRef(BaseModel):
    id: int
    adapter: str
    version: int


class JobOut(BaseModel):
    id: str
    created_by_key_id: int | None = Field(None, description="The API key that started it (None: a policy).")
    adapter: str
    base_model: str
    status: JobStatus
    progress: Progress
    phase: str | None = Field(None, description="What a running job does now: preparing, loading model, "
                              "reference pass N/M (rows), training, evaluating, publishing; null otherwise.")
    metrics: dict[str, Any] | None = Field(description="The latest training step's metrics.")
    class_counts: ClassCounts = Field(description="Labels in the snapshot (as counts.snapshot; kept for clients "
                                      "that read it).")
    counts: CountsBySet = Field(description="Labels by set: the snapshot, its training split, its held-out split.")
    class_weights: dict[str, Any] | None = Field(description="lambda_D, lambda_U used, and the reason.")
    eval_metrics: dict[str, Any] | None = Field(description="Held-out figures of adapter and reference; the gate.")
    timings: dict[str, float] | None = Field(
        None, description="Seconds per phase of the latest attempt: queue_wait, snapshot, split, load, "
        "reference_pass, train, evaluate, publish, total.")
    snapshot_id: str | None
    policy_id: str | None
    adapter_version: AdapterVersionRef | None
    config: dict[str, Any]
    snapshot_options: dict[str, Any]
    snapshot_filters: dict[str, Any]
    options: dict[str, Any]
    force_publish: bool
    cancel_requested: bool
    error: str | None
    attempts: int
    max_attempts: int
    resumed_from_step: int | None
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None


class JobListOut(BaseModel):
    jobs: list[JobOut]


class JobMetricOut(BaseModel):
    step: int
    attempt: int
    metrics: dict[str, Any]
    created_at: datetime


class JobMetricsOut(BaseModel):
    job_id: str
    steps: list[JobMetricOut]


class PublishRefusedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=1000, description="Why it goes out although the gate refused it.")

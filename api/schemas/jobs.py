"""Request and response models of /v1/jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, WithJsonSchema

from alignment.config import KTOConfig
from api.schemas import NAME_PATTERN
from api.schemas.feedback import inline_refs
from core.snapshots import SnapshotFilters, SnapshotOptions

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def keys_of(schema: dict[str, Any]) -> dict[str, Any]:
    """An object schema whose keys are all optional and no others are allowed (the server refuses unknown
    keys), so the OpenAPI schema names every key a body may carry. Request bodies keep them as dicts."""
    schema = inline_refs(schema)
    properties = {k: {n: v for n, v in p.items() if n != "title"} for k, p in schema["properties"].items()}
    return {"type": "object", "properties": properties, "additionalProperties": False}


class JobOptionsSchema(BaseModel):
    """The keys of ``options`` and their ranges (core.jobs.JobOptions checks them)."""

    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="Share of each class's rows held out for the gate.")
    gate_min_loss_improvement: float = Field(0.01, ge=0)
    gate_min_reward_margin: float = Field(0.0, ge=0)
    gate_min_heldout_per_class: int = Field(10, ge=2)
    base_model_name_or_path: str | None = Field(None, min_length=1, max_length=1000,
                                                description="A hub id or a folder (printable characters).")


# The KTOConfig fields with their types; their ranges are KTOConfig's checks (a 422 naming the key).
CONFIG_SCHEMA = keys_of(TypeAdapter(KTOConfig).json_schema())
ConfigOverrides = Annotated[dict[str, Any], WithJsonSchema(CONFIG_SCHEMA)]
JobOptionsIn = Annotated[dict[str, Any], WithJsonSchema(keys_of(JobOptionsSchema.model_json_schema()))]
SnapshotOptionsIn = Annotated[dict[str, Any], WithJsonSchema(keys_of(SnapshotOptions.model_json_schema()))]
SnapshotFiltersIn = Annotated[dict[str, Any], WithJsonSchema(keys_of(SnapshotFilters.model_json_schema()))]


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(description="Adapter name; each published version is <adapter> vN.", max_length=100,
                         pattern=NAME_PATTERN)
    base_model: str = Field(description="A registered base model name (GET /v1/base-models).", max_length=100,
                            pattern=NAME_PATTERN)
    snapshot_id: str | None = Field(None, description="Train on this snapshot; default: take a new one.")
    config: ConfigOverrides = Field(
        default_factory=dict, description="Overrides of the alignment config (KTOConfig fields), e.g. {\"beta\": 0.2}."
    )
    snapshot_options: SnapshotOptionsIn = Field(
        default_factory=dict, description="Options of the snapshot taken when snapshot_id is absent "
        "(aggregation: majority|latest|all, one_y_per_x)."
    )
    snapshot_filters: SnapshotFiltersIn = Field(
        default_factory=dict, description="Which votes the snapshot takes when snapshot_id is absent, as in "
        "POST /v1/snapshots: model, metadata (tags), since, until."
    )
    options: JobOptionsIn = Field(
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

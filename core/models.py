"""SQLAlchemy 2 tables. The schema changes only through migrations/.

Raw feedback events are append-only: a re-vote adds an event and moves the
counted vote; a retraction marks the event. ``votes`` holds the one counted
vote per (voter, prompt+response) pair, so stats and snapshots read one small
row per judgement instead of replaying history.
An admin's erasure of a user (core.erasure) is the one rewrite of events: it
blanks their texts and metadata and sets ``erased_at``.

``created_by_key_id`` columns record which API key created a row; they carry
no foreign key, so the record outlives the key row.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# BIGINT on Postgres, INTEGER on SQLite (where only INTEGER PRIMARY KEY autoincrements).
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}  # noqa: RUF012 - SQLAlchemy reads it once


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class FeedbackEvent(Base):
    __tablename__ = "feedback_events"
    __table_args__ = (Index("ix_events_adapter_version", "adapter", "adapter_version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(200), unique=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str | None] = mapped_column(Text)
    messages: Mapped[list[Any] | None]
    # sha256 of the canonical prompt (text or messages) and of (prompt, response).
    prompt_key: Mapped[str] = mapped_column(String(64))
    pair_key: Mapped[str] = mapped_column(String(64), index=True)
    response: Mapped[str] = mapped_column(Text)
    label: Mapped[bool] = mapped_column(Boolean)
    user_id: Mapped[str | None] = mapped_column(String(200))
    conversation_id: Mapped[str | None] = mapped_column(String(200))
    response_id: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    # The adapter version that served the response (given, or parsed from model "<adapter>-v<n>").
    adapter: Mapped[str | None] = mapped_column(String(200))
    adapter_version: Mapped[int | None]
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    created_at: Mapped[datetime] = mapped_column(index=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    retracted_at: Mapped[datetime | None]
    # When an admin erased the user's data: the texts and metadata are gone, the vote no longer counts.
    erased_at: Mapped[datetime | None]
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))


class Vote(Base):
    """The counted vote of one voter on one (prompt, response) pair."""

    __tablename__ = "votes"
    __table_args__ = (
        UniqueConstraint("voter_key", "pair_key", name="uq_votes_voter_pair"),
        Index("ix_votes_created_at", "created_at"),
        Index("ix_votes_model", "model"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # user_id when given; otherwise the event id, so anonymous votes never merge.
    voter_key: Mapped[str] = mapped_column(String(220))
    pair_key: Mapped[str] = mapped_column(String(64))
    prompt_key: Mapped[str] = mapped_column(String(64))
    event_pk: Mapped[int] = mapped_column(ForeignKey("feedback_events.id", ondelete="CASCADE"), unique=True)
    label: Mapped[bool] = mapped_column(Boolean)
    model: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Snapshot(Base):
    __tablename__ = "snapshots"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(16), default="ready")
    content_hash: Mapped[str | None] = mapped_column(String(64))
    filters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cutoff: Mapped[datetime]
    n_rows: Mapped[int] = mapped_column(default=0)
    n_desirable: Mapped[int] = mapped_column(default=0)
    n_undesirable: Mapped[int] = mapped_column(default=0)
    path: Mapped[str | None] = mapped_column(String(500))
    error: Mapped[str | None] = mapped_column(Text)
    # Set when a user's erasure rewrote the file: content_hash and the counts describe the rewritten file.
    redacted_at: Mapped[datetime | None]
    created_by_key_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BaseModelRecord(Base):
    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(String(1000))
    revision: Mapped[str | None] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(String(1000))
    sha256: Mapped[str] = mapped_column(String(64))
    # sha256 of every file a job loads, by relative path (None: registered before files were pinned).
    files: Mapped[dict[str, Any] | None]
    architecture: Mapped[str | None] = mapped_column(String(200))
    created_by_key_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # ready; preparing: the bundled model's name, registered at once, while the worker converts it (jobs for
    # it wait queued); failed: the conversion failed (``error`` says why; its jobs fail with it).
    status: Mapped[str] = mapped_column(String(20), default="ready", server_default="ready")
    error: Mapped[str | None] = mapped_column(Text)


class TrainingPolicy(Base):
    __tablename__ = "training_policies"
    __table_args__ = (
        # One live policy per adapter: two would race to train the same name.
        Index(
            "uq_policies_live_adapter",
            "adapter_name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    adapter_name: Mapped[str] = mapped_column(String(200))
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    min_new_feedback: Mapped[int] = mapped_column(default=100)
    min_interval_minutes: Mapped[int] = mapped_column(default=60)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    snapshot_options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Which votes its snapshots take (core.snapshots.SnapshotFilters): one product's feedback per adapter.
    snapshot_filters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enabled: Mapped[bool] = mapped_column(default=True)
    last_job_id: Mapped[str | None] = mapped_column(String(32))
    last_triggered_at: Mapped[datetime | None]
    last_vote_watermark: Mapped[int] = mapped_column(BigId, default=0)
    # Rollout settings (core.rollouts.RolloutSpec) for each version this policy publishes; None: no rollout.
    rollout: Mapped[dict[str, Any] | None]
    created_by_key_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]


JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class AlignmentJob(Base):
    __tablename__ = "alignment_jobs"
    __table_args__ = (
        # At most one running job per adapter: enforced by the database itself.
        Index(
            "uq_jobs_one_running_per_adapter",
            "adapter_name",
            unique=True,
            sqlite_where=text("status = 'running'"),
            postgresql_where=text("status = 'running'"),
        ),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_adapter_created", "adapter_name", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    adapter_name: Mapped[str] = mapped_column(String(200))
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    snapshot_id: Mapped[str | None] = mapped_column(ForeignKey("snapshots.id"))
    policy_id: Mapped[str | None] = mapped_column(ForeignKey("training_policies.id", ondelete="SET NULL"))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    snapshot_options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    snapshot_filters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Pipeline options outside the KTO config: held-out share, gate thresholds (core.jobs.JobOptions).
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    force_publish: Mapped[bool] = mapped_column(default=False)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    progress_step: Mapped[int] = mapped_column(default=0)
    progress_total: Mapped[int] = mapped_column(default=0)
    # What a running job does now (core.jobs.PHASES); None when queued or finished.
    phase: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any] | None]
    eval_metrics: Mapped[dict[str, Any] | None]
    n_desirable: Mapped[int | None]
    n_undesirable: Mapped[int | None]
    class_weights: Mapped[dict[str, Any] | None]
    # Seconds per phase of the latest attempt (worker.pipeline): where the wait for a version goes.
    timings: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    celery_task_id: Mapped[str | None] = mapped_column(String(200))
    # When the last task message was sent; a queued job never sent is re-sent by the reaper.
    enqueued_at: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(String(200))
    # A fresh random token per claim: the fence every write of the holder checks (not its clock).
    claim_token: Mapped[str | None] = mapped_column(String(32))
    heartbeat_at: Mapped[datetime | None]
    # The checkpoint step the latest attempt continued from (None: it started from scratch).
    resumed_from_step: Mapped[int | None]
    adapter_version_id: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.id"))
    # Which API key asked for the job (None: a policy or the CLI).
    created_by_key_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class JobMetric(Base):
    __tablename__ = "job_metrics"

    job_id: Mapped[str] = mapped_column(ForeignKey("alignment_jobs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(primary_key=True)
    # Which delivery of the job computed this step (a resumed attempt overwrites steps after its checkpoint).
    attempt: Mapped[int] = mapped_column(default=1)
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AdapterVersion(Base):
    __tablename__ = "adapter_versions"
    __table_args__ = (
        UniqueConstraint("adapter_name", "version", name="uq_adapter_versions_name_version"),
        # A job publishes at most once, whatever its deliveries do.
        Index("uq_adapter_versions_job_id", "job_id", unique=True),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    adapter_name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int]
    path: Mapped[str] = mapped_column(String(1000))
    manifest: Mapped[dict[str, Any]]
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    # sha256 of the deterministic .tar.gz download (its ETag), computed on first download.
    tarball_sha256: Mapped[str | None] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(String(32))
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    snapshot_id: Mapped[str | None] = mapped_column(ForeignKey("snapshots.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AdapterAlias(Base):
    __tablename__ = "adapter_aliases"

    adapter_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    alias: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AliasHistory(Base):
    __tablename__ = "adapter_alias_history"
    __table_args__ = (Index("ix_alias_history_name_alias", "adapter_name", "alias"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    adapter_name: Mapped[str] = mapped_column(String(200))
    alias: Mapped[str] = mapped_column(String(100))
    from_version: Mapped[int | None]
    to_version: Mapped[int]
    moved_by: Mapped[str | None] = mapped_column(String(200))
    moved_at: Mapped[datetime] = mapped_column(default=utcnow)


class PromptSplit(Base):
    """Which side of the train / held-out split a prompt is on, decided once and kept.

    A prompt never moves, so a later job never trains on a prompt an earlier
    job's gate was judged on (``core.heldout``).
    """

    __tablename__ = "prompt_splits"

    prompt_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    heldout: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


ROLLOUT_STATUSES = ("running", "promoted", "rolled_back", "stopped", "expired")


class Rollout(Base):
    """A canary: ``traffic`` of the units see the candidate until the feedback decides (core.rollouts)."""

    __tablename__ = "rollouts"
    __table_args__ = (
        # One running rollout per adapter: routing must know which one applies.
        Index(
            "uq_rollouts_one_running_per_adapter",
            "adapter_name",
            unique=True,
            sqlite_where=text("status = 'running'"),
            postgresql_where=text("status = 'running'"),
        ),
        Index("ix_rollouts_adapter_started", "adapter_name", "started_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    adapter_name: Mapped[str] = mapped_column(String(200))
    candidate_version: Mapped[int]
    baseline_version: Mapped[int]
    # What the caller named the baseline ("champion", "3"): the promote is a compare-and-swap against it.
    baseline_ref: Mapped[str] = mapped_column(String(100))
    traffic: Mapped[float]
    min_votes: Mapped[int]
    probability: Mapped[float]
    max_days: Mapped[float]
    status: Mapped[str] = mapped_column(String(16), default="running")
    reason: Mapped[str | None] = mapped_column(Text)
    # Figures of the latest evaluation (arms, probabilities); the full history is in rollout_evaluations.
    figures: Mapped[dict[str, Any] | None]
    started_by: Mapped[str | None] = mapped_column(String(200))
    policy_id: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    evaluated_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]


class RolloutEvaluation(Base):
    __tablename__ = "rollout_evaluations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    evaluated_at: Mapped[datetime] = mapped_column(default=utcnow)
    figures: Mapped[dict[str, Any]]
    # The rollout's status after this evaluation (running when undecided).
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)


class ServingTarget(Base):
    """A serving stack told about an adapter's changes: a webhook, or a vLLM server's LoRA API."""

    __tablename__ = "serving_targets"
    __table_args__ = (
        Index(
            "uq_serving_targets_live_name",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(String(1000))
    adapter_name: Mapped[str] = mapped_column(String(200), index=True)
    # Kept in clear: it signs every webhook body (HMAC), so it must be readable.
    secret: Mapped[str] = mapped_column(String(200))
    # vllm: where the vLLM host finds <adapter>/v<version>; and the served names it was told to load.
    adapter_root: Mapped[str | None] = mapped_column(String(1000))
    # vllm: the server's --max-lora-rank; versions of a higher rank are refused for it.
    max_lora_rank: Mapped[int | None]
    loaded: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]


DELIVERY_STATUSES = ("pending", "delivered", "failed")


class Delivery(Base):
    """The outbox: one row per (event, target), written in the transaction of the change it reports."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_target_created", "target_id", "created_at"),
        Index("uq_deliveries_target_seq", "target_id", "seq", unique=True),
    )

    # The delivery_id the receiver deduplicates on.
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    target_id: Mapped[str] = mapped_column(ForeignKey("serving_targets.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(40))
    # Outbox order per target (1, 2, ...): a row is sent only once every earlier one is delivered or failed.
    seq: Mapped[int]
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A claimed attempt owns the row until then; a worker killed mid-send loses it when it passes.
    lease_until: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]

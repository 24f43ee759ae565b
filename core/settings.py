"""The one typed Settings object: the only reader of the environment.

Every value comes from an environment variable with the ``PROSPECT_`` prefix
(or a ``.env`` file in the working directory). Defaults give the embedded
runtime: a SQLite database, Celery's SQLAlchemy broker on SQLite and artifacts
on the local disk, all under ``PROSPECT_DATA_DIR``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROSPECT_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("./var"), description="SQLite file, broker file, artifacts, converted models.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite under data_dir.")
    broker_url: str | None = Field(None, description="Celery broker; default: sqla+sqlite under data_dir.")
    result_backend: str | None = Field(None, description="Celery result backend; default: db+sqlite under data_dir.")
    redis_url: str | None = Field(
        None, description="Redis for the shared rate limiter; default: the broker when it is redis://."
    )
    host: str = Field("127.0.0.1", description="API bind address.")
    port: int = Field(8000, ge=1, le=65535, description="API port.")
    log_level: str = Field("INFO", description="Python logging level.")
    api_url: str | None = Field(None, description="Where the CLI reaches the API; default: the running `prospect up` (core.instance).")
    api_key: str | None = Field(None, description="The key the CLI sends (PROSPECT_API_KEY).")

    # Ingestion limits.
    max_text_bytes: int = Field(64 * 1024, ge=1, description="Largest prompt/response/message text (UTF-8 bytes).")
    max_batch_events: int = Field(1000, ge=1, description="Most events in one batch request.")
    max_body_bytes: int = Field(5 * 1024 * 1024, ge=1024, description="Largest request body.")
    max_metadata_bytes: int = Field(16 * 1024, ge=2, description="Largest serialised metadata object.")
    max_metadata_depth: int = Field(8, ge=1, description="Deepest nesting of metadata.")
    max_import_uncompressed_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest uncompressed size of a zip / tar.gz import body."
    )
    rate_limit_per_second: float = Field(2000.0, gt=0, description="Sustained requests/s per API key.")
    rate_limit_burst: int = Field(4000, ge=1, description="Burst size of the per-key token bucket.")
    ingest_group_commit: bool = Field(
        True, description="Write concurrent single-event POSTs of one API process in one transaction (group commit)."
    )
    ingest_group_max_events: int = Field(500, ge=1, description="Most single events in one group commit.")
    ingest_group_writers: int = Field(
        8, ge=1, description="Group commits one API process runs at once on Postgres (1 on SQLite); events arriving "
        "meanwhile wait for the next."
    )
    ingest_group_max_queued: int = Field(
        5000, ge=1, description="Most single events one API process holds waiting for a group commit; beyond, "
        "POST /v1/feedback answers 503 with Retry-After (a flood while the database is slow does not grow memory)."
    )
    max_import_rows: int = Field(20_000, ge=1, description="Most rows in one POST /v1/feedback/import.")
    auth_failures_per_minute: float = Field(
        30.0, gt=0, description="Failed authentications a client address may make per minute (then 429)."
    )
    auth_failures_burst: int = Field(20, ge=1, description="Failed authentications a client may make at once.")
    rejected_token_ttl_s: float = Field(60.0, ge=0, description="How long a rejected token is refused unseen.")

    # Worker and jobs.
    job_max_attempts: int = Field(3, ge=1, description="Deliveries of one job before it ends failed.")
    heartbeat_interval_s: float = Field(10.0, gt=0, description="How often a running job proves it is alive.")
    heartbeat_timeout_s: float = Field(300.0, gt=0, description="A running job silent this long is reaped.")
    reaper_interval_s: float = Field(60.0, gt=0, description="How often beat runs the reaper.")
    queued_resend_s: float | None = Field(
        None, gt=0, description="A queued job no delivery has seen this long is sent again; default: heartbeat_timeout_s."
    )
    job_time_limit_s: float = Field(
        24 * 3600.0, gt=0, description="Wall-clock limit of one job from its first claim; past it the job fails."
    )
    policy_interval_s: float = Field(60.0, gt=0, description="How often beat checks training policies.")
    visibility_timeout_s: int = Field(
        48 * 3600, ge=60, description="Redis/SQS redelivery timeout; must exceed the longest job."
    )
    job_max_steps: int = Field(100_000, ge=1, description="Largest config.max_steps a job may ask for.")
    job_max_epochs: int = Field(100, ge=1, description="Largest config.num_epochs.")
    job_max_batch_size: int = Field(256, ge=2, description="Largest config.batch_size.")
    job_max_grad_accumulation: int = Field(256, ge=1, description="Largest config.grad_accumulation.")
    job_max_length: int = Field(32_768, ge=16, description="Largest config.max_length (and max_prompt_length).")
    job_max_lora_r: int = Field(256, ge=1, description="Largest config.lora_r.")
    job_max_lora_alpha: int = Field(1024, ge=1, description="Largest config.lora_alpha.")
    job_max_sequence_workers: int = Field(64, ge=1, description="Largest config.sequence_workers.")
    snapshot_retention_days: float = Field(
        30.0, ge=0, description="Snapshot files no version was trained on are deleted after this; 0 keeps all."
    )
    retention_interval_s: float = Field(3600.0, gt=0, description="How often beat applies snapshot retention.")
    refused_adapter_keep_hours: float = Field(
        72.0, ge=0, description="A job the gate refused keeps its adapter this long for POST /v1/jobs/{id}/publish; "
        "0 keeps none."
    )
    checkpoint_every_steps: int = Field(20, ge=1, description="Training checkpoint period (steps).")

    # Artifacts: a local folder or an S3-compatible bucket (core.artifact_store).
    artifact_url: str = Field(
        "", description="Where snapshots, adapter versions and checkpoints live: empty = data_dir/artifacts, "
        "or s3://bucket/prefix (shared by API and workers on different hosts)."
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint for non-AWS stores (MinIO, SeaweedFS, ...).")
    # botocore waits 60 s by default: a store that stops answering would hold an API request (and its
    # worker thread) for minutes, times its retries.
    s3_connect_timeout_s: float = Field(5.0, gt=0, description="Seconds to open a connection to the S3 store.")
    s3_read_timeout_s: float = Field(
        30.0, gt=0, description="Seconds the S3 store may stay silent on an open connection before the attempt fails."
    )
    # botocore's standard mode retries on connection errors, timeouts, 5xx and throttling: a hung store holds
    # a request for about this many read timeouts before the API answers 503.
    s3_max_attempts: int = Field(
        3, ge=1, description="Attempts of one S3 request, the first included (1: no retry)."
    )
    download_redirect: Literal["stream", "presigned"] = Field(
        "stream", description="Downloads from an S3 store: 'stream' through the API, or 'presigned' (302 to a "
        "presigned URL of the store)."
    )
    presigned_expires_s: int = Field(900, ge=1, le=7 * 86400, description="Lifetime of a presigned download URL.")
    artifact_orphan_grace_s: float = Field(
        3600.0, ge=0, description="Unreferenced artifacts younger than this may belong to a write in flight and "
        "are kept by the orphan sweep."
    )
    train_processes: int = Field(
        1, ge=1, description="Processes a job trains on when its config sets no processes (torchrun on this "
        "worker: one per GPU with NCCL, gloo on CPU; README: Training on several processes)."
    )
    job_max_processes: int = Field(8, ge=1, description="Largest config.processes.")
    warm_models: int = Field(
        1, ge=0, description="Verified base models a training worker keeps loaded between jobs (least recently "
        "used dropped first); the next job on one skips hashing and loading it. 0 keeps none."
    )
    base_model_dirs: list[Path] = Field(
        default_factory=list,
        description="Folders (JSON list) base models may be registered from, besides data_dir/models.",
    )
    bundled_model_name: str = Field("smollm2-135m-instruct", description="Name the bundled base model gets.")
    register_bundled_model: bool = Field(True, description="Convert and register the bundled model on start.")

    # The live loop: rollouts and telling serving targets (core.rollouts, core.outbox).
    rollout_interval_s: float = Field(60.0, gt=0, description="How often beat evaluates running rollouts.")
    outbox_interval_s: float = Field(5.0, gt=0, description="How often beat delivers due outbox rows.")
    outbox_backoff_s: float = Field(2.0, gt=0, description="Retry delay after a failed delivery; doubles each try.")
    outbox_max_backoff_s: float = Field(600.0, gt=0, description="Longest delay between two delivery tries.")
    outbox_give_up_s: float = Field(86400.0, gt=0, description="A delivery still failing this long after its "
                                    "event ends failed.")
    outbox_lease_s: float = Field(120.0, gt=0, description="A claimed delivery is another worker's to retry "
                                  "this long after the claim (its worker died mid-send).")
    outbox_timeout_s: float = Field(10.0, gt=0, description="HTTP timeout of one delivery request.")

    # The dashboard (/ui) and GET /metrics.
    ui_secret_key: str | None = Field(
        None, description="Signs dashboard session cookies; default: a random key kept in data_dir/ui-secret."
    )
    ui_session_max_age_s: int = Field(8 * 3600, ge=60, description="Dashboard sign-in lifetime (seconds).")
    ui_secure_cookies: bool | None = Field(
        None, description="Mark the session cookie Secure; default: when the request came over https."
    )
    metrics_access: Literal["local-or-read", "read", "open"] = Field(
        "local-or-read", description="Who may GET /metrics: 'local-or-read' (no key from 127.0.0.1/::1, a read "
        "key otherwise), 'read' (always a read key), 'open'."
    )

    @field_validator("log_level")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.upper()

    @property
    def data_path(self) -> Path:
        return self.data_dir.resolve()

    @property
    def artifacts_dir(self) -> Path:
        return self.data_path / "artifacts"

    @property
    def metrics_dir(self) -> Path:
        """PROMETHEUS_MULTIPROC_DIR unless the environment names one: every process writes its samples there."""
        return self.data_path / "metrics"

    @property
    def models_dir(self) -> Path:
        return self.data_path / "models"

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_path / 'prospect.db'}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_path / 'broker.db'}"

    @property
    def celery_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.celery_broker_url.startswith(("redis://", "rediss://")):
            return self.celery_broker_url
        return f"db+sqlite:///{self.data_path / 'results.db'}"

    @property
    def broker_transport_options(self) -> dict:
        # Redis/SQS redeliver unacknowledged tasks after the visibility timeout; the
        # SQLAlchemy transport passes its options to create_engine, which refuses it.
        if self.celery_broker_url.startswith(("redis://", "rediss://", "sqs://")):
            return {"visibility_timeout": self.visibility_timeout_s}
        return {}

    @property
    def rate_limit_redis_url(self) -> str | None:
        if self.redis_url:
            return self.redis_url
        if self.celery_broker_url.startswith(("redis://", "rediss://")):
            return self.celery_broker_url
        return None

    def ensure_dirs(self) -> None:
        for d in (self.data_path, self.artifacts_dir, self.models_dir):
            d.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()

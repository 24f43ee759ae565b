"""Prometheus metrics of every process (API workers, Celery pool processes), in multiprocess mode.

Each process writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR``
(default: ``<data_dir>/metrics``, set here before prometheus_client is
imported, so the API, the workers and beat agree without configuration);
``GET /metrics`` sums them. Files are named by host and pid, so containers
that share the data volume never write the same file. State that the
database already knows (jobs, rollouts, deliveries by status) is counted at
scrape time instead. No label holds a user, an event or a prompt.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from core.settings import get_settings

ENV = "PROMETHEUS_MULTIPROC_DIR"


def _multiproc_dir() -> Path:
    path = Path(os.environ.setdefault(ENV, str(get_settings().metrics_dir)))
    path.mkdir(parents=True, exist_ok=True)
    return path


MULTIPROC_DIR = _multiproc_dir()

# After the environment is set: prometheus_client picks its storage when first imported.
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import Engine, func, select

from core.models import AlignmentJob, Delivery, Rollout

HOST = socket.gethostname()
values.ValueClass = values.MultiProcessValue(process_identifier=lambda: f"{HOST}-{os.getpid()}")

HTTP_REQUESTS = Counter("prospect_http_requests_total", "HTTP requests by route template, method and status.",
                        ["route", "method", "status"])
HTTP_SECONDS = Histogram("prospect_http_request_duration_seconds", "HTTP request latency by route template.",
                         ["route", "method"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
FEEDBACK_EVENTS = Counter("prospect_feedback_events_total",
                          "Feedback events received, by outcome (created, duplicate, conflict, invalid) and label.",
                          ["status", "label"])
INGEST_GROUP_EVENTS = Histogram("prospect_ingest_group_events",
                                "Single events written per group commit (PROSPECT_INGEST_GROUP_COMMIT).",
                                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
TRAINING_STEP_SECONDS = Histogram("prospect_training_step_seconds", "Wall time of one optimiser step.",
                                  buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120, 300))
TRAINING_TOKENS = Counter("prospect_training_tokens_total", "Tokens trained on (all jobs).")
TRAINING_TOKENS_PER_S = Gauge("prospect_training_tokens_per_second",
                              "Tokens/s of the latest step of the running job (0 when none runs).",
                              multiprocess_mode="mostrecent")
JOBS_FINISHED = Counter("prospect_jobs_finished_total", "Jobs that ended, by status.", ["status"])
JOB_SECONDS = Histogram("prospect_job_duration_seconds", "From a job's first claim to its end, by status.",
                        ["status"], buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400))
SNAPSHOT_ROWS = Counter("prospect_snapshot_rows_total", "Rows written to snapshots.")
SNAPSHOT_SECONDS = Histogram("prospect_snapshot_seconds", "Time to build one snapshot.",
                             buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
DELIVERY_ATTEMPTS = Counter("prospect_delivery_attempts_total",
                            "Outbox delivery attempts by target kind and outcome (delivered, retry, failed).",
                            ["kind", "outcome"])


def reset_dir() -> None:
    """Empty the samples of processes that no longer run (call before any process of a fresh start)."""
    for item in MULTIPROC_DIR.glob("*.db"):
        item.unlink(missing_ok=True)


# --- hooks: one call each from the code that does the work ------------------------------------------------


def feedback_ingested(outcomes: Iterable[tuple[str, str | None]]) -> None:
    """Count (status, label) pairs of events whose fate is committed; a label is up, down or unknown."""
    for status, label in outcomes:
        FEEDBACK_EVENTS.labels(status=status, label=label if label in ("up", "down") else "unknown").inc()


def ingest_group(events: int) -> None:
    INGEST_GROUP_EVENTS.observe(events)


def training_step(metrics: dict) -> None:
    tokens, per_s = metrics.get("tokens"), metrics.get("tokens_per_s")
    if tokens and per_s:
        TRAINING_STEP_SECONDS.observe(tokens / per_s)
        TRAINING_TOKENS.inc(tokens)
        TRAINING_TOKENS_PER_S.set(per_s)


def job_ended(status: str | None, seconds: float | None) -> None:
    TRAINING_TOKENS_PER_S.set(0)
    if status in ("succeeded", "failed", "cancelled"):
        JOBS_FINISHED.labels(status=status).inc()
        if seconds is not None:
            JOB_SECONDS.labels(status=status).observe(max(0.0, seconds))


def snapshot_built(rows: int, seconds: float) -> None:
    SNAPSHOT_ROWS.inc(rows)
    SNAPSHOT_SECONDS.observe(seconds)


def delivery_attempt(kind: str, outcome: str) -> None:
    DELIVERY_ATTEMPTS.labels(kind=kind, outcome=outcome).inc()


# --- scraping ------------------------------------------------------------------------------------------------


class StateCollector:
    """Gauges read from the database at scrape time: what is, not what some process saw."""

    TABLES = (("prospect_jobs", "Alignment jobs by status.", AlignmentJob),
              ("prospect_rollouts", "Rollouts by status.", Rollout),
              ("prospect_deliveries", "Outbox deliveries by status.", Delivery))

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.engine.connect() as conn:
            for name, doc, table in self.TABLES:
                family = GaugeMetricFamily(name, doc, labels=["status"])
                rows = conn.execute(select(table.status, func.count()).group_by(table.status))
                for status, n in sorted(rows):
                    family.add_metric([status], n)
                yield family


def render(engine: Engine) -> bytes:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(MULTIPROC_DIR))
    registry.register(StateCollector(engine))
    return generate_latest(registry)


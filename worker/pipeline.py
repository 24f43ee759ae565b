"""One alignment job, top to bottom:

    claim -> snapshot -> split by prompt -> class weights -> verify + load the base
    -> train (progress, heartbeat, cancel, checkpoints) -> evaluate adapter and reference
    -> gate -> stage -> publish -> succeeded

Every status change goes through ``core.jobs``. A redelivered job (worker
killed, task redelivered or re-queued by the reaper) keeps its snapshot and
resumes from its last checkpoint under ``<data>/checkpoints/<job id>``.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError

from core import jobs
from core.base_models import verify_base_model
from core.db import get_engine, session_factory, session_scope
from core.errors import DomainError
from core.models import AdapterVersion, AlignmentJob, BaseModelRecord, Snapshot
from core.settings import Settings
from core.snapshots import create_snapshot, get_snapshot, iter_snapshot_rows

log = logging.getLogger(__name__)


class JobFailed(Exception):
    """The job cannot succeed; ``message`` (and ``figures``) go to the job record."""

    def __init__(self, message: str, figures: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.figures = figures


@dataclass(frozen=True)
class Outcome:
    """What a delivery did: ``claim`` is core.jobs.Claim.outcome; ``status`` the job's status after it."""

    claim: str
    status: str | None = None
    reason: str = ""


def checkpoint_dir(settings: Settings, job_id: str) -> Path:
    return settings.data_path / "checkpoints" / job_id


def staging_dir(settings: Settings, job_id: str) -> Path:
    return settings.data_path / "staging" / f"job-{job_id}"


# ---------------------------------------------------------------- the split


def prompt_key(prompt: Any) -> str:
    """A stable key of a row's prompt (text or chat messages)."""
    return hashlib.sha256(json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def split_by_prompt(rows: list[dict], heldout_fraction: float) -> tuple[list[dict], list[dict]]:
    """Deterministic (train, held-out) split: all rows of a prompt go to one side.

    A prompt is held out when the hash of its key falls in the first
    ``heldout_fraction`` of the hash space: the same prompt always lands on the
    same side, whatever else the snapshot holds, so later snapshots never train
    on an earlier job's held-out prompts.
    """
    train, heldout = [], []
    for row in rows:
        bucket = int(prompt_key(row["prompt"])[:15], 16) / float(16**15)
        (heldout if bucket < heldout_fraction else train).append(row)
    return train, heldout


def reference_figures(heldout: list[dict], desirable: float, undesirable: float) -> dict:
    """Held-out figures of the reference itself: it is the policy with r = 0 on every row, so
    z0 = 0 and each row's loss is lambda/2; rewards and margin are 0 and no row counts as right."""
    n_d = sum(1 for r in heldout if r["label"])
    n_u = len(heldout) - n_d
    return {
        "n": len(heldout),
        "loss": (desirable * n_d + undesirable * n_u) / (2 * len(heldout)),
        "kl": 0.0,
        "reward_desirable": 0.0 if n_d else None,
        "reward_undesirable": 0.0 if n_u else None,
        "reward_margin": 0.0 if n_d and n_u else None,
        "accuracy": 0.0,
    }


def gate(adapter: dict, reference: dict, options: jobs.JobOptions) -> tuple[bool, list[str]]:
    """The publish gate; returns (passed, the reasons it refused)."""
    reasons = []
    loss, ref_loss = adapter.get("loss"), reference["loss"]
    if loss is None or not loss < ref_loss - options.gate_min_loss_improvement:
        reasons.append(
            f"held-out loss {loss} is not below the reference's {ref_loss:.6f} "
            f"by more than {options.gate_min_loss_improvement}"
        )
    margin = adapter.get("reward_margin")
    if margin is None or not margin > options.gate_min_reward_margin:
        reasons.append(f"held-out reward margin {margin} is not above {options.gate_min_reward_margin}")
    return not reasons, reasons


# ---------------------------------------------------------------- liveness


class Liveness:
    """Heartbeat thread + cancellation checks for one running job.

    The thread proves the worker is alive even during long phases without
    steps (loading, reference log-probs, evaluation). ``should_stop`` asks the
    database before every training step, so a cancel takes effect within one
    step; it also stops a worker that lost the job (reaped as stale).
    """

    def __init__(self, engine: Engine, *, job_id: str, worker: str, interval_s: float) -> None:
        self.engine, self.job_id, self.worker, self.interval_s = engine, job_id, worker, interval_s
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with session_scope(self.engine) as s:
                    jobs.heartbeat(s, job_id=self.job_id, worker=self.worker)
            except jobs.LostClaim as exc:
                self.lost = exc.message
                log.warning("job %s: %s; stopping", self.job_id, exc.message)
                return
            except OperationalError as exc:  # the database blinked: try again next beat
                log.warning("job %s: heartbeat failed: %s", self.job_id, exc.orig)

    def should_stop(self) -> bool:
        if self.lost:
            return True
        try:
            with session_scope(self.engine) as s:
                return jobs.is_cancel_requested(s, job_id=self.job_id)
        except OperationalError as exc:
            log.warning("job %s: cannot read the cancel flag: %s", self.job_id, exc.orig)
            return False


# ---------------------------------------------------------------- the job


def run_job(job_id: str, *, settings: Settings, engine: Engine | None = None, worker: str | None = None) -> Outcome:
    """One delivery of job ``job_id``. Raises only transient errors (database unreachable)."""
    engine = engine or get_engine(settings)
    worker = worker or jobs.worker_identity()
    with session_scope(engine) as s:
        claim = jobs.claim_job(s, job_id=job_id, worker=worker, heartbeat_timeout_s=settings.heartbeat_timeout_s)
    if claim.outcome != "run":
        log.info("job %s: %s (%s)", job_id, claim.outcome, claim.reason)
        return Outcome(claim.outcome, reason=claim.reason)

    run = _Run(job_id=job_id, settings=settings, engine=engine, worker=worker, attempt=claim.attempt)
    with Liveness(engine, job_id=job_id, worker=worker, interval_s=settings.heartbeat_interval_s) as live:
        try:
            status = run.execute(live)
        except jobs.LostClaim as exc:
            log.warning("job %s: %s; this delivery stops without publishing", job_id, exc.message)
            return Outcome("run", reason=exc.message)
        except OperationalError:
            raise  # transient: the task retries; the job stays ours until then or until reaped
        except Exception as exc:
            message = exc.message if isinstance(exc, JobFailed | DomainError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, JobFailed | DomainError):
                log.exception("job %s failed", job_id)
            with session_scope(engine) as s:
                jobs.fail(s, job_id=job_id, worker=worker, error=message,
                          eval_metrics=getattr(exc, "figures", None))
            status = "failed"
        finally:
            run.release()
    if status in jobs.TERMINAL:
        shutil.rmtree(checkpoint_dir(settings, job_id), ignore_errors=True)
    return Outcome("run", status=status)


@dataclass
class _Run:
    job_id: str
    settings: Settings
    engine: Engine
    worker: str
    attempt: int
    model: Any = None
    first_step_seen: bool = False

    def _session(self):
        return session_scope(self.engine)

    def execute(self, live: Liveness) -> str:
        from alignment.config import ConfigError, KTOConfig
        from alignment.weights import ClassWeightError, class_weights

        with self._session() as s:
            job = jobs.get_job(s, job_id=self.job_id)
            base = s.get(BaseModelRecord, job.base_model_id)
            published = s.scalar(select(AdapterVersion).where(AdapterVersion.job_id == self.job_id))
            if published is not None:
                # A crash after publishing, before the job row said so: do not publish twice.
                jobs.succeed(s, job_id=self.job_id, worker=self.worker, adapter_version_id=published.id)
                return "succeeded"
        options = jobs.JobOptions.from_dict(job.options)
        try:
            config = KTOConfig.from_dict(job.config)
        except ConfigError as exc:
            raise JobFailed(f"invalid config: {exc}") from exc
        if "checkpoint_every" not in job.config:
            config = dataclasses.replace(config, checkpoint_every=self.settings.checkpoint_every_steps)

        snapshot = self._snapshot(job)
        rows = list(iter_snapshot_rows(self.settings, snapshot))
        train_rows, heldout = split_by_prompt(rows, options.heldout_fraction)
        n_d = sum(1 for r in train_rows if r["label"])
        log.info("job %s: snapshot %s, %d rows -> %d train / %d held-out", self.job_id, snapshot.id, len(rows),
                 len(train_rows), len(heldout))
        if len(train_rows) < 2:
            raise JobFailed(f"snapshot {snapshot.id} has {len(train_rows)} training row(s) after holding out "
                            f"{len(heldout)}; collect more feedback")
        if len(heldout) < 2 and not job.force_publish:
            raise JobFailed(
                f"only {len(heldout)} held-out row(s) from {len(rows)} rows: the gate needs at least 2 "
                "(collect feedback on more distinct prompts, raise heldout_fraction, or set force_publish)"
            )
        try:
            weights = class_weights(n_d, len(train_rows) - n_d, desirable_weight=config.desirable_weight,
                                    undesirable_weight=config.undesirable_weight,
                                    allow_single_class=config.allow_single_class)
        except ClassWeightError as exc:
            raise JobFailed(f"class weights: {exc}") from exc
        with self._session() as s:
            jobs.record_inputs(s, job_id=self.job_id, worker=self.worker, class_weights=weights.to_dict())

        model, tokenizer = self._load_base(base)
        result = self._train(live, model, tokenizer, train_rows, config)
        if result is None:
            return "cancelled"
        self.model = result.model

        figures = self._evaluate(result, tokenizer, heldout, config)
        if job.force_publish:
            figures["gate"] = {"passed": None, "skipped": "force_publish"}
        else:
            passed, reasons = gate(figures["adapter"], figures["reference"], options)
            figures["gate"] = {"passed": passed, "reasons": reasons, **options.to_dict()}
            if not passed:
                raise JobFailed("the gate refused to publish: " + "; ".join(reasons), figures)
        if live.should_stop():
            return self._cancelled(live)

        version = self._publish(job, base, snapshot, result, figures)
        with self._session() as s:
            jobs.succeed(s, job_id=self.job_id, worker=self.worker, adapter_version_id=version.id,
                         eval_metrics=figures)
        log.info("job %s succeeded: %s v%d", self.job_id, version.adapter_name, version.version)
        return "succeeded"

    def _snapshot(self, job: AlignmentJob) -> Snapshot:
        """The job's snapshot; taken now (and recorded at once) when it has none, so a
        redelivery trains on the same rows and can resume its checkpoint."""
        with self._session() as s:
            if job.snapshot_id is not None:
                return get_snapshot(s, snapshot_id=job.snapshot_id)
            log.info("job %s: taking a snapshot", self.job_id)
            snapshot = create_snapshot(s, settings=self.settings, options=job.snapshot_options or None)
            jobs.record_inputs(s, job_id=self.job_id, worker=self.worker, snapshot_id=snapshot.id,
                               n_desirable=snapshot.n_desirable, n_undesirable=snapshot.n_undesirable)
            return snapshot

    def _load_base(self, base: BaseModelRecord):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("job %s: verifying base model %s (%s)", self.job_id, base.name, base.path)
        verify_base_model(base)  # BaseModelTampered -> the job fails with its message
        tokenizer = AutoTokenizer.from_pretrained(base.path)
        model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32, use_safetensors=True)
        return model, tokenizer

    def _on_progress(self, step: int, total: int, metrics: dict) -> None:
        with self._session() as s:
            if not self.first_step_seen:
                # Steps from here on are (re)computed by this attempt.
                jobs.start_attempt_history(s, job_id=self.job_id, worker=self.worker, first_step=step)
                self.first_step_seen = True
                if step > 1:
                    log.info("job %s: resumed from the checkpoint at step %d", self.job_id, step - 1)
            jobs.record_progress(s, job_id=self.job_id, worker=self.worker, step=step, total=total,
                                 metrics=metrics, attempt=self.attempt)
        log.info("job %s: step %d/%d loss %.4f kl %.4f", self.job_id, step, total, metrics.get("loss") or 0.0,
                 metrics.get("kl") or 0.0)

    def _train(self, live: Liveness, model, tokenizer, rows: list[dict], config):
        from alignment.train import TrainingCancelled, train_kto

        try:
            return train_kto(model, tokenizer, rows, config, on_progress=self._on_progress,
                             should_stop=live.should_stop, checkpoint_dir=checkpoint_dir(self.settings, self.job_id),
                             resume=True)
        except TrainingCancelled:
            self._cancelled(live)
            return None

    def _cancelled(self, live: Liveness) -> str:
        if live.lost:
            raise jobs.LostClaim(live.lost)
        with self._session() as s:
            jobs.cancel(s, job_id=self.job_id, worker=self.worker)
        return "cancelled"

    def _evaluate(self, result, tokenizer, heldout: list[dict], config) -> dict:
        from alignment.evaluate import evaluate_kto

        figures: dict[str, Any] = {"train": result.metrics, "n_heldout": len(heldout)}
        if len(heldout) < 2:
            figures["adapter"] = figures["reference"] = None
            return figures
        w = result.weights
        figures["adapter"] = evaluate_kto(result.model, tokenizer, heldout, config,
                                          desirable_weight=w.desirable, undesirable_weight=w.undesirable)
        figures["reference"] = reference_figures(heldout, w.desirable, w.undesirable)
        log.info("job %s: held-out loss %.4f (reference %.4f), margin %s", self.job_id,
                 figures["adapter"]["loss"], figures["reference"]["loss"], figures["adapter"]["reward_margin"])
        return figures

    def _publish(self, job: AlignmentJob, base: BaseModelRecord, snapshot: Snapshot, result, figures: dict):
        from core.adapters import publish_adapter_version

        staged = staging_dir(self.settings, self.job_id)
        shutil.rmtree(staged, ignore_errors=True)
        result.model.save_pretrained(staged)
        hyperparameters = {**result.config.to_dict(), "lora_target_modules": result.target_modules}
        try:
            return publish_adapter_version(
                session_factory(self.engine), settings=self.settings, adapter_name=job.adapter_name,
                staged_dir=staged, job_id=self.job_id, base_model=base, snapshot=snapshot,
                hyperparameters=hyperparameters,
                class_counts={"desirable": result.weights.n_desirable, "undesirable": result.weights.n_undesirable},
                class_weights=result.weights.to_dict(), eval_metrics=jobs.json_safe(figures),
            )
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def release(self) -> None:
        self.model = None
        gc.collect()


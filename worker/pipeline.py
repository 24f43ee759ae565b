"""One alignment job, top to bottom:

    claim -> snapshot -> split (by prompt, stratified, kept) -> enough held-out rows?
    -> class weights -> verify + load the base -> train (progress, heartbeat, cancel,
    time limit, checkpoints) -> evaluate adapter and reference -> gate (bootstrap)
    -> stage -> publish, fenced -> succeeded

Every status change goes through ``core.jobs``, fenced by the claim token of
this delivery. The publish commits the version row, the ``latest`` move and
the job's ``succeeded`` in one transaction that first checks the token and
the cancel flag under a row lock: a job publishes at most once. A
redelivered job (worker killed, task redelivered or re-queued by the reaper)
keeps its snapshot and resumes from its last checkpoint under
``<data>/checkpoints/<job id>``, fetched from the artifact store when another host wrote it
(``worker.checkpoints``).

Beside this module: ``worker.heldout_split`` (the split and the gate's held-out
figures), ``worker.liveness`` (the heartbeat thread and the stop checks),
``worker.job_errors`` (``JobFailed`` and the artifact store's errors per phase)
and ``worker.job_dirs`` (where a job's files live on this host).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from core import jobs
from core import metrics as telemetry
from core.base_models import local_folder
from core.clock import db_now
from core.db import get_engine, session_factory, session_scope
from core.errors import DomainError, Unavailable
from core.models import AlignmentJob, BaseModelRecord, Snapshot, utcnow
from core.refused import keep_refused
from core.settings import Settings
from core.snapshots import create_snapshot, get_snapshot
from worker.gate import bootstrap as gate_bootstrap
from worker.gate import decide as gate_decide
from worker.gate import refusal_message as gate_refusal
from worker.heldout_split import Split, gate_rows, heldout_shortfall, reference_figures, split_snapshot
from worker.job_dirs import checkpoint_mirror, distributed_dir, staging_dir
from worker.job_errors import JobFailed, store_phase
from worker.liveness import Liveness
from worker.warm import process_cache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What a delivery did: ``claim`` is core.jobs.Claim.outcome; ``status`` the job's status after it."""

    claim: str
    status: str | None = None
    reason: str = ""


# ---------------------------------------------------------------- the job


def run_job(job_id: str, *, settings: Settings, engine: Engine | None = None, worker: str | None = None) -> Outcome:
    """One delivery of job ``job_id``. Raises only transient errors: OperationalError (database unreachable;
    the job stays ours) and Unavailable (the object store down; the job is back in the queue)."""
    engine = engine or get_engine(settings)
    worker = worker or jobs.worker_identity()
    with session_scope(engine) as s:
        claim = jobs.claim_job(s, job_id=job_id, worker=worker, heartbeat_timeout_s=settings.heartbeat_timeout_s)
        job = s.get(AlignmentJob, job_id)
        started_at, sent_at = job.started_at, job.enqueued_at or job.created_at
        # The job's times are on the database's clock (core.clock); deadlines are checked on this host's.
        db_clock = db_now(s)
    offset = utcnow() - db_clock
    if claim.outcome != "run":
        log.info("job %s: %s (%s)", job_id, claim.outcome, claim.reason)
        return Outcome(claim.outcome, reason=claim.reason)

    run = _Run(job_id=job_id, settings=settings, engine=engine, token=claim.token, attempt=claim.attempt,
               timings={"queue_wait": max(0.0, (db_clock - sent_at).total_seconds())})
    deadline = started_at + timedelta(seconds=settings.job_time_limit_s) + offset
    with Liveness(engine, job_id=job_id, token=claim.token, interval_s=settings.heartbeat_interval_s,
                  deadline=deadline) as live:
        try:
            status = run.execute(live)
        except jobs.LostClaim as exc:
            log.warning("job %s: %s; this delivery stops without publishing", job_id, exc.message)
            return Outcome("run", reason=exc.message)
        except OperationalError:
            raise  # transient: the task retries; the job stays ours until then or until reaped
        except Unavailable as exc:
            # The object store is down: not the job's fault. Queued again (a store outage can outlast the
            # task's retries; the reaper then sends it again), and the task retries it like a database blip.
            log.warning("job %s: %s; back to the queue", job_id, exc.message)
            try:
                with session_scope(engine) as s:
                    jobs.requeue(s, job_id=job_id, token=claim.token, reason=exc.message)
            except jobs.LostClaim as lost:
                return Outcome("run", reason=lost.message)
            raise
        except Exception as exc:
            message = exc.message if isinstance(exc, JobFailed | DomainError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, JobFailed | DomainError):
                log.exception("job %s failed", job_id)
            try:
                with session_scope(engine) as s:
                    jobs.fail(s, job_id=job_id, token=claim.token, error=message,
                              eval_metrics=getattr(exc, "figures", None))
            except jobs.LostClaim as lost:
                log.warning("job %s: %s; its failure (%s) is not recorded", job_id, lost.message, message)
                return Outcome("run", reason=lost.message)
            status = "failed"
        finally:
            run.release()
    telemetry.job_ended(status, (utcnow() - offset - started_at).total_seconds())
    if status in jobs.TERMINAL:
        checkpoint_mirror(settings, job_id).remove()
    return Outcome("run", status=status)


@dataclass
class _Run:
    job_id: str
    settings: Settings
    engine: Engine
    token: str
    attempt: int
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    _publish_started: float = 0.0
    model: Any = None
    first_step_seen: bool = False

    def _session(self):
        return session_scope(self.engine)

    @contextmanager
    def _phase(self, name: str, *, save: bool = True):
        """Time a phase into ``timings`` (recorded on the job as it ends, so a slow one shows)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = time.perf_counter() - started
            self.timings["total"] = sum(v for k, v in self.timings.items() if k not in ("total", "queue_wait"))
            if save:
                with contextlib.suppress(jobs.LostClaim, OperationalError), self._session() as s:
                    jobs.record_inputs(s, job_id=self.job_id, token=self.token, timings=self.timings)

    def execute(self, live: Liveness) -> str:
        from alignment.config import ConfigError, KTOConfig
        from alignment.weights import ClassWeightError, class_weights

        with self._session() as s:
            job = jobs.get_job(s, job_id=self.job_id)
            base = s.get(BaseModelRecord, job.base_model_id)
        options = jobs.JobOptions.from_dict(job.options)
        try:
            config = KTOConfig.from_dict(job.config)
        except ConfigError as exc:
            raise JobFailed(f"invalid config: {exc}") from exc
        if "checkpoint_every" not in job.config:
            config = dataclasses.replace(config, checkpoint_every=self.settings.checkpoint_every_steps)
        if "processes" not in job.config:
            config = dataclasses.replace(config, processes=self.settings.train_processes)

        with self._phase("snapshot"), store_phase("the job's snapshot"):
            snapshot = self._snapshot(job)
        with self._phase("split"), store_phase("the job's snapshot"):
            split = split_snapshot(self._session, self.settings, snapshot, options)
        train_counts, heldout_counts = split.counts("train"), split.counts("heldout")
        log.info("job %s: snapshot %s -> train %s / held-out %s (%d prompts)", self.job_id, snapshot.id,
                 train_counts, heldout_counts, len(set(split.heldout_keys)))
        n_train = sum(train_counts.values())
        if n_train < 2:
            raise JobFailed(f"snapshot {snapshot.id} has {n_train} training row(s) after holding out "
                            f"{len(split.heldout)}; collect more feedback")
        if n_train < 2 * config.processes:  # each process pairs KL partners within its own share
            raise JobFailed(f"training on {config.processes} processes needs >= {2 * config.processes} training "
                            f"rows (2 per process), the snapshot has {n_train}: set config.processes lower "
                            "(PROSPECT_TRAIN_PROCESSES is the worker's default) or collect more feedback")
        shortfall = heldout_shortfall(split, options)
        if shortfall and not job.force_publish:
            raise JobFailed(shortfall, {"split": {"train": train_counts, "heldout": heldout_counts}})
        try:
            weights = class_weights(train_counts["desirable"], train_counts["undesirable"],
                                    desirable_weight=config.desirable_weight,
                                    undesirable_weight=config.undesirable_weight,
                                    allow_single_class=config.allow_single_class,
                                    max_class_weight=config.max_class_weight)
        except ClassWeightError as exc:
            raise JobFailed(f"class weights: {exc}") from exc
        with self._session() as s:
            jobs.record_inputs(s, job_id=self.job_id, token=self.token, class_weights=weights.to_dict())

        self._report_phase("loading model")
        with self._phase("load"):
            folder = local_folder(self.settings, base)  # a store-registered model: fetched once, then cached
            model, tokenizer = self._load_base(base, folder)
        with self._phase("train"), store_phase("the job's snapshot and checkpoint"):  # pushes never raise
            result = self._train(live, model, tokenizer, split.train_rows, config,
                                 reload=lambda: self._load_base(base, folder)[0], base_path=str(folder))
        if result is None:
            return self._stopped(live)
        self.model = result.model
        self.timings["reference_pass"] = result.metrics.get("reference_s") or 0.0
        self.timings["train"] -= self.timings["reference_pass"]

        self._report_phase("evaluating")
        with self._phase("evaluate"):
            figures = self._evaluate(result, tokenizer, split, config, options)
        figures["split"] = {"train": train_counts, "heldout": heldout_counts}
        if job.force_publish:
            gate = figures["gate"]
            figures["gate"] = {**gate, "would_pass": gate["passed"], "passed": None, "skipped": "force_publish"}
        elif not figures["gate"]["passed"]:
            with store_phase("the refused adapter"):
                self._keep_refused(result)  # for POST /v1/jobs/{id}/publish (core.refused)
            raise JobFailed(gate_refusal(figures["gate"]["reasons"], snapshot_id=snapshot.id), figures)
        if live.should_stop():
            return self._stopped(live)

        self._report_phase("publishing")
        live.stop_heartbeat()  # publishing takes seconds; the fence, not the heartbeat, decides
        self._publish_started = time.perf_counter()
        try:
            # The files are uploaded before the version row is inserted, and a failure rolls the row back: an
            # outage here leaves no version, and the next delivery publishes afresh (fenced by its own claim).
            with store_phase("the adapter's files"):
                version = self._publish(job, base, snapshot, result, figures)
        except jobs.CancelRequested:
            log.info("job %s: cancelled just before its publish committed; nothing published", self.job_id)
            return self._stopped(live)
        log.info("job %s succeeded: %s v%d", self.job_id, version.adapter_name, version.version)
        return "succeeded"

    def _snapshot(self, job: AlignmentJob) -> Snapshot:
        """The job's snapshot; taken now (and recorded at once) when it has none, so a
        redelivery trains on the same rows and can resume its checkpoint."""
        with self._session() as s:
            if job.snapshot_id is not None:
                return get_snapshot(s, snapshot_id=job.snapshot_id)
        log.info("job %s: taking a snapshot (filters %s)", self.job_id, job.snapshot_filters or "none")
        # Built outside any transaction (the file is read through its own connection), then recorded.
        with self._session() as s:
            snapshot = create_snapshot(s, settings=self.settings, filters=job.snapshot_filters or None,
                                       options=job.snapshot_options or None)
            jobs.record_inputs(s, job_id=self.job_id, token=self.token, snapshot_id=snapshot.id,
                               n_desirable=snapshot.n_desirable, n_undesirable=snapshot.n_undesirable)
            return snapshot

    def _load_base(self, base: BaseModelRecord, folder: Path):
        """A fresh copy of the verified base in ``folder`` (BaseModelTampered -> the job fails with its
        message); warm when this worker verified and loaded it for an earlier job (worker.warm)."""
        log.info("job %s: base model %s (%s)", self.job_id, base.name, folder)
        return process_cache(self.settings.warm_models).get(base, folder=folder)[:2]

    def _keep_refused(self, result) -> None:
        keep_refused(self.settings, job_id=self.job_id, save=result.model.save_pretrained,
                     hyperparameters={**result.config.to_dict(), "lora_target_modules": result.target_modules},
                     class_counts={"desirable": result.weights.n_desirable,
                                   "undesirable": result.weights.n_undesirable},
                     class_weights=result.weights.to_dict())

    def _report_phase(self, phase: str) -> None:
        with self._session() as s:
            jobs.set_phase(s, job_id=self.job_id, token=self.token, phase=phase)

    def _on_progress(self, step: int, total: int, metrics: dict) -> None:
        with self._session() as s:
            if not self.first_step_seen:
                # Steps from here on are (re)computed by this attempt.
                jobs.start_attempt_history(s, job_id=self.job_id, token=self.token, first_step=step)
                self.first_step_seen = True
                if step > 1:
                    log.info("job %s: resumed from the checkpoint at step %d", self.job_id, step - 1)
            jobs.record_progress(s, job_id=self.job_id, token=self.token, step=step, total=total,
                                 metrics=metrics, attempt=self.attempt)
        telemetry.training_step(metrics)
        log.info("job %s: step %d/%d loss %.4f kl %.4f", self.job_id, step, total, metrics.get("loss") or 0.0,
                 metrics.get("kl") or 0.0)

    def _train(self, live: Liveness, model, tokenizer, rows: Callable[[], Iterator[dict]], config, *, reload,
               base_path: str):
        from alignment.train import CheckpointMismatch, TrainingCancelled, train_kto
        from worker.train_launch import LaunchRefused, train_in_processes

        mirror = checkpoint_mirror(self.settings, self.job_id)
        ckpt = mirror.folder
        mirror.restore()  # written by a worker on another host that died
        # "reference pass n/N" before step 1; on N processes torchrun runs it (worker.train_launch).
        # Each checkpoint is copied to the store, for another host.
        train = functools.partial(train_kto, resume=True) if config.processes == 1 else functools.partial(
            train_in_processes, base_path=base_path, work=distributed_dir(self.settings, self.job_id, self.token))
        train = functools.partial(train, on_phase=self._report_phase, on_progress=self._on_progress,
                                  should_stop=live.should_stop, checkpoint_dir=ckpt, on_checkpoint=mirror.push)
        try:
            try:
                return train(model, tokenizer, rows(), config)
            except CheckpointMismatch as exc:
                # E.g. written by a GPU worker in bf16, and this is a CPU worker: start afresh.
                log.warning("job %s: %s; starting from scratch", self.job_id, exc)
                mirror.remove()
                return train(reload(), tokenizer, rows(), config)
        except TrainingCancelled:
            return None
        except LaunchRefused as exc:
            raise JobFailed(str(exc)) from exc

    def _stopped(self, live: Liveness) -> str:
        """Why should_stop said stop, as this delivery's outcome."""
        if live.lost:
            raise jobs.LostClaim(live.lost)
        if live.unreachable is not None:
            raise live.unreachable  # transient: retried, and the next attempt resumes from the checkpoint
        if live.timed_out:
            raise JobFailed(f"the job ran past its wall-clock limit of {self.settings.job_time_limit_s:g} s "
                            "(PROSPECT_JOB_TIME_LIMIT_S); lower max_steps or raise the limit")
        with self._session() as s:
            jobs.cancel(s, job_id=self.job_id, token=self.token)
        return "cancelled"

    def _evaluate(self, result, tokenizer, split: Split, config, options: jobs.JobOptions) -> dict:
        """Adapter and reference on the held-out rows, weighted by the held-out rows' own class counts
        (training weights would let a collapsed adapter win when the held-out ratio differs)."""
        from alignment.evaluate import evaluate_kto
        from alignment.weights import class_weights

        figures: dict[str, Any] = {"train": result.metrics, "n_heldout": len(split.heldout)}
        n = split.counts("heldout")
        if min(n.values()) < 2:  # only with force_publish: nothing to compare on
            figures["adapter"] = figures["reference"] = None
            figures["gate"] = {"passed": False, "reasons": [heldout_shortfall(split, options) or "no held-out rows"]}
            return figures
        w = class_weights(n["desirable"], n["undesirable"])
        adapter = evaluate_kto(result.model, tokenizer, split.heldout, config, desirable_weight=w.desirable,
                               undesirable_weight=w.undesirable, return_examples=True)
        examples = adapter.pop("examples")
        figures["adapter"] = adapter
        figures["reference"] = reference_figures(split.heldout, w.desirable, w.undesirable)
        stats = gate_bootstrap(gate_rows(split, examples, w), seed=config.seed)
        reasons = gate_decide(stats, min_loss_improvement=options.gate_min_loss_improvement,
                              min_reward_margin=options.gate_min_reward_margin)
        figures["gate"] = {"passed": not reasons, "reasons": reasons, "heldout_counts": n,
                           "heldout_weights": w.to_dict(), **stats, "options": options.to_dict()}
        log.info("job %s: held-out loss %.4f (reference %.4f); improvement %s, margin %s -> %s", self.job_id,
                 adapter["loss"], figures["reference"]["loss"], stats["loss_improvement"],
                 stats["reward_margin"], "pass" if not reasons else "refuse")
        return figures

    def _publish(self, job: AlignmentJob, base: BaseModelRecord, snapshot: Snapshot, result, figures: dict):
        from core.adapters import publish_adapter_version

        staged = staging_dir(self.settings, self.job_id, self.token)
        shutil.rmtree(staged, ignore_errors=True)
        result.model.save_pretrained(staged)
        hyperparameters = {**result.config.to_dict(), "lora_target_modules": result.target_modules}
        safe_figures = jobs.json_safe(figures)

        def fence(session, row) -> None:
            # Same transaction as the version row: it commits only if this delivery still holds the
            # job (claim token) and no cancel arrived; the job is marked succeeded in that commit.
            self.timings["publish"] = time.perf_counter() - self._publish_started
            self.timings["total"] += self.timings["publish"]
            jobs.record_inputs(session, job_id=self.job_id, token=self.token, timings=self.timings)
            jobs.succeed(session, job_id=self.job_id, token=self.token, adapter_version_id=row.id,
                         eval_metrics=safe_figures)
            if job.policy_id is not None:
                self._start_policy_rollout(session, row, job.policy_id)

        try:
            return publish_adapter_version(
                session_factory(self.engine), settings=self.settings, adapter_name=job.adapter_name,
                staged_dir=staged, job_id=self.job_id, base_model=base, snapshot=snapshot,
                hyperparameters=hyperparameters,
                class_counts={"desirable": result.weights.n_desirable, "undesirable": result.weights.n_undesirable},
                class_weights=result.weights.to_dict(), eval_metrics=safe_figures, before_commit=fence,
                base_model_name_or_path=jobs.JobOptions.from_dict(job.options).base_model_name_or_path,
            )
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def _start_policy_rollout(self, session, version, policy_id: str) -> None:
        """The rollout the job's policy asks for, committed with the version (or not at all)."""
        from core.models import TrainingPolicy
        from core.rollouts import on_version_published

        try:
            with session.begin_nested():
                on_version_published(session, version, session.get(TrainingPolicy, policy_id))
        except DomainError as exc:  # the version still publishes; the rollout can be started by hand
            log.warning("job %s: the policy's rollout did not start: %s", self.job_id, exc.message)

    def release(self) -> None:
        self.model = None
        gc.collect()

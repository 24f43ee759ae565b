"""core.jobs: every status transition, the attempts cap, the one-running-per-adapter rule, the reaper."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from core import jobs
from core.db import session_scope
from core.errors import Conflict, InvalidInput, NotFound
from core.models import AlignmentJob, BaseModelRecord, JobMetric, utcnow

ME = "host-a:100"
OTHER = "host-b:200"
TIMEOUT = 60.0


@pytest.fixture
def base_model(engine) -> str:
    with session_scope(engine) as s:
        s.add(BaseModelRecord(name="tiny", source="/m", path="/m", sha256="0" * 64))
    return "tiny"


def _job(engine, adapter="support-bot", **kwargs) -> str:
    with session_scope(engine) as s:
        return jobs.create_job(s, adapter_name=adapter, base_model_name="tiny", **kwargs).id


def _claim(engine, job_id, worker=ME, **kwargs) -> jobs.Claim:
    with session_scope(engine) as s:
        return jobs.claim_job(s, job_id=job_id, worker=worker, heartbeat_timeout_s=TIMEOUT, **kwargs)


def _get(engine, job_id) -> AlignmentJob:
    with session_scope(engine) as s:
        return jobs.get_job(s, job_id=job_id)


def test_create_job_validates_inputs(engine, base_model):
    job_id = _job(engine, config={"beta": 0.2}, options={"heldout_fraction": 0.3})
    job = _get(engine, job_id)
    assert (job.status, job.attempts, job.max_attempts, job.config) == ("queued", 0, 3, {"beta": 0.2})
    assert job.options == {"heldout_fraction": 0.3, "gate_min_loss_improvement": 0.01, "gate_min_reward_margin": 0.0,
                           "gate_min_heldout_per_class": 10}
    with session_scope(engine) as s:
        with pytest.raises(NotFound, match="no base model named 'nope'"):
            jobs.create_job(s, adapter_name="a", base_model_name="nope")
        with pytest.raises(InvalidInput, match="invalid adapter name"):
            jobs.create_job(s, adapter_name="../etc", base_model_name="tiny")
        with pytest.raises(InvalidInput, match="unknown job option"):
            jobs.create_job(s, adapter_name="a", base_model_name="tiny", options={"gate": 1})
        with pytest.raises(InvalidInput, match="heldout_fraction must be in"):
            jobs.create_job(s, adapter_name="a", base_model_name="tiny", options={"heldout_fraction": 1})
        with pytest.raises(InvalidInput, match="aggregation"):
            jobs.create_job(s, adapter_name="a", base_model_name="tiny", snapshot_options={"aggregation": "x"})
        with pytest.raises(NotFound, match="no snapshot"):
            jobs.create_job(s, adapter_name="a", base_model_name="tiny", snapshot_id="missing")
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(AlignmentJob)) == 1


def test_claim_runs_once_then_skips_when_finished(engine, base_model):
    job_id = _job(engine)
    claim = _claim(engine, job_id)
    assert (claim.outcome, claim.attempt) == ("run", 1)
    job = _get(engine, job_id)
    assert (job.status, job.attempts, job.worker, job.claim_token) == ("running", 1, ME, claim.token)
    assert job.started_at is not None and job.heartbeat_at is not None
    with session_scope(engine) as s:
        jobs.succeed(s, job_id=job_id, token=claim.token, adapter_version_id=None, eval_metrics={"loss": float("nan")})
    job = _get(engine, job_id)
    assert (job.status, job.eval_metrics) == ("succeeded", {"loss": None})
    assert _claim(engine, job_id).outcome == "skip"
    assert _get(engine, job_id).attempts == 1


def test_one_running_job_per_adapter_is_a_database_rule(engine, base_model):
    first, second, other_adapter = _job(engine), _job(engine), _job(engine, adapter="other")
    first_claim = _claim(engine, first)
    assert first_claim.outcome == "run"
    busy = _claim(engine, second, worker=OTHER)
    assert busy.outcome == "busy"
    job = _get(engine, second)
    assert (job.status, job.attempts, job.worker) == ("queued", 0, None)
    assert _claim(engine, other_adapter, worker=OTHER).outcome == "run"  # another adapter is free
    # The index itself refuses a second running row, whoever writes it.
    with pytest.raises(IntegrityError, match="(?i)unique"), session_scope(engine) as s:
        s.get(AlignmentJob, second).status = "running"
    with session_scope(engine) as s:
        jobs.fail(s, job_id=first, token=first_claim.token, error="boom")
    assert _claim(engine, second, worker=OTHER).outcome == "run"
    with session_scope(engine) as s:
        running = s.scalars(select(AlignmentJob.id).where(AlignmentJob.status == "running")).all()
    assert sorted(running) == sorted([second, other_adapter])


def test_redelivery_while_the_holder_lives_is_a_duplicate(engine, base_model):
    job_id = _job(engine)
    assert _claim(engine, job_id, worker=OTHER).outcome == "run"
    assert _claim(engine, job_id).outcome == "duplicate"
    assert _get(engine, job_id).attempts == 1
    # Once its heartbeat is stale the job is taken over as a new attempt.
    later = utcnow() + timedelta(seconds=TIMEOUT + 1)
    claim = _claim(engine, job_id, now=later)
    assert (claim.outcome, claim.attempt) == ("run", 2)
    job = _get(engine, job_id)
    assert (job.status, job.worker, job.attempts) == ("running", ME, 2)


def test_redelivery_after_a_local_pool_process_died_takes_over_at_once(engine, base_model):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    job_id = _job(engine)
    assert _claim(engine, job_id, worker=f"{socket.gethostname()}:{dead.pid}").outcome == "run"
    claim = _claim(engine, job_id)  # heartbeat is fresh, but the pid is gone
    assert (claim.outcome, claim.attempt) == ("run", 2)


def test_attempts_cap_fails_with_the_reason(engine, base_model):
    with session_scope(engine) as s:
        job_id = jobs.create_job(s, adapter_name="a", base_model_name="tiny", max_attempts=2).id
    now = utcnow()
    assert _claim(engine, job_id, worker="w:1", now=now).attempt == 1
    assert _claim(engine, job_id, worker="w:2", now=now + timedelta(seconds=TIMEOUT + 1)).attempt == 2
    claim = _claim(engine, job_id, worker="w:3", now=now + timedelta(seconds=2 * TIMEOUT + 2))
    assert claim.outcome == "skip"
    job = _get(engine, job_id)
    assert (job.status, job.attempts) == ("failed", 2)
    assert "gave up after 2 attempt(s)" in job.error and "w:2" in job.error


def test_cancel_queued_at_once_running_on_request(engine, base_model):
    queued, running = _job(engine, adapter="a"), _job(engine, adapter="b")
    with session_scope(engine) as s:
        jobs.request_cancel(s, job_id=queued)
    job = _get(engine, queued)
    assert (job.status, job.finished_at is not None) == ("cancelled", True)
    assert _claim(engine, queued).outcome == "skip"  # its task, when delivered, does nothing
    assert _get(engine, queued).attempts == 0

    token = _claim(engine, running).token
    with session_scope(engine) as s:
        assert jobs.record_progress(s, job_id=running, token=token, step=1, total=5, metrics={}, attempt=1) is False
        jobs.request_cancel(s, job_id=running)
    assert _get(engine, running).status == "running"
    with session_scope(engine) as s:
        assert jobs.record_progress(s, job_id=running, token=token, step=2, total=5, metrics={}, attempt=1) is True
        assert jobs.is_cancel_requested(s, job_id=running) is True
        jobs.cancel(s, job_id=running, token=token)
    assert _get(engine, running).status == "cancelled"
    with session_scope(engine) as s:
        jobs.request_cancel(s, job_id=running)  # idempotent
    done = _job(engine, adapter="c")
    token = _claim(engine, done).token
    with session_scope(engine) as s:
        jobs.fail(s, job_id=done, token=token, error="x")
    with session_scope(engine) as s, pytest.raises(Conflict, match="already failed"):
        jobs.request_cancel(s, job_id=done)


def test_progress_history_and_resume(engine, base_model):
    job_id = _job(engine)
    first = _claim(engine, job_id).token
    with session_scope(engine) as s:
        jobs.start_attempt_history(s, job_id=job_id, token=first, first_step=1)
        for step in range(1, 6):
            jobs.record_progress(s, job_id=job_id, token=first, step=step, total=8,
                                 metrics={"loss": 0.5 - step / 100, "kl": float("inf")}, attempt=1)
    job = _get(engine, job_id)
    assert (job.progress_step, job.progress_total, job.resumed_from_step) == (5, 8, None)
    assert job.metrics == {"loss": 0.45, "kl": None}
    # The worker dies; the next attempt resumes from the checkpoint at step 3 and recomputes 4, 5, ...
    later = utcnow() + timedelta(seconds=TIMEOUT + 1)
    second = _claim(engine, job_id, worker=OTHER, now=later)
    assert second.attempt == 2
    with session_scope(engine) as s:
        jobs.start_attempt_history(s, job_id=job_id, token=second.token, first_step=4)
        jobs.record_progress(s, job_id=job_id, token=second.token, step=4, total=8, metrics={"loss": 0.1}, attempt=2)
        rows = [(m.step, m.attempt) for m in jobs.list_metrics(s, job_id=job_id)]
    assert rows == [(1, 1), (2, 1), (3, 1), (4, 2)]
    assert _get(engine, job_id).resumed_from_step == 3
    # The first delivery, if it still ran, may no longer write anything.
    with session_scope(engine) as s, pytest.raises(jobs.LostClaim):
        jobs.record_progress(s, job_id=job_id, token=first, step=5, total=8, metrics={}, attempt=1)


def test_the_claim_token_fences_not_the_worker_name(engine, base_model):
    """Two deliveries in one process (a retry after a transient error) share the worker name; only the
    token of the latest claim may write. The stale one cannot finish or publish the job."""
    job_id = _job(engine)
    old = _claim(engine, job_id)
    new = _claim(engine, job_id)  # same worker: its own earlier delivery ended, taken over
    assert (new.outcome, new.attempt) == ("run", 2) and new.token != old.token
    for call in (lambda s: jobs.heartbeat(s, job_id=job_id, token=old.token),
                 lambda s: jobs.succeed(s, job_id=job_id, token=old.token, adapter_version_id=None),
                 lambda s: jobs.cancel(s, job_id=job_id, token=old.token)):
        with session_scope(engine) as s, pytest.raises(jobs.LostClaim):
            call(s)
    # Reaped: the token is cleared, so the reaped holder is fenced off even before anyone claims again.
    with session_scope(engine) as s:
        reaped = jobs.reap_stale_jobs(s, heartbeat_timeout_s=TIMEOUT, now=utcnow() + timedelta(seconds=TIMEOUT + 1))
    assert reaped.requeued == [job_id] and _get(engine, job_id).claim_token is None
    with session_scope(engine) as s, pytest.raises(jobs.LostClaim):
        jobs.heartbeat(s, job_id=job_id, token=new.token)


def test_succeed_refuses_when_a_cancel_arrived(engine, base_model):
    job_id = _job(engine)
    token = _claim(engine, job_id).token
    with session_scope(engine) as s:
        jobs.request_cancel(s, job_id=job_id)
    with session_scope(engine) as s, pytest.raises(jobs.CancelRequested):
        jobs.succeed(s, job_id=job_id, token=token, adapter_version_id=None)
    assert _get(engine, job_id).status == "running"  # the caller then records the cancel


def test_gate_options_are_validated(engine, base_model):
    with session_scope(engine) as s:
        for name in ("gate_min_loss_improvement", "gate_min_reward_margin"):
            with pytest.raises(InvalidInput, match=f"job option {name} must be >= 0"):
                jobs.create_job(s, adapter_name="a", base_model_name="tiny", options={name: -0.1})
        with pytest.raises(InvalidInput, match="gate_min_heldout_per_class must be an integer >= 2"):
            jobs.create_job(s, adapter_name="a", base_model_name="tiny", options={"gate_min_heldout_per_class": 1})
        with pytest.raises(InvalidInput, match="gate_min_heldout_per_class must be an integer >= 2"):
            jobs.create_job(s, adapter_name="a", base_model_name="tiny", options={"gate_min_heldout_per_class": 2.5})
        with pytest.raises(InvalidInput, match="snapshot_id or snapshot_filters"):
            jobs.create_job(s, adapter_name="a", base_model_name="tiny", snapshot_id="x",
                            snapshot_filters={"model": "m"})
        with pytest.raises(InvalidInput, match="invalid snapshot filters"):
            jobs.create_job(s, adapter_name="a", base_model_name="tiny", snapshot_filters={"colour": "red"})
        job = jobs.create_job(s, adapter_name="a", base_model_name="tiny", snapshot_filters={"model": "m"},
                              options={"gate_min_heldout_per_class": 25})
    assert (job.snapshot_filters, job.options["gate_min_heldout_per_class"]) == ({"model": "m"}, 25)


def test_reaper_requeues_or_fails_stale_jobs(engine, base_model):
    now = utcnow()
    with session_scope(engine) as s:
        capped = jobs.create_job(s, adapter_name="capped", base_model_name="tiny", max_attempts=1).id
    stale, fresh = _job(engine, adapter="stale"), _job(engine, adapter="fresh")
    unsent = _job(engine, adapter="unsent")
    lost = _job(engine, adapter="lost")  # sent, but its message vanished (held by a killed worker)
    waiting = _job(engine, adapter="waiting")  # sent, and a delivery saw it lately (busy, retrying)
    with session_scope(engine) as s:
        jobs.mark_enqueued(s, job_id=lost, task_id="t1", now=now)
        jobs.mark_enqueued(s, job_id=waiting, task_id="t2", now=now)
        jobs.touch_queued(s, job_id=waiting, now=now + timedelta(seconds=TIMEOUT))
    for job_id in (capped, stale):
        _claim(engine, job_id, worker=OTHER, now=now)
    _claim(engine, fresh, worker=OTHER, now=now + timedelta(seconds=TIMEOUT))

    with session_scope(engine) as s:
        reaped = jobs.reap_stale_jobs(s, heartbeat_timeout_s=TIMEOUT, now=now + timedelta(seconds=TIMEOUT + 1))
    assert (reaped.requeued, reaped.finished) == ([stale], [capped])
    assert sorted(reaped.unsent) == sorted([unsent, lost])
    assert _get(engine, stale).status == "queued"
    assert "worker lost" in _get(engine, stale).error
    failed = _get(engine, capped)
    assert failed.status == "failed" and "worker lost after 1 attempt(s)" in failed.error
    assert _get(engine, fresh).status == "running"
    # The re-queued job's next delivery counts attempt 2.
    assert _claim(engine, stale, now=now + timedelta(seconds=TIMEOUT + 2)).attempt == 2


def test_list_jobs_and_metrics(engine, base_model):
    a, b = _job(engine, adapter="a"), _job(engine, adapter="b")
    _claim(engine, a)
    with session_scope(engine) as s:
        assert [j.id for j in jobs.list_jobs(s, status="running")] == [a]
        assert [j.id for j in jobs.list_jobs(s, adapter_name="b")] == [b]
        assert {j.id for j in jobs.list_jobs(s)} == {a, b}
        with pytest.raises(InvalidInput, match="unknown status"):
            jobs.list_jobs(s, status="done")
        with pytest.raises(NotFound):
            jobs.list_metrics(s, job_id="nope")
        assert s.scalar(select(func.count()).select_from(JobMetric)) == 0


def test_base_model_name_or_path_option_is_a_string_and_stored_only_when_given():
    from core.errors import InvalidInput

    assert "base_model_name_or_path" not in jobs.JobOptions.from_dict({}).to_dict()
    given = jobs.JobOptions.from_dict({"base_model_name_or_path": "org/model", "heldout_fraction": 0.3})
    assert given.to_dict()["base_model_name_or_path"] == "org/model" and given.heldout_fraction == 0.3
    for bad in (3, "", "a\nb", "x" * 1001):
        with pytest.raises(InvalidInput, match="base_model_name_or_path"):
            jobs.JobOptions.from_dict({"base_model_name_or_path": bad})


def test_heartbeats_and_the_reaper_share_the_database_clock(engine, base_model, monkeypatch):
    """A worker host whose clock runs 10 minutes slow is alive; the reaper on a correct host must not take
    its job over (on host clocks its heartbeat looked 10 minutes old)."""
    import core.clock
    import core.job_claims
    import core.models
    from core.clock import db_now

    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite is one host's embedded file: its clock is that host's")
    job_id = _job(engine)

    def slow():
        return utcnow() - timedelta(minutes=10)

    with monkeypatch.context() as m:  # the worker host
        for module in (jobs, core.job_claims, core.models, core.clock):
            m.setattr(module, "utcnow", slow, raising=False)
        claim = _claim(engine, job_id)
        with session_scope(engine) as s:
            jobs.heartbeat(s, job_id=job_id, token=claim.token)
    with session_scope(engine) as s:  # the reaper's host
        assert jobs.reap_stale_jobs(s, heartbeat_timeout_s=TIMEOUT).requeued == []
    assert _get(engine, job_id).status == "running"
    with session_scope(engine) as s:  # a worker really silent for two minutes is still taken over
        later = db_now(s) + timedelta(minutes=2)
        assert jobs.reap_stale_jobs(s, heartbeat_timeout_s=TIMEOUT, now=later).requeued == [job_id]

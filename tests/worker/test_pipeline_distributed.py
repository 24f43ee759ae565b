"""A job on 2 processes (torchrun, gloo): trains, publishes once; a cancel stops every rank; too few rows
per process fail before anything loads, saying how to fix it."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import pytest

from core import jobs
from core.db import session_scope
from core.models import utcnow
from tests.processes import alive
from tests.worker.jobkit import TINY_CONFIG
from tests.worker.test_pipeline import _job, _state, stack, tiny_dir  # noqa: F401 - fixtures
from worker.job_dirs import checkpoint_dir
from worker.pipeline import run_job


@pytest.mark.slow
def test_a_job_on_two_processes_by_setting_trains_and_publishes(stack):  # noqa: F811
    settings = stack["settings"].model_copy(update={"train_processes": 2})
    job_id = _job(stack["engine"])
    outcome = run_job(job_id, settings=settings)
    job, n_metrics, n_versions = _state(stack["engine"], job_id)
    assert (outcome.status, job.status, job.error) == ("succeeded", "succeeded", None)
    assert (job.progress_step, job.progress_total, n_metrics, n_versions) == (12, 12, 12, 1)
    assert job.eval_metrics["train"]["processes"] == 2
    assert job.eval_metrics["adapter"]["loss"] < job.eval_metrics["reference"]["loss"]
    assert not list((settings.data_path / "distributed").glob(f"{job_id}-*"))  # the rows' copy is gone
    assert not checkpoint_dir(settings, job_id).exists()


@pytest.mark.slow
def test_cancelling_a_job_on_two_processes_stops_every_rank(stack):  # noqa: F811
    settings, engine = stack["settings"], stack["engine"]
    job_id = _job(engine, config={**TINY_CONFIG, "max_steps": 500, "processes": 2})
    ranks_dirs = settings.data_path / "distributed"
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(o=run_job(job_id, settings=settings)))
    thread.start()
    pids: list[int] = []
    try:
        for _ in range(1200):
            if _state(engine, job_id)[0].progress_step >= 2:
                pids = [int(f.read_text()) for f in ranks_dirs.glob(f"{job_id}-*/ranks/*.pid")]
                if len(pids) == 2:
                    break
            time.sleep(0.1)
        with session_scope(engine) as s:
            jobs.request_cancel(s, job_id=job_id)
    finally:
        thread.join(timeout=120)
    job, _, n_versions = _state(engine, job_id)
    assert len(pids) == 2 and outcome["o"].status == "cancelled" and job.status == "cancelled"
    assert n_versions == 0 and job.progress_step < 500
    assert not any(alive(pid) for pid in pids), "a rank outlived the cancel"


def test_too_few_rows_per_process_fail_up_front(stack):  # noqa: F811
    job_id = _job(stack["engine"], config={**TINY_CONFIG, "processes": 15})
    assert run_job(job_id, settings=stack["settings"]).status == "failed"
    job, n_metrics, _ = _state(stack["engine"], job_id)
    assert "training on 15 processes needs >= 30 training rows (2 per process), the snapshot has 28" in job.error
    assert "set config.processes lower" in job.error and n_metrics == 0


CRASH_RANK_1 = '''
import importlib.abc, importlib.util, os, sys
if os.environ.get("RANK") == "1":  # rank 1 only: its first collective raises; rank 0 waits in gloo
    class _Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "alignment.distributed":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            run = spec.loader.exec_module
            def exec_module(module):
                run(module)
                def boom(self, tensor):
                    raise RuntimeError("rank 1 failed on purpose")
                module.World.all_reduce_ = boom
            spec.loader.exec_module = exec_module
            return spec
    sys.meta_path.insert(0, _Hook())
'''


@pytest.mark.slow
def test_an_exception_in_one_rank_fails_the_job_with_its_error(stack, tmp_path, monkeypatch):  # noqa: F811
    """Rank 1 raises mid-training while rank 0 waits for it in a collective: the job must fail, saying
    why, rather than hang; no rank outlives it and the rows' copy is gone."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CRASH_RANK_1)
    monkeypatch.setenv("PYTHONPATH", f"{hook}:{os.environ.get('PYTHONPATH', '')}")
    settings, engine = stack["settings"], stack["engine"]
    job_id = _job(engine, config={**TINY_CONFIG, "processes": 2})
    pids: list[int] = []
    ranks_dirs = settings.data_path / "distributed"
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(o=run_job(job_id, settings=settings)))
    thread.start()
    while thread.is_alive():
        pids = sorted({*pids, *(int(f.read_text() or 0) for f in ranks_dirs.glob(f"{job_id}-*/ranks/*.pid"))} - {0})
        thread.join(timeout=0.2)
    job, _, n_versions = _state(engine, job_id)
    assert (outcome["o"].status, job.status, n_versions) == ("failed", "failed", 0)
    assert "training on 2 processes failed" in job.error and "rank 1 failed on purpose" in job.error
    assert not any(alive(pid) for pid in pids), "a rank outlived the failure"
    assert not list((settings.data_path / "distributed").glob(f"{job_id}-*"))


class _Killed(BaseException):
    """Not an Exception: leaves the job 'running', as a delivery that stopped answering does."""


def test_two_deliveries_of_one_job_on_one_host_never_share_a_work_folder(stack, monkeypatch):  # noqa: F811
    """Delivery A is reaped while alive; B, on the same host (concurrency 2), trains the job on 2
    processes. Each launcher empties its work folder before and removes it after: with one folder per
    job, A stopping (or B starting) removed the other's rows, events and result mid-run."""
    from worker import train_launch

    settings, engine = stack["settings"], stack["engine"]
    job_id = _job(engine, config={**TINY_CONFIG, "processes": 2})
    works: list = []

    def launch(*args, work, **kwargs):
        works.append(work)
        raise _Killed

    monkeypatch.setattr(train_launch, "_launch", launch)
    with pytest.raises(_Killed):
        run_job(job_id, settings=settings, worker="host:1")
    with session_scope(engine) as s:
        jobs.reap_stale_jobs(s, heartbeat_timeout_s=settings.heartbeat_timeout_s,
                             now=utcnow() + timedelta(seconds=settings.heartbeat_timeout_s + 1))
    with pytest.raises(_Killed):
        run_job(job_id, settings=settings, worker="host:2")
    assert len(works) == 2 and works[0] != works[1]
    assert all(w.parent == settings.data_path / "distributed" and w.name.startswith(job_id) for w in works)

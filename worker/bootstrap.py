"""Work a worker does once when it starts, without delaying its first task.

1. ``core.adapters.cleanup_leftovers``: half-published adapter folders of a
   crashed worker are removed; ``core.artifact_sweep`` removes unreferenced
   objects from the artifact store (an S3 bucket too).
2. When ``register_bundled_model`` is set: the bundled SmolLM2-135M-Instruct is
   converted once to safetensors under ``<models_dir>/<bundled_model_name>``
   and registered as the base model ``bundled_model_name``. Conversion is
   atomic (``alignment.bundled``) and registration tolerates a concurrent
   worker doing the same.

It runs as a child process (``python -m worker.bootstrap``) started from a
thread on ``worker_ready``: the worker consumes tasks meanwhile, the worker's
own process never loads torch (its pool processes fork from it), and a
conversion that hangs is killed after ``BOOTSTRAP_TIMEOUT_S``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import select

from core import jobs
from core.base_models import (
    PREPARING,
    READY,
    fail_preparing,
    finish_preparing,
    get_base_model_or_none,
    local_folder,
)
from core.db import get_engine, session_scope
from core.errors import DomainError
from core.logging import configure_logging
from core.models import AlignmentJob, BaseModelRecord
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

BOOTSTRAP_TIMEOUT_S = 15 * 60
ROOT = Path(__file__).resolve().parent.parent


PART_GRACE_S = 3600.0  # a base model's fetch folder untouched this long belongs to a dead process


def cleanup(settings: Settings) -> list[Path]:
    """Half-published adapter folders; checkpoints, staging and distributed work folders of jobs that
    are not queued or running (a job that may still resume keeps its checkpoint; a work folder holds
    a copy of training rows, which erasure does not reach); base-model fetches a killed worker left.
    Returns what was removed."""
    from core.adapters import cleanup_leftovers
    from core.artifact_store import get_store
    from core.artifact_sweep import sweep_orphans
    from core.erasure import remove_stale_copies

    engine = get_engine(settings)
    with session_scope(engine) as s:
        removed = list(cleanup_leftovers(settings, s))
    with session_scope(engine) as s:  # objects of crashed uploads, finished jobs' checkpoints in the store
        sweep_orphans(get_store(settings), s, grace_s=settings.artifact_orphan_grace_s)
    # checkpoints/<job id>, staging/job-<job id>-<claim token>, distributed/<job id>-<token> (killed -9)
    for folder, job_of in ((settings.data_path / "checkpoints", lambda name: name),
                           (settings.data_path / "staging", lambda name: name.removeprefix("job-").split("-")[0]),
                           (settings.data_path / "distributed", lambda name: name.split("-")[0])):
        if not folder.is_dir():
            continue
        with session_scope(engine) as s:
            active = set(s.scalars(select(AlignmentJob.id).where(AlignmentJob.status.in_(("queued", "running")))))
        for child in folder.iterdir():
            if child.is_dir() and job_of(child.name) not in active:
                log.info("removing leftover %s", child)
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    removed += _stale_fetches(settings.data_path / "base-models", grace_s=PART_GRACE_S)
    removed += remove_stale_copies(settings)  # erasure copies and spool files of rows (core.erasure)
    return removed


def _stale_fetches(folder: Path, *, grace_s: float) -> list[Path]:
    """``.<digest>.<id>.part`` folders (core.base_model_store) of a fetch killed mid-way: a model's size
    each. One still written by another process on this host has a file modified within ``grace_s``."""
    removed: list[Path] = []
    now = time.time()
    for child in folder.glob(".*.part") if folder.is_dir() else ():
        try:
            newest = max([child.stat().st_mtime, *(p.stat().st_mtime for p in child.rglob("*"))])
        except FileNotFoundError:  # finished (renamed) or removed meanwhile
            continue
        if child.is_dir() and now - newest >= grace_s:
            log.info("removing an interrupted base model fetch %s", child)
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def ensure_bundled_model(settings: Settings) -> BaseModelRecord:
    """Convert (once) and register the bundled model; returns its record. Its name may already be registered
    as ``preparing`` (a job asked for it): that record becomes ready, and its waiting jobs start. When the
    conversion fails the record is ``failed`` with the error, and the jobs waiting for it fail with it."""
    from alignment.bundled import convert_bundled

    engine = get_engine(settings)
    name = settings.bundled_model_name
    with session_scope(engine) as s:
        existing = get_base_model_or_none(s, name=name)
    if existing is not None and existing.status == READY:
        log.info("bundled model already registered as %s", name)
        local_folder(settings, existing)  # registered by another host: converted here now, not in a first job
        return existing
    try:
        folder = convert_bundled(settings.models_dir / name)
        log.info("registering the bundled model as %s (hashing its weights)", name)
        with session_scope(engine) as s:
            return finish_preparing(s, settings=settings, name=name, source=str(folder))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, DomainError) else exc.message
        log.error("the bundled model %s could not be prepared: %s", name, error)
        with session_scope(engine) as s:
            record = fail_preparing(s, name=name, error=error)
            failed = jobs.fail_waiting_jobs(s, base=record)
        if failed:
            log.error("failed %d job(s) waiting for %s: %s", len(failed), name, ", ".join(failed))
        raise


def run(settings: Settings) -> None:
    started = time.perf_counter()
    settings.ensure_dirs()
    cleanup(settings)
    if settings.register_bundled_model:
        ensure_bundled_model(settings)
    log.info("worker bootstrap done in %.1f s", time.perf_counter() - started)


def _run_child() -> None:
    try:
        subprocess.run([sys.executable, "-m", "worker.bootstrap"], cwd=ROOT, env=os.environ.copy(),
                       timeout=BOOTSTRAP_TIMEOUT_S, check=True)
    except subprocess.TimeoutExpired:
        log.error("worker bootstrap did not finish in %d s and was killed; jobs on the bundled model "
                  "cannot start until it is registered (restart the worker to try again)", BOOTSTRAP_TIMEOUT_S)
        _give_up(get_settings(), f"its conversion did not finish in {BOOTSTRAP_TIMEOUT_S} s and was stopped")
    except subprocess.CalledProcessError as exc:
        log.error("worker bootstrap failed (exit code %s); see its log above", exc.returncode)
        _give_up(get_settings(), f"the worker's bootstrap exited with code {exc.returncode}")


def _give_up(settings: Settings, error: str) -> None:
    """The bootstrap died: a bundled model still preparing is failed, and so are the jobs waiting for it."""
    if not settings.register_bundled_model:
        return
    with session_scope(get_engine(settings)) as s:
        record = get_base_model_or_none(s, name=settings.bundled_model_name)
        if record is None or record.status == PREPARING:
            record = fail_preparing(s, name=settings.bundled_model_name, error=error)
        if record.status == "failed":
            jobs.fail_waiting_jobs(s, base=record)


def on_worker_ready(**_kwargs) -> None:
    """Celery ``worker_ready`` handler: start the bootstrap in the background."""
    log.info("worker bootstrap started in the background")
    threading.Thread(target=_run_child, name="prospect-bootstrap", daemon=True).start()


if __name__ == "__main__":
    settings = get_settings()
    configure_logging(settings.log_level)
    run(settings)

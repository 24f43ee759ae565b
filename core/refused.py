"""A job the gate refused keeps its adapter for a while, so it can be published after the fact.

The worker saves the refused adapter under ``data_dir/refused/<job id>/adapter`` with what a publish
needs (``publish.json``: hyper-parameters, class counts and weights); with an S3 artifact store under
the keys ``refused/<job id>/...`` instead (``publish.json`` uploaded last: it marks a whole copy), since
the API that publishes it may run on another host. ``POST /v1/jobs/{id}/publish``
(train scope, a required reason) publishes it as the next version; the manifest and the job record that
it went out over a refused gate, by which key and why, and the listing marks it. Beat deletes kept
adapters older than ``refused_adapter_keep_hours``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.orm import Session

from core.adapter_publish import publish_adapter_version
from core.artifact_store import ArtifactStore, get_store
from core.errors import Conflict, InvalidInput, NotFound
from core.jobs import JobOptions, get_job
from core.models import AdapterVersion, BaseModelRecord, Snapshot, utcnow
from core.settings import Settings

log = logging.getLogger(__name__)

META = "publish.json"
OVER_REFUSED_GATE = "published over a refused gate"


def refused_dir(settings: Settings, job_id: str) -> Path:
    return settings.data_path / "refused" / job_id


def _remote(settings: Settings) -> ArtifactStore | None:
    store = get_store(settings)
    return store if store.local_root is None else None


def keep_refused(settings: Settings, *, job_id: str, save: Callable[[Path], None], hyperparameters: dict,
                 class_counts: dict, class_weights: dict) -> Path | str | None:
    """Keep a refused adapter (``save(folder)`` writes PEFT's files); None when keeping is off.
    Returns the folder, or the key prefix in an S3 store."""
    if settings.refused_adapter_keep_hours <= 0:
        return None
    if (store := _remote(settings)) is not None:
        with tempfile.TemporaryDirectory(dir=_spool(settings)) as tmp:
            save(Path(tmp) / "adapter")
            (Path(tmp) / META).write_text(json.dumps({"hyperparameters": hyperparameters,
                                                      "class_counts": class_counts, "class_weights": class_weights}))
            store.put_tree(f"refused/{job_id}/adapter", Path(tmp) / "adapter")
            store.put_file(f"refused/{job_id}/{META}", Path(tmp) / META)
        return f"refused/{job_id}"
    folder = refused_dir(settings, job_id)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp / "adapter")
    (tmp / META).write_text(json.dumps({"hyperparameters": hyperparameters, "class_counts": class_counts,
                                        "class_weights": class_weights}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def publish_refused(session_factory: Callable[[], Session], *, settings: Settings, job_id: str,
                    key_id: int | None, reason: str) -> AdapterVersion:
    reason = reason.strip()
    if not reason:
        raise InvalidInput("reason: say why the adapter should go out although the gate refused it")
    with session_factory() as s:
        job = get_job(s, job_id=job_id)
        gate = (job.eval_metrics or {}).get("gate") or {}
        if job.adapter_version_id is not None:
            version = s.get(AdapterVersion, job.adapter_version_id)
            raise Conflict(f"job {job_id} already published {version.adapter_name} v{version.version}")
        if job.status != "failed" or gate.get("passed") is not False:
            raise Conflict(f"job {job_id} was not refused by the gate (status {job.status}): only a refused "
                           "job's adapter can be published after the fact")
        base = s.get(BaseModelRecord, job.base_model_id)
        snapshot = s.get(Snapshot, job.snapshot_id) if job.snapshot_id else None
        adapter_name, figures, options = job.adapter_name, dict(job.eval_metrics), JobOptions.from_dict(job.options)
    store = _remote(settings)
    with _fetched(settings, store, job_id) as folder:
        if not (folder / META).is_file():
            raise NotFound(f"job {job_id}'s adapter is no longer kept (PROSPECT_REFUSED_ADAPTER_KEEP_HOURS = "
                           f"{settings.refused_adapter_keep_hours:g}): train again with force_publish and "
                           f"snapshot_id {job.snapshot_id}")
        meta = json.loads((folder / META).read_text())
        figures["gate"] = {**gate, "passed": None, "would_pass": False, "skipped": OVER_REFUSED_GATE,
                           "override": {"by_key_id": key_id, "reason": reason[:1000], "at": utcnow().isoformat()}}

        def fence(session: Session, row: AdapterVersion) -> None:
            locked = get_job(session, job_id=job_id, for_update=True)
            if locked.adapter_version_id is not None:  # a concurrent publish of the same job won
                raise Conflict(f"job {job_id} was published meanwhile")
            locked.adapter_version_id = row.id
            locked.eval_metrics = figures

        version = publish_adapter_version(
            session_factory, settings=settings, adapter_name=adapter_name, staged_dir=folder / "adapter",
            job_id=job_id, base_model=base, snapshot=snapshot, hyperparameters=meta["hyperparameters"],
            class_counts=meta["class_counts"], class_weights=meta["class_weights"], eval_metrics=figures,
            before_commit=fence, base_model_name_or_path=options.base_model_name_or_path)
        if store is not None:
            store.delete_prefix(f"refused/{job_id}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
        log.info("job %s: published over a refused gate as %s v%d by key %s: %s", job_id, adapter_name,
                 version.version, key_id, reason)
        return version


def _spool(settings: Settings) -> Path:
    (settings.data_path / "tmp").mkdir(parents=True, exist_ok=True)
    return settings.data_path / "tmp"


@contextmanager
def _fetched(settings: Settings, store: ArtifactStore | None, job_id: str) -> Iterator[Path]:
    """The kept folder: on this disk, or a local copy of the store's (when it is whole)."""
    if store is None:
        yield refused_dir(settings, job_id)
        return
    with tempfile.TemporaryDirectory(dir=_spool(settings)) as tmp:
        if store.exists(f"refused/{job_id}/{META}"):
            store.get_tree(f"refused/{job_id}/adapter", Path(tmp) / "adapter")
            store.get_file(f"refused/{job_id}/{META}", Path(tmp) / META)
        yield Path(tmp)


def expire_refused(settings: Settings, *, now: float | None = None) -> list[str]:
    """Delete kept adapters older than refused_adapter_keep_hours; returns their job ids."""
    cutoff = (now or time.time()) - settings.refused_adapter_keep_hours * 3600
    if (store := _remote(settings)) is not None:
        stamps: dict[str, float] = {}
        for entry in store.list("refused"):
            job_id = entry.key.split("/")[1]
            stamps[job_id] = max(stamps.get(job_id, 0.0), entry.mtime)
        old = sorted(j for j, stamp in stamps.items() if stamp < cutoff)
        for job_id in old:
            store.delete_prefix(f"refused/{job_id}")
        return old
    root = settings.data_path / "refused"
    if not root.is_dir():
        return []
    removed = []
    for folder in root.iterdir():
        meta = folder / META
        stamp = meta.stat().st_mtime if meta.is_file() else folder.stat().st_mtime
        if stamp < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed

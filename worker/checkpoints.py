"""A job's training checkpoint in the artifact store, so that a job resumes on *another* host.

Training writes its checkpoint to a local folder (``<data>/checkpoints/<job id>``, atomically,
``alignment.train``). With an S3 store every checkpoint is then uploaded to
``checkpoints/<job id>/checkpoint.pt`` (a PUT replaces the object whole), and a delivery first
downloads it unless the store still holds the very object this host last uploaded or fetched
(``.store-entry``: its size, ETag and the store's time for it): a worker that died takes only its unsaved
steps with it. Times from the store are compared only with times from the store: a local file's
mtime is another host's clock, and a stale local checkpoint (an earlier attempt here) with a clock
running ahead would win over the newer one another host uploaded. With the local store the folder
is the checkpoint and nothing is copied. A failed upload is logged, not fatal: training goes on from the
local copy (newer than the store's, and kept), and the next checkpoint tries again. A failed delete at the
job's end is logged too (the artifact sweep removes the copy later). Only ``restore`` raises: without the
store a delivery cannot know whether another host left a newer checkpoint (the job then waits in the queue).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.artifact_store import ArtifactStore, Entry, s3_errors

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"  # alignment.train.CHECKPOINT_FILE (this module does not import torch)
ENTRY_FILE = ".store-entry"  # the store's object this host's local checkpoint was last uploaded as or fetched from


@dataclass(frozen=True)
class CheckpointMirror:
    store: ArtifactStore
    job_id: str
    folder: Path  # the local checkpoint folder training reads and writes

    @property
    def key(self) -> str:
        return f"checkpoints/{self.job_id}/{CHECKPOINT_FILE}"

    @property
    def remote(self) -> bool:
        return self.store.local_root is None

    def restore(self) -> bool:
        """Fetch the store's checkpoint unless it is the one the local copy was last synced with; True if
        one was fetched."""
        if not self.remote:
            return False
        entry = self.store.stat(self.key)
        local = self.folder / CHECKPOINT_FILE
        if entry is None or (local.is_file() and self._synced() == _fields(entry)):
            return False
        self.store.get_file(self.key, local)
        self._remember(entry)
        log.info("job %s: fetched its checkpoint from the artifact store (%d bytes)", self.job_id, entry.size)
        return True

    def _synced(self) -> list | None:
        try:
            return json.loads((self.folder / ENTRY_FILE).read_text())
        except (OSError, ValueError):
            return None

    def _remember(self, entry: Entry | None) -> None:
        if entry is not None:
            (self.folder / ENTRY_FILE).write_text(json.dumps(_fields(entry)))

    def push(self, file: Path) -> None:
        if not self.remote:
            return
        try:
            self.store.put_file(self.key, file)
            self._remember(self.store.stat(self.key))
        except (*s3_errors(), OSError) as exc:  # the store blinked: training goes on, the next checkpoint retries
            log.warning("job %s: could not upload its checkpoint to the artifact store: %s", self.job_id, exc)

    def remove(self) -> None:
        """The job is over (or its checkpoint does not fit this run): drop both copies."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if not self.remote:
            return
        try:
            self.store.delete_prefix(f"checkpoints/{self.job_id}")
        except s3_errors() as exc:  # the job's outcome stands; core.artifact_sweep drops a finished job's copy
            log.warning("job %s: could not delete its checkpoint from the artifact store: %s", self.job_id, exc)


def _fields(entry: Entry) -> list:
    return [entry.size, entry.mtime, entry.etag]

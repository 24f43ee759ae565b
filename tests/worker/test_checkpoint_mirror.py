"""worker.checkpoints.CheckpointMirror.restore decides which copy to resume from with the store's own
times only: a local file's mtime is this host's clock, which may run ahead of the store's."""

from __future__ import annotations

import io
import os
from pathlib import Path

from core.artifact_store import ArtifactStore, Entry
from worker.checkpoints import CHECKPOINT_FILE, CheckpointMirror


class ClockStore(ArtifactStore):
    """A remote store (no local root) in memory, stamping objects with its own clock ``now``."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, float]] = {}
        self.now = 1_000_000.0
        self.fail_puts = False

    def open(self, key):
        return io.BytesIO(self.objects[key][0])

    def stat(self, key):
        if key not in self.objects:
            return None
        data, mtime = self.objects[key]
        return Entry(key, len(data), mtime)

    def put_file(self, key, path: Path) -> None:
        if self.fail_puts:
            raise OSError("the store blinked")
        self.objects[key] = (path.read_bytes(), self.now)

    def list(self, prefix):
        return iter([self.stat(k) for k in sorted(self.objects) if k.startswith(prefix + "/")])

    def delete(self, keys):
        for k in keys:
            self.objects.pop(k, None)


def _write(path: Path, data: bytes, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def test_a_stale_local_checkpoint_on_a_host_whose_clock_runs_ahead_loses_to_the_stores(tmp_path):
    store = ClockStore()
    here = CheckpointMirror(store, "job1", tmp_path / "here" / "job1")
    # Attempt 1 ran here, checkpointed step 4 and uploaded it; this host's clock runs 2 h ahead of the store's.
    local = _write(here.folder / CHECKPOINT_FILE, b"step 4 from here", store.now + 7200)
    here.push(local)
    # It was reaped; attempt 2 on another host reached step 40 and uploaded it (later, on the store's clock).
    store.now += 600
    other = CheckpointMirror(store, "job1", tmp_path / "other" / "job1")
    other.push(_write(other.folder / CHECKPOINT_FILE, b"step 40 from another host", store.now))
    # Attempt 3 lands here again: the store's step 40 is the newer one, whatever the local mtime says.
    assert here.restore()
    assert local.read_bytes() == b"step 40 from another host"
    assert not here.restore()  # now in sync: nothing to fetch


def test_a_local_checkpoint_newer_than_a_failed_upload_is_kept(tmp_path):
    store = ClockStore()
    mirror = CheckpointMirror(store, "job1", tmp_path / "job1")
    # This host's clock runs behind the store's (mtime 0): the local file looks older than it is.
    mirror.push(_write(mirror.folder / CHECKPOINT_FILE, b"step 4", 0))
    store.now += 60
    store.fail_puts = True
    mirror.push(_write(mirror.folder / CHECKPOINT_FILE, b"step 8", 0))  # logged, not raised
    assert not mirror.restore()  # the store still holds what this host uploaded: step 8 here is newer
    assert (mirror.folder / CHECKPOINT_FILE).read_bytes() == b"step 8"

"""Verified base models kept loaded in this worker process between jobs.

A job's start-up is dominated by hashing the base model's pinned files and
loading its weights; the second job on the same base model should not pay
either again. The cache keeps a *pristine* copy of each verified model and
hands every job a deep copy of it: PEFT injects its LoRA layers into the model
it is given, and training moves and casts it (``model.to``), so the copy a job
trains is never the one kept, and a cached job trains on exactly the tensors a
cold load gives (tests/worker/test_warm.py compares the published adapters).

Keyed by the model's folder, its pinned sha256 and file listing, and the
loading dtype: a model re-registered under a new pin never hits an older
entry. Hashing the files again is what a warm start skips, so each entry
keeps the ``os.stat`` of every loaded file as verified (inode, size, mtime
and ctime: ctime moves on any write or ``utime`` and cannot be set back); a
file changed, added or removed since then drops the entry, and the job
verifies (and fails on the changed file) as a cold one would.

``PROSPECT_WARM_MODELS`` caps how many models stay loaded (least recently
used goes first); 0 keeps none. One cache per process: Celery's prefork
children each have their own.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.base_models import loaded_files, verify_base_model
from core.models import BaseModelRecord

log = logging.getLogger(__name__)

Loader = Callable[[str], tuple[Any, Any]]  # folder -> (model, tokenizer)


def load_pretrained(folder: str) -> tuple[Any, Any]:
    """The model (float32, from its safetensors only: a pickle beside them is never unpickled) and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True),
            AutoTokenizer.from_pretrained(folder))


def files_stamp(folder: str | Path) -> tuple | None:
    """``os.stat`` fingerprint of every file a job loads from ``folder``; None when it cannot be listed."""
    root = Path(folder)
    try:
        stamp = []
        for path in loaded_files(root):
            st = path.stat()
            stamp.append((path.relative_to(root).as_posix(), st.st_dev, st.st_ino, st.st_size,
                          st.st_mtime_ns, st.st_ctime_ns))
        return tuple(stamp)
    except OSError:
        return None


@dataclass
class _Entry:
    model: Any  # pristine: never handed out, only deep copies of it
    tokenizer: Any
    stamp: tuple


class BaseModelCache:
    """LRU of verified, loaded base models; :meth:`get` returns a fresh copy and whether it was warm."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(record: BaseModelRecord, dtype: str, folder: str | Path | None = None) -> tuple:
        files = tuple(sorted((record.files or {}).items()))
        return (os.path.realpath(folder or record.path), record.sha256, files, dtype)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(self, record: BaseModelRecord, *, dtype: str = "float32", folder: str | Path | None = None,
            load: Loader = load_pretrained) -> tuple[Any, Any, bool]:
        """(model, tokenizer, warm): a copy of the cached model when its files are as verified, else
        verify (BaseModelTampered on a changed file) and load, and keep a pristine copy. ``folder``: where
        this host holds the files (default the record's path; a store-registered model's local copy)."""
        folder = str(folder or record.path)
        key = self.key(record, dtype, folder)
        with self._lock:
            self._trim(self.capacity)
            entry = self._entries.get(key)
            if entry is not None:
                if files_stamp(folder) == entry.stamp:
                    self._entries.move_to_end(key)
                    log.info("base model %s: warm (verified and loaded earlier in this worker)", record.name)
                    return copy.deepcopy(entry.model), copy.deepcopy(entry.tokenizer), True
                log.warning("base model %s: its files changed since it was cached; verifying again", record.name)
                del self._entries[key]
            if self.capacity <= 0:
                verify_base_model(record, Path(folder))
                model, tokenizer = load(folder)
                return model, tokenizer, False
            self._trim(self.capacity - 1)  # make room before loading: at most `capacity` kept at once
            before = files_stamp(folder)
            verify_base_model(record, Path(folder))
            model, tokenizer = load(folder)
            if before is not None and files_stamp(folder) == before:  # unchanged while verified and loaded
                self._entries[key] = _Entry(model, tokenizer, before)
                return copy.deepcopy(model), copy.deepcopy(tokenizer), False
            return model, tokenizer, False

    def _trim(self, size: int) -> None:
        while len(self._entries) > max(size, 0):
            evicted, _ = self._entries.popitem(last=False)
            log.info("base model %s: no longer kept loaded (PROSPECT_WARM_MODELS)", evicted[0])


_cache = BaseModelCache()


def process_cache(capacity: int) -> BaseModelCache:
    """This process's cache, holding at most ``capacity`` models (the setting may change between jobs)."""
    _cache.capacity = capacity
    return _cache

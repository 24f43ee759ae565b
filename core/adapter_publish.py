"""Publishing adapter versions: immutable, atomically published LoRA folders.

Layout under ``settings.artifacts_dir``::

    adapters/<name>/<version>/   adapter_config.json, adapter_model.safetensors, README.md, manifest.json
    adapters/<name>/.tmp-<uuid>/ a publish in progress (or a crashed one)

Publishing copies the staged PEFT output into a temporary folder, checksums
it, takes a per-adapter lock (a Postgres advisory lock; SQLite's write lock),
allocates the next version (max + 1), writes the manifest, renames the folder
to ``<name>/<version>`` and commits the row together with the move of
``latest``. A crash before the rename leaves only a ``.tmp-*`` folder; a crash
between the rename and the commit leaves a version folder without a row.
Neither is visible (everything is looked up through the database), and
:func:`cleanup_leftovers` removes both. Because the lock is held from the
allocation to the commit, publishers of one adapter never race for a number.
With an S3 artifact store the folder is uploaded under ``<name>/<version>.<staging
id>`` instead of renamed (``core.adapter_objects``); the tarball lives in
``core.adapter_tarball``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import outbox, serving_compat
from core.adapter_aliases import LATEST, _set_alias
from core.adapter_objects import upload_tarball, upload_version
from core.adapter_tarball import iter_tarball
from core.artifact_store import get_store
from core.base_models import check_name, file_sha256
from core.db import lock_adapter
from core.errors import InvalidInput
from core.models import AdapterVersion, BaseModelRecord, Snapshot, utcnow
from core.settings import Settings

log = logging.getLogger(__name__)

REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")
GENERATED_FILES = ("README.md", "manifest.json")
TMP_PREFIX = ".tmp-"
# A .tmp-* folder younger than this may belong to a publish still copying files.
TMP_GRACE_S = 3600.0
MANIFEST_FORMAT = "prospect-adapter/1"


def adapters_root(settings: Settings) -> Path:
    return settings.artifacts_dir / "adapters"


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _file_entry(path: Path) -> dict:
    return {"name": path.name, "sha256": file_sha256(path), "size": path.stat().st_size}


def _stage(staged: Path, tmp: Path, *, base_model_name: str) -> list[dict]:
    """Copy the PEFT output into ``tmp`` (config pointing at the base model); returns the file entries."""
    missing = [name for name in REQUIRED_FILES if not (staged / name).is_file()]
    if missing:
        raise InvalidInput(f"{staged} lacks {', '.join(missing)}: give the folder PEFT's save_pretrained wrote")
    try:
        config = json.loads((staged / "adapter_config.json").read_text())
    except ValueError as exc:
        raise InvalidInput(f"{staged / 'adapter_config.json'} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise InvalidInput(f"{staged / 'adapter_config.json'} is not a JSON object")
    config["base_model_name_or_path"] = base_model_name
    _write_bytes(tmp / "adapter_config.json", _json_bytes(config))
    for src in sorted(staged.iterdir()):
        if src.is_file() and src.name not in GENERATED_FILES and src.name != "adapter_config.json":
            shutil.copyfile(src, tmp / src.name)
    return [_file_entry(p) for p in sorted(tmp.iterdir()) if p.is_file()]


def _readme(*, adapter_name: str, version: int, base_model: BaseModelRecord, config_base: str | None = None) -> str:
    folder = f"path/to/{adapter_name}-v{version}"
    if config_base:
        config_note = (f"`adapter_config.json` names the base model `{config_base}` (set by the job's "
                       "`base_model_name_or_path` option), where `AutoPeftModelForCausalLM` and vLLM load it from.")
    else:
        config_note = (f"`adapter_config.json` names the base model `{base_model.name}`, its name in\n"
                       "Prospect, which is neither a folder nor a hub id: `AutoPeftModelForCausalLM.from_pretrained"
                       "(ADAPTER)`\nwould look for it on the Hugging Face hub. Load the base from its folder first, "
                       "as above\n(or start the job with the option `base_model_name_or_path`).")
    return f"""# {adapter_name} v{version}

A LoRA adapter trained with KTO by Prospect on thumbs-up/down feedback.
Base model: `{base_model.name}` (weights sha256 `{base_model.sha256}`, from `{base_model.source}`).
`manifest.json` lists every file with its sha256, the snapshot, the job, the
hyper-parameters, the class weights and the held-out metrics.

Training rendered every prompt with the base model's chat template (as a user
message, then the assistant's turn): generate the same way. A raw prompt
without the template gets answers the adapter was never trained on.

## PEFT and transformers

```python
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

BASE = "{base_model.path}"  # the base model's folder on the Prospect server (or your copy of it)
ADAPTER = "{folder}"

tokenizer = AutoTokenizer.from_pretrained(BASE)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), ADAPTER).eval()

messages = [{{"role": "user", "content": "How do I reset my password?"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                       return_dict=True)
with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

{config_note}

## vLLM

```bash
vllm serve BASE_FOLDER --enable-lora --lora-modules {adapter_name}={folder}
curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{adapter_name}", "messages": [{{"role": "user", "content": "How do I reset my password?"}}]}}'
```

The chat endpoint applies the chat template, as training did; `/v1/completions`
with a raw prompt does not.
"""


def _manifest(*, adapter_name: str, version: int, files: list[dict], base_model: BaseModelRecord,
              snapshot: Snapshot | None, job_id: str | None, hyperparameters: dict, class_counts: dict,
              class_weights: dict, eval_metrics: dict, created_at: str) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "adapter": adapter_name,
        "version": version,
        "created_at": created_at,
        "files": files,
        "base_model": {"name": base_model.name, "sha256": base_model.sha256, "source": base_model.source,
                       "revision": base_model.revision, "architecture": base_model.architecture},
        "snapshot": None if snapshot is None else {
            "id": snapshot.id, "content_hash": snapshot.content_hash, "n_rows": snapshot.n_rows,
            "n_desirable": snapshot.n_desirable, "n_undesirable": snapshot.n_undesirable,
            "cutoff": snapshot.cutoff.isoformat(),
        },
        "job_id": job_id,
        "hyperparameters": hyperparameters,
        "class_counts": class_counts,  # of the training rows (what the class weights were computed from)
        "counts": {  # the same, named apart from the snapshot's and the held-out split's
            "snapshot": None if snapshot is None else {"desirable": snapshot.n_desirable,
                                                       "undesirable": snapshot.n_undesirable},
            "train": class_counts or None,
            "heldout": ((eval_metrics or {}).get("split") or {}).get("heldout"),
        },
        "class_weights": class_weights,
        "eval_metrics": eval_metrics,
    }


def gate_verdict(manifest: dict) -> str | None:
    """"passed", "skipped (would have passed|been refused)" for a force_publish, or None (no gate figures)."""
    gate = (manifest.get("eval_metrics") or {}).get("gate")
    if not isinstance(gate, dict):
        return None
    if gate.get("override"):
        return "published over a refused gate"
    if gate.get("skipped"):
        would = gate.get("would_pass")
        return "skipped" + ("" if would is None else " (would have passed)" if would else " (would have been refused)")
    return "passed" if gate.get("passed") else None


def _rename_into_place(tmp: Path, final: Path) -> None:
    os.rename(tmp, final)


def publish_adapter_version(
    session_factory: Callable[[], Session],
    *,
    settings: Settings,
    adapter_name: str,
    staged_dir: Path,
    job_id: str | None,
    base_model: BaseModelRecord,
    snapshot: Snapshot | None,
    hyperparameters: dict,
    class_counts: dict,
    class_weights: dict,
    eval_metrics: dict,
    before_commit: Callable[[Session, AdapterVersion], None] | None = None,
    base_model_name_or_path: str | None = None,
) -> AdapterVersion:
    """Publish ``staged_dir`` as the next version of ``adapter_name`` and point ``latest`` at it.

    Commits in its own session. Either the folder, its row and the alias move
    all become visible, or nothing does. ``before_commit(session, row)`` runs
    inside that transaction, after the row is flushed: the job pipeline fences
    the publish there (locks its job row, checks it still holds it, marks it
    succeeded); whatever it raises undoes the publish.
    """
    check_name(adapter_name, what="adapter")
    parent = adapters_root(settings) / adapter_name
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        files = _stage(Path(staged_dir), tmp, base_model_name=base_model_name_or_path or base_model.name)
        with session_factory() as session:
            lock_adapter(session, adapter_name)
            version = (session.scalar(select(func.max(AdapterVersion.version))
                                      .where(AdapterVersion.adapter_name == adapter_name)) or 0) + 1
            final = parent / str(version)
            if final.exists():
                # No row has this number and we hold the lock: a crash left it between rename and commit.
                log.warning("removing %s: left by a publish that crashed before its commit", final)
                shutil.rmtree(final)
            created_at = utcnow()
            readme = _readme(adapter_name=adapter_name, version=version, base_model=base_model,
                             config_base=base_model_name_or_path)
            _write_bytes(tmp / "README.md", readme.encode())
            manifest = _manifest(
                adapter_name=adapter_name, version=version, files=[*files, _file_entry(tmp / "README.md")],
                base_model=base_model, snapshot=snapshot, job_id=job_id, hyperparameters=hyperparameters,
                class_counts=class_counts, class_weights=class_weights, eval_metrics=eval_metrics,
                created_at=created_at.isoformat(),
            )
            manifest["files"].sort(key=lambda f: f["name"])
            manifest["serving_compat"] = {"vllm": serving_compat.check_folder(
                tmp, architecture=base_model.architecture, base_model_name_or_path=base_model_name_or_path)}
            manifest_bytes = _json_bytes(manifest)
            _write_bytes(tmp / "manifest.json", manifest_bytes)
            store = get_store(settings)
            if store.local_root is None:
                key = upload_version(store, tmp, adapter_name=adapter_name, version=version)
            else:
                _rename_into_place(tmp, final)
                key = final.relative_to(settings.artifacts_dir).as_posix()
            try:
                row = AdapterVersion(
                    adapter_name=adapter_name, version=version, path=key, manifest=manifest,
                    manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(), job_id=job_id,
                    base_model_id=base_model.id, snapshot_id=snapshot.id if snapshot else None,
                    created_at=created_at,
                )
                if store.local_root is None:  # one object to stream or presign; its sha256 is the ETag
                    row.tarball_sha256 = upload_tarball(store, row, iter_tarball(settings, row, folder=tmp))
                session.add(row)
                session.flush()
                outbox.emit(session, event="version.published", adapter_name=adapter_name, version=version)
                _set_alias(session, adapter_name=adapter_name, alias=LATEST, version=version,
                           moved_by=f"publish (job {job_id})" if job_id else "publish")
                if before_commit is not None:
                    before_commit(session, row)
                session.commit()
            except BaseException:
                session.rollback()
                if store.local_root is None:  # unreferenced: no reader could have reached it
                    try:
                        store.delete_prefix(key)
                    except Exception:  # the store is down: the sweep removes them; the cause is what counts
                        log.warning("could not remove %s after a failed publish; the orphan sweep will", key,
                                    exc_info=True)
                else:
                    shutil.rmtree(final, ignore_errors=True)
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("published adapter %s v%d (job %s)", adapter_name, version, job_id)
    return row


def cleanup_leftovers(settings: Settings, session: Session, *, tmp_grace_s: float = TMP_GRACE_S) -> list[Path]:
    """Remove what crashed publishes left: version folders without a row and stale ``.tmp-*`` folders.

    Holds each adapter's publish lock while it looks, so a publish in flight is
    never mistaken for a leftover; ends the session's transaction per adapter
    (it writes nothing to the database). Returns the removed paths.
    """
    root = adapters_root(settings)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    now = time.time()
    for parent in sorted(p for p in root.iterdir() if p.is_dir()):
        lock_adapter(session, parent.name)
        known = set(session.scalars(select(AdapterVersion.version).where(AdapterVersion.adapter_name == parent.name)))
        for child in sorted(parent.iterdir()):
            orphan = child.name.isdigit() and int(child.name) not in known
            stale_tmp = child.name.startswith(TMP_PREFIX) and now - child.stat().st_mtime >= tmp_grace_s
            if child.is_dir() and (orphan or stale_tmp):
                log.warning("removing leftover %s", child)
                shutil.rmtree(child)
                removed.append(child)
        session.commit()
    return removed

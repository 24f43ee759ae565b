"""Base models: the pinned reference pi_ref of every job.

A base model is a name, the folder it lives in and the sha256 of its weight
files. A job calls :func:`verify_base_model` before it trains, so weights that
changed on disk after registration fail the job instead of silently moving
the reference.

The weight hash is the one ``alignment.hashing`` computes (core may not import
alignment/, so the few lines live here too): the sha256 of what
``sha256sum`` prints for the weight files, sorted by relative path, so anyone
can check it with ``cd folder && sha256sum *.safetensors | sha256sum``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import Conflict, InvalidInput, NotFound, Unavailable
from core.models import BaseModelRecord
from core.settings import Settings

log = logging.getLogger(__name__)

# Names of base models and adapters: lower case, safe as a folder name and in a URL.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
NAME_RULE = "1-100 characters: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"

# A folder with safetensors is pinned by those only (a stray .bin beside them is
# not what transformers loads); otherwise PyTorch pickles, otherwise GGUF.
WEIGHT_PATTERNS = (("*.safetensors",), ("*.bin", "*.pt", "*.pth"), ("*.gguf",))
_CHUNK = 1 << 20


class BaseModelTampered(Conflict):
    """The weights of a registered base model are missing or changed on disk."""


def check_name(value: str, *, what: str) -> str:
    if not NAME_RE.fullmatch(value or ""):
        raise InvalidInput(f"invalid {what} name {value!r}: use {NAME_RULE}")
    return value


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weight_files(path: Path) -> list[Path]:
    """The weight files of a model folder, sorted by relative path (FileNotFoundError when none)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    for patterns in WEIGHT_PATTERNS:
        found = {p for pattern in patterns for p in root.rglob(pattern) if p.is_file()}
        if found:
            return sorted(found, key=lambda p: p.relative_to(root).as_posix())
    raise FileNotFoundError(f"no weight files (*.safetensors, *.bin, *.pt, *.gguf) under {root}")


def weights_sha256(path: Path) -> str:
    """sha256 over the names and bytes of the weight files of ``path``, streamed in 1 MiB chunks."""
    root = Path(path)
    listing = "".join(f"{file_sha256(p)}  {p.relative_to(root).as_posix()}\n" for p in weight_files(root))
    return hashlib.sha256(listing.encode()).hexdigest()


def _architecture(folder: Path) -> str | None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InvalidInput(f"{folder} has no config.json: give the folder a transformers model was saved to")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{config_path} is not valid JSON: {exc}") from exc
    archs = config.get("architectures") if isinstance(config, dict) else None
    return archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None


def _download(settings: Settings, *, name: str, source: str, revision: str | None) -> Path:
    """Download a hub model into settings.models_dir/<name>; Unavailable when there is no network."""
    from huggingface_hub import snapshot_download  # lazy: only a named hub model needs it
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    target = settings.models_dir / name
    log.info("downloading %s (revision %s) into %s", source, revision or "default", target)
    try:
        return Path(snapshot_download(source, revision=revision, local_dir=target))
    except RepositoryNotFoundError as exc:
        raise InvalidInput(f"no model {source!r} on the Hugging Face Hub (or it is private)") from exc
    except LocalEntryNotFoundError as exc:
        raise Unavailable(
            f"cannot download {source!r}: the Hugging Face Hub is unreachable (offline?); "
            "download it elsewhere and register the local folder instead"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise Unavailable(f"cannot download {source!r} from the Hugging Face Hub: {exc}") from exc


def register_base_model(
    session: Session,
    *,
    settings: Settings,
    name: str,
    source: str,
    revision: str | None = None,
    allow_download: bool = True,
) -> BaseModelRecord:
    """Register a local model folder, or download a hub id (``org/model``) first.

    The folder must hold config.json and weight files; their sha256 is stored.
    A local folder is used in place (not copied). Flushes; the caller commits.
    """
    check_name(name, what="base model")
    if get_base_model_or_none(session, name=name) is not None:
        raise Conflict(f"a base model named {name!r} is already registered; choose another name")
    local = Path(source).expanduser()
    if local.is_dir():
        folder = local.resolve()
    elif local.exists():
        raise InvalidInput(f"{source} is a file; give the model folder that holds config.json and the weights")
    elif source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise InvalidInput(f"{source} is neither an existing folder nor a hub id like 'org/model'")
    elif not allow_download:
        raise InvalidInput(
            f"{source} is not a folder on the server; hub models are registered with `prospect models add`"
        )
    else:
        folder = _download(settings, name=name, source=source, revision=revision)
    architecture = _architecture(folder)
    try:
        sha = weights_sha256(folder)
    except FileNotFoundError as exc:
        raise InvalidInput(str(exc)) from exc
    record = BaseModelRecord(
        name=name, source=source, revision=revision, path=str(folder), sha256=sha, architecture=architecture
    )
    try:
        with session.begin_nested():
            session.add(record)
    except IntegrityError as exc:
        raise Conflict(f"a base model named {name!r} is already registered; choose another name") from exc
    log.info("registered base model %s at %s (sha256 %s)", name, folder, sha)
    return record


def verify_base_model(record: BaseModelRecord) -> None:
    """Raise BaseModelTampered when the weights are missing or their sha256 changed."""
    hint = f"re-register it under a new name (`prospect models add NEW_NAME {record.path}`) if the change is intended"
    try:
        actual = weights_sha256(Path(record.path))
    except FileNotFoundError as exc:
        raise BaseModelTampered(f"base model {record.name!r} is missing on disk: {exc}; {hint}") from exc
    if actual != record.sha256:
        raise BaseModelTampered(
            f"base model {record.name!r} changed on disk: sha256 expected {record.sha256} got {actual}; {hint}"
        )


def get_base_model_or_none(session: Session, *, name: str) -> BaseModelRecord | None:
    return session.scalar(select(BaseModelRecord).where(BaseModelRecord.name == name))


def get_base_model(session: Session, *, name: str) -> BaseModelRecord:
    record = get_base_model_or_none(session, name=name)
    if record is None:
        raise NotFound(f"no base model named {name!r}; see GET /v1/base-models or `prospect models list`")
    return record


def list_base_models(session: Session) -> list[BaseModelRecord]:
    return list(session.scalars(select(BaseModelRecord).order_by(BaseModelRecord.name)))

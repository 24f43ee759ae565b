"""Base models: the pinned reference pi_ref of every job.

A base model is a name, the folder it lives in and the sha256 of every file
transformers loads from it. A job calls :func:`verify_base_model` before it
trains, so a file that changed, appeared or vanished after registration fails
the job instead of silently moving the reference.

What is pinned (``loaded_files``): the top-level ``*.safetensors`` weights
(required: jobs load with ``use_safetensors=True``, so a pickle beside them is
never read), their ``*.safetensors.index.json``, ``config.json``,
``generation_config.json``, the tokenizer files and the chat templates
(``chat_template.jinja``/``.json``, ``additional_chat_templates/*.jinja``).
``sha256`` stays the weights-only digest (what ``cd folder && sha256sum
*.safetensors | sha256sum`` prints); ``files`` maps each pinned file to its own
sha256.

Registration is confined to the models folder (``settings.models_dir``) and
the folders listed in ``PROSPECT_BASE_MODEL_DIRS``, and hashes before it opens
a database transaction: hashing a large model takes minutes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.base_model_store import fetch_store_model, is_store_source, pin_store_model
from core.errors import Conflict, InvalidInput, NotFound, Unavailable
from core.models import BaseModelRecord
from core.settings import Settings

log = logging.getLogger(__name__)

# Names of base models and adapters: lower case, safe as a folder name and in a URL.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
NAME_RULE = "1-100 characters: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"

# Besides the weights, what AutoConfig / AutoTokenizer / GenerationConfig read from a local folder.
LOADED_NAMES = frozenset({
    "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.jinja", "chat_template.json",
})
CHAT_TEMPLATE_DIR = "additional_chat_templates"
# What a hub download fetches: the pinned files, never pickles or custom code.
DOWNLOAD_PATTERNS = ["*.safetensors", "*.safetensors.index.json", *sorted(LOADED_NAMES), f"{CHAT_TEMPLATE_DIR}/*"]
_CHUNK = 1 << 20


class BaseModelTampered(Conflict):
    """A pinned file of a registered base model is missing, added or changed on disk."""


@dataclass(frozen=True)
class PinnedModel:
    """A model folder and the sha256 of what is loaded from it (computed without a database)."""

    folder: Path | None  # None: in object storage (core.base_model_store)
    sha256: str  # weights only
    files: dict[str, str]  # every pinned file, by path relative to the folder
    architecture: str | None


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
    """The top-level ``*.safetensors`` of a model folder, sorted (FileNotFoundError when none)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    found = sorted(p for p in root.glob("*.safetensors") if p.is_file())
    if not found:
        raise FileNotFoundError(
            f"no top-level *.safetensors in {root}: only safetensors weights are loaded "
            "(convert pickles with `model.save_pretrained(folder, safe_serialization=True)`)"
        )
    return found


def is_loaded_name(name: str) -> bool:
    """Whether a job loads the file at ``name`` (a path relative to the model folder)."""
    if "/" not in name:
        return name.endswith((".safetensors", ".safetensors.index.json")) or name in LOADED_NAMES
    folder, _, rest = name.partition("/")
    return folder == CHAT_TEMPLATE_DIR and "/" not in rest and rest.endswith(".jinja")


def loaded_files(path: Path) -> list[Path]:
    """Every file a job loads from ``path``: the weights, their index, config, tokenizer, templates."""
    root = Path(path)
    found = set(weight_files(root))
    found |= {p for p in root.iterdir() if p.is_file() and (p.name in LOADED_NAMES
                                                              or p.name.endswith(".safetensors.index.json"))}
    templates = root / CHAT_TEMPLATE_DIR
    if templates.is_dir():
        found |= {p for p in templates.glob("*.jinja") if p.is_file()}
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _listing_sha256(hashes: dict[str, str]) -> str:
    listing = "".join(f"{sha}  {name}\n" for name, sha in sorted(hashes.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


def file_hashes(path: Path) -> dict[str, str]:
    """sha256 of every loaded file of ``path``, by relative path, streamed in 1 MiB chunks."""
    root = Path(path)
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in loaded_files(root)}


def weights_sha256(path: Path) -> str:
    """sha256 over the names and hashes of the top-level safetensors (``sha256sum *.safetensors | sha256sum``)."""
    root = Path(path)
    return _listing_sha256({p.name: file_sha256(p) for p in weight_files(root)})


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


def allowed_roots(settings: Settings) -> list[Path]:
    return [settings.models_dir, *(Path(d).expanduser().resolve() for d in settings.base_model_dirs)]


def _check_allowed(folder: Path, settings: Settings, source: str) -> None:
    """``folder`` (symlinks resolved) must lie under the models folder or an allowed folder."""
    roots = allowed_roots(settings)
    if not any(folder == root or folder.is_relative_to(root) for root in roots):
        raise InvalidInput(
            f"{source} is outside the folders base models may be registered from "
            f"({', '.join(str(r) for r in roots)}); move it under the models folder or add its parent "
            "to PROSPECT_BASE_MODEL_DIRS"
        )


def _download(settings: Settings, *, name: str, source: str, revision: str | None) -> Path:
    """Download a hub model into settings.models_dir/<name>; Unavailable when there is no network."""
    from huggingface_hub import snapshot_download  # lazy: only a named hub model needs it
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    target = settings.models_dir / name
    log.info("downloading %s (revision %s) into %s", source, revision or "default", target)
    try:
        return Path(snapshot_download(source, revision=revision, local_dir=target, allow_patterns=DOWNLOAD_PATTERNS))
    except RepositoryNotFoundError as exc:
        raise InvalidInput(f"no model {source!r} on the Hugging Face Hub (or it is private)") from exc
    except LocalEntryNotFoundError as exc:
        raise Unavailable(
            f"cannot download {source!r}: the Hugging Face Hub is unreachable (offline?); "
            "download it elsewhere and register the local folder instead"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise Unavailable(f"cannot download {source!r} from the Hugging Face Hub: {exc}") from exc


def pin_model_folder(
    settings: Settings, *, name: str, source: str, revision: str | None = None, allow_download: bool = True
) -> PinnedModel:
    """Resolve ``source`` (a folder under an allowed root, or a hub id to download) and hash what is loaded.

    Touches no database: a caller hashes first, then opens its transaction."""
    local = Path(source).expanduser()
    try:
        local.exists()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL
        raise InvalidInput(f"{source[:200]!r} is not a usable path: {exc.__class__.__name__}") from None
    if local.is_dir():
        folder = local.resolve()
        _check_allowed(folder, settings, source)
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
        files = file_hashes(folder)
    except FileNotFoundError as exc:
        raise InvalidInput(str(exc)) from exc
    weights = {n: sha for n, sha in files.items() if "/" not in n and n.endswith(".safetensors")}
    return PinnedModel(folder=folder, sha256=_listing_sha256(weights), files=files, architecture=architecture)


def register_base_model(
    session: Session,
    *,
    settings: Settings,
    name: str,
    source: str,
    revision: str | None = None,
    allow_download: bool = True,
    created_by_key_id: int | None = None,
) -> BaseModelRecord:
    """Register a local model folder, or download a hub id (``org/model``) first.

    The folder must hold config.json and top-level safetensors; the sha256 of every loaded file is
    stored. A local folder is used in place (not copied). ``session`` must have no pending changes:
    its transaction is ended before hashing. Flushes; the caller commits.
    """
    check_name(name, what="base model")
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("register_base_model needs a session without pending changes")
    if get_base_model_or_none(session, name=name) is not None:
        raise Conflict(f"a base model named {name!r} is already registered; choose another name")
    # End the read: hashing (or downloading) takes minutes and must not hold SQLite's write lock.
    session.rollback()
    if is_store_source(source):
        pinned = pin_store_model(settings, source=source)
    else:
        pinned = pin_model_folder(settings, name=name, source=source, revision=revision,
                                  allow_download=allow_download)
    record = BaseModelRecord(
        name=name, source=source, revision=revision, path=str(pinned.folder or source), sha256=pinned.sha256,
        files=pinned.files, architecture=pinned.architecture, created_by_key_id=created_by_key_id,
    )
    try:
        with session.begin_nested():
            session.add(record)
    except IntegrityError as exc:
        raise Conflict(f"a base model named {name!r} is already registered; choose another name") from exc
    log.info("registered base model %s at %s (sha256 %s, %d files pinned)", name, record.path, pinned.sha256,
             len(pinned.files))
    return record


def local_folder(settings: Settings, record: BaseModelRecord) -> Path:
    """Where this host loads ``record`` from: its folder, or the local cache of a store-registered model
    (fetched and verified now when missing; BaseModelTampered when the store's objects changed)."""
    if is_store_source(record.source):
        return fetch_store_model(settings, record)
    folder = Path(record.path)
    if record.name == settings.bundled_model_name and record.source == record.path and not folder.is_dir():
        # Converted on another worker host: convert it here too. The conversion is deterministic, so the
        # pinned hashes check this host's copy as they would the first one.
        from alignment.bundled import convert_bundled

        log.info("bundled model %s was converted on another host (%s): converting it here", record.name, folder)
        return convert_bundled(settings.models_dir / record.name).resolve()
    return folder


def verify_base_model(record: BaseModelRecord, folder: Path | None = None) -> None:
    """Raise BaseModelTampered when a pinned file of ``folder`` (default: the record's) is missing, changed
    or added."""
    hint = f"re-register it under a new name (`prospect models add NEW_NAME {record.path}`) if the change is intended"
    folder = Path(record.path) if folder is None else folder
    if is_store_source(record.source):  # this host's cached copy of the bucket's files
        hint = f"delete the cached copy {folder} on this worker host and it is fetched and verified again"
    try:
        if record.files is None:  # registered before every loaded file was pinned: the weights only
            log.warning("base model %s pins its weights only; re-register it to pin config and tokenizer", record.name)
            expected, actual = {"weights": record.sha256}, {"weights": weights_sha256(folder)}
        else:
            expected, actual = record.files, file_hashes(folder)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise BaseModelTampered(f"base model {record.name!r} is missing on disk: {exc}; {hint}") from exc
    changed = sorted(n for n in expected.keys() | actual.keys() if expected.get(n) != actual.get(n))
    if changed:
        what = {n: "missing" if n not in actual else "added" if n not in expected else "changed" for n in changed}
        detail = ", ".join(f"{n} {w}" for n, w in what.items())
        raise BaseModelTampered(
            f"base model {record.name!r} changed on disk: sha256 expected {_listing_sha256(expected)} "
            f"got {_listing_sha256(actual)} ({detail}); {hint}"
        )


def get_base_model_or_none(session: Session, *, name: str) -> BaseModelRecord | None:
    return session.scalar(select(BaseModelRecord).where(BaseModelRecord.name == name))


PREPARING, READY, FAILED = "preparing", "ready", "failed"


def get_base_model(session: Session, *, name: str, preparing: str | None = None) -> BaseModelRecord:
    """The registered model ``name``. ``preparing``: the bundled model's name, which the worker may still be
    converting (the first half-minute after a first start): asked for then, it is registered at once as
    ``preparing`` and returned, so a job for it waits queued until it is ready. Flushes that registration;
    the caller commits."""
    record = get_base_model_or_none(session, name=name)
    if record is None and name == preparing:
        record = _register_preparing(session, name=name)
    if record is None:
        raise NotFound(f"no base model named {name!r}; see GET /v1/base-models or `prospect models list`")
    if record.status == FAILED:
        raise Conflict(f"base model {name!r} could not be prepared: {record.error}; restart the worker to try "
                       "again (its log is in the data folder)")
    return record


def _register_preparing(session: Session, *, name: str) -> BaseModelRecord:
    placeholder = BaseModelRecord(name=name, source="bundled", path="", sha256="", status=PREPARING)
    try:
        with session.begin_nested():
            session.add(placeholder)
    except IntegrityError:  # registered meanwhile (by the worker or another request)
        return get_base_model_or_none(session, name=name)
    log.info("base model %s registered as preparing: jobs for it wait until the worker has converted it", name)
    return placeholder


def finish_preparing(session: Session, *, settings: Settings, name: str, source: str) -> BaseModelRecord:
    """Pin ``source`` and make the ``preparing`` (or ``failed``) record ``name`` ready, or register it when
    there is none. Hashes before it writes. Flushes; the caller commits."""
    pinned = pin_model_folder(settings, name=name, source=source, allow_download=False)
    record = get_base_model_or_none(session, name=name)
    if record is None:
        try:
            with session.begin_nested():
                record = BaseModelRecord(name=name, source=source, path="", sha256="", status=PREPARING)
                session.add(record)
        except IntegrityError:  # another worker registered it first
            record = get_base_model_or_none(session, name=name)
    if record.status == READY:
        return record
    record.source, record.path, record.sha256 = source, str(pinned.folder), pinned.sha256
    record.files, record.architecture, record.status, record.error = pinned.files, pinned.architecture, READY, None
    session.flush()
    log.info("base model %s ready at %s (sha256 %s)", name, pinned.folder, pinned.sha256)
    return record


def fail_preparing(session: Session, *, name: str, error: str) -> BaseModelRecord:
    """Mark ``name`` failed with ``error`` (registering it so when absent). Flushes; the caller commits."""
    record = get_base_model_or_none(session, name=name) or BaseModelRecord(name=name, source="bundled", path="",
                                                                          sha256="")
    if record.status == READY:
        return record
    record.status, record.error = FAILED, error[:2000]
    session.add(record)
    session.flush()
    return record


def bundled_model_state(session: Session, settings: Settings) -> dict[str, str]:
    """{name: "ready" | "preparing" | "failed"} of the bundled model, or {} when it is not registered on
    start."""
    if not settings.register_bundled_model:
        return {}
    name = settings.bundled_model_name
    record = get_base_model_or_none(session, name=name)
    return {name: record.status if record is not None else PREPARING}


def list_base_models(session: Session) -> list[BaseModelRecord]:
    return list(session.scalars(select(BaseModelRecord).order_by(BaseModelRecord.name)))

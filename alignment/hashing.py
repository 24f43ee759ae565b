"""sha256 of a model folder's weight files: what pins a base model (pi_ref).

Plain hashlib, no torch, no import of anything else in alignment/, so core/
and the worker can use it (or move it) without loading an ML stack.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# Weight files by precedence: a folder with safetensors is pinned by those only
# (a stray .bin next to them is not what transformers loads).
WEIGHT_PATTERNS = (("*.safetensors",), ("*.bin", "*.pt", "*.pth"), ("*.gguf",))
_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files transformers would load from ``folder``, sorted by relative path."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"model folder {root} does not exist or is not a directory")
    for patterns in WEIGHT_PATTERNS:
        found = sorted({p for pattern in patterns for p in root.rglob(pattern) if p.is_file()},
                       key=lambda p: p.relative_to(root).as_posix())
        if found:
            return found
    raise FileNotFoundError(f"no weight files (*.safetensors, *.bin, *.pt, *.gguf) under {root}")


def weights_sha256(folder: str | Path) -> str:
    """One hex digest for all weight files of ``folder``.

    It is the sha256 of the text ``sha256sum`` prints for those files, sorted
    by relative path (``"<hex>  <relpath>\\n"`` per file), so anyone can
    reproduce it: ``cd folder && sha256sum *.safetensors | sha256sum``.
    """
    root = Path(folder)
    listing = "".join(f"{file_sha256(p)}  {p.relative_to(root).as_posix()}\n" for p in weight_files(root))
    return hashlib.sha256(listing.encode()).hexdigest()

"""Importers: other tools' feedback exports as Prospect events (one module per source).

``convert(source, files, options)`` is pure: uploaded files in, a
``Conversion`` (event dicts, skipped records and why) out.
``core.importers.ingest`` writes a conversion in one transaction (or rolls
it back for a dry run) and reports what happened.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from core.errors import InvalidInput
from core.importers import chatgpt, langfuse, langsmith, librechat, openwebui, trl
from core.importers.base import Conversion, Malformed, Options
from core.importers.files import json_files, unpack

Converter = Callable[[Mapping[str, list[Any]], Options], Conversion]

SOURCES: dict[str, Converter] = {
    "openwebui": openwebui.convert,
    "librechat": librechat.convert,
    "langfuse": langfuse.convert,
    "langsmith": langsmith.convert,
    "chatgpt": chatgpt.convert,
    "kto": trl.kto,
    "paired": trl.paired,
    "events": trl.events,
    "auto": trl.auto,
}

__all__ = ["SOURCES", "Conversion", "Malformed", "Options", "convert", "unpack"]


def convert(source: str, files: Mapping[str, bytes], options: Options) -> Conversion:
    """Decode the uploaded files and convert them with the source's importer."""
    if source not in SOURCES:
        raise InvalidInput(f"source: unknown source '{source}' (one of {', '.join(SOURCES)})",
                           details=[{"field": "source", "message": "unknown source"}])
    decoded = dict(json_files(files))
    if not decoded:
        raise InvalidInput("body: no JSON or JSONL file in the upload",
                           details=[{"field": "body", "message": "no JSON or JSONL file"}])
    return SOURCES[source](decoded, options)

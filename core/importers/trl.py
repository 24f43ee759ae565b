"""Prospect's own formats through the same path: TRL rows (``kto``, ``paired``) and event dicts (``events``).

``kto`` / ``paired`` reuse the rules of the original import (``core.feedback_import``):
ids derive from the row's content. ``events`` takes the objects
``POST /v1/feedback/batch`` takes, one per line; the CLI sends converted
exports this way, in batches, so that every source gets ``dry_run``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from core import feedback_import
from core.errors import DomainError
from core.importers.base import Conversion, Options


def _rows(kind: str):
    def convert(files: Mapping[str, list[Any]], options: Options) -> Conversion:
        conv = Conversion()
        for name, recs in files.items():
            for i, rec in enumerate(recs):
                ref = f"{name}[{i}]"
                conv.records += 1
                if isinstance(rec, Mapping):
                    if kind == "kto" and "completion" not in rec:
                        conv.invalid.append((ref, "row: expected a KTO row {prompt, completion, label}"))
                        continue
                    if kind == "paired" and not ("chosen" in rec or "rejected" in rec):
                        conv.invalid.append((ref, "row: expected a paired row {prompt, chosen, rejected}"))
                        continue
                try:
                    events = feedback_import._record_events(rec, options.model)
                except DomainError as exc:
                    conv.invalid.append((ref, exc.message))
                    continue
                for ev in events:
                    conv.events.append((ref, {k: v for k, v in dataclasses.asdict(ev).items() if v is not None}))
        return conv

    return convert


def events(files: Mapping[str, list[Any]], options: Options) -> Conversion:
    conv = Conversion()
    for name, recs in files.items():
        for i, rec in enumerate(recs):
            conv.records += 1
            eid = rec.get("event_id") if isinstance(rec, Mapping) else None
            conv.events.append((f"events:{eid}" if isinstance(eid, str) else f"{name}[{i}]", rec))
    return conv


auto = _rows("auto")  # no ?source: KTO or paired, told apart per row
kto = _rows("kto")
paired = _rows("paired")

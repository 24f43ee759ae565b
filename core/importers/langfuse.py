"""Langfuse: scores joined with the traces (and observations) they rate.

Shapes follow the public API (fern/apis/server/definition/commons.yml):
``Score {id, traceId, observationId, name, value, stringValue, dataType:
NUMERIC | BOOLEAN | CATEGORICAL, source, comment, authorUserId, timestamp}``,
``Trace {id, timestamp, name, input, output, sessionId, userId, metadata,
tags}`` and ``Observation {id, traceId, type, name, model, input, output,
startTime}``. Records may come as API pages (``{"data": [...]}``), JSON
arrays or JSON lines, in any files of the upload, camelCase or snake_case
(blob-storage exports); ``GET /api/public/traces/{id}`` answers with the
scores and observations embedded, which works too. Which score names count
as thumbs, the NUMERIC threshold and the CATEGORICAL mapping are options.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from core.importers.base import (
    Conversion,
    Options,
    Skip,
    as_object,
    each_record,
    fit_metadata,
    make_event,
    opt_str,
    require,
    timestamp,
)
from core.importers.text import io_fields

SOURCE = "langfuse"


def get(rec: Mapping[str, Any], camel: str) -> Any:
    """A field by its camelCase name, or its snake_case twin."""
    if camel in rec:
        return rec[camel]
    return rec.get(re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower())


def _kind(rec: Mapping[str, Any]) -> str:
    if get(rec, "dataType") is not None or (get(rec, "traceId") is not None and "value" in rec):
        return "score"
    if get(rec, "traceId") is not None:
        return "observation"
    return "trace"


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def label_of(score: Mapping[str, Any], options: Options) -> str:
    dtype = str(get(score, "dataType") or "").upper()
    value, string = score.get("value"), get(score, "stringValue")
    if not dtype:
        dtype = "CATEGORICAL" if isinstance(value, str) or (value is None and string is not None) else "NUMERIC"
    if dtype == "BOOLEAN":
        number = _number(value)
        if number in (0.0, 1.0):
            return "up" if number == 1.0 else "down"
        if str(string).lower() in ("true", "false"):
            return "up" if str(string).lower() == "true" else "down"
        raise Skip(f"BOOLEAN score value {value!r} is neither 1 nor 0")
    if dtype == "NUMERIC":
        number = _number(value)
        if number is None:
            raise Skip(f"NUMERIC score value {value!r} is not a number")
        return "up" if number > options.numeric_threshold else "down"
    category = string if string is not None else value
    label = options.categorical_label(category)
    if label is None:
        raise Skip(f"CATEGORICAL value {category!r} maps to neither up nor down (set categorical_up/_down)")
    return label


def _event(ref: str, score: Mapping[str, Any], traces: Mapping[str, Any], observations: Mapping[str, Any],
           options: Options) -> dict[str, Any]:
    sid = opt_str(require(score, "id", str, ref))
    name = get(score, "name")
    if name not in options.score_names:
        raise Skip(f"score name {name!r} is not a thumbs score (counted: {', '.join(options.score_names)})")
    label = label_of(score, options)
    trace_id = opt_str(get(score, "traceId"))
    trace = traces.get(trace_id) or {}
    observation = observations.get(opt_str(get(score, "observationId")))
    target = observation or trace
    if not target:
        raise Skip(f"trace '{trace_id}' is not in the export (add the traces or observations)")
    fields = io_fields(target.get("input"), target.get("output"), "observation" if observation else "trace")
    extra = {"name": name, "comment": score.get("comment"), "data_type": get(score, "dataType"),
             "value": score.get("value"), "score_source": score.get("source"),
             "trace_name": trace.get("name"), "tags": trace.get("tags"), "environment": score.get("environment")}
    return make_event(
        SOURCE, sid,
        **fields,
        label=label,
        user_id=opt_str(get(trace, "userId")) or opt_str(get(score, "authorUserId")),
        conversation_id=opt_str(get(trace, "sessionId")) or trace_id,
        response_id=opt_str(target.get("id")),
        model=opt_str((observation or {}).get("model")) or options.model,
        created_at=timestamp(score.get("timestamp")) or timestamp(get(score, "createdAt")),
        metadata=fit_metadata({"source": SOURCE, "source_id": sid}, extra, options),
    )


def convert(files: Mapping[str, list[Any]], options: Options) -> Conversion:
    traces: dict[str, Mapping[str, Any]] = {}
    observations: dict[str, Mapping[str, Any]] = {}
    scores: list[tuple[str, Any]] = []

    def add(ref: str, rec: Any) -> None:
        rec = as_object(rec, ref)
        kind = _kind(rec)
        if kind == "score":
            scores.append((ref, rec))
            return
        rid = opt_str(require(rec, "id", str, ref))
        (observations if kind == "observation" else traces)[rid] = rec
        for key in ("observations", "scores"):  # a trace with its details embedded
            inners = rec.get(key)
            for j, inner in enumerate(inners if isinstance(inners, list) else []):
                if isinstance(inner, Mapping):
                    add(f"{ref}.{key}[{j}]", {"traceId": rid, **inner})

    for name, recs in files.items():
        for i, rec in enumerate(recs):
            add(f"{name}[{i}]", rec)
    return each_record(Conversion(), SOURCE, scores, lambda ref, s: _event(ref, s, traces, observations, options))

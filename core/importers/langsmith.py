"""LangSmith: feedback joined with the runs it rates.

Shapes follow the SDK's schemas (python/langsmith/schemas.py): ``Feedback {id,
run_id, trace_id, key, score, value, comment, correction, feedback_source:
{type, user_id}, created_at, modified_at}`` and ``Run {id, name, run_type,
inputs, outputs, extra: {metadata, invocation_params}, trace_id, start_time}``
(what ``Client.list_feedback`` / ``Client.list_runs`` return, or the REST
API's ``{"runs": [...]}`` pages). Which feedback ``key`` counts is an option;
``score`` 1 / 0 (also true / false, and -1) is the thumbs, a categorical
``value`` is mapped like Langfuse's.
"""

from __future__ import annotations

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

SOURCE = "langsmith"


def label_of(fb: Mapping[str, Any], options: Options) -> str:
    score = fb.get("score")
    if isinstance(score, bool):
        return "up" if score else "down"
    if isinstance(score, int | float):
        if score == 1:
            return "up"
        if score in (0, -1):
            return "down"
        raise Skip(f"score {score!r} is not a thumbs score (1 or 0)")
    value = fb.get("value")
    if isinstance(value, bool):
        return "up" if value else "down"
    label = options.categorical_label(value) if isinstance(value, str | int | float) else None
    if label is None:
        raise Skip(f"no score, and value {value!r} maps to neither up nor down")
    return label


def _meta(run: Mapping[str, Any]) -> Mapping[str, Any]:
    extra = run.get("extra") if isinstance(run.get("extra"), Mapping) else {}
    meta = extra.get("metadata") if isinstance(extra.get("metadata"), Mapping) else {}
    params = extra.get("invocation_params") if isinstance(extra.get("invocation_params"), Mapping) else {}
    return {**params, **meta}


def _event(ref: str, fb: Mapping[str, Any], runs: Mapping[str, Any], options: Options) -> dict[str, Any]:
    fid = opt_str(require(fb, "id", str, ref))
    key = fb.get("key")
    if key not in options.feedback_keys:
        raise Skip(f"feedback key {key!r} is not a thumbs key (counted: {', '.join(options.feedback_keys)})")
    label = label_of(fb, options)
    run_id = opt_str(fb.get("run_id"))
    run = runs.get(run_id)
    if run is None:
        raise Skip(f"run '{run_id}' is not in the export (add the runs)")
    meta = _meta(run)
    source = fb.get("feedback_source") if isinstance(fb.get("feedback_source"), Mapping) else {}
    annotator = opt_str(source.get("user_id")) if source.get("type") == "app" else None
    extra = {"key": key, "comment": fb.get("comment"), "value": fb.get("value"), "correction": fb.get("correction"),
             "feedback_source": source.get("type"), "run_name": run.get("name"), "run_type": run.get("run_type"),
             "tags": run.get("tags")}
    return make_event(
        SOURCE, fid,
        **io_fields(run.get("inputs"), run.get("outputs"), "run"),
        label=label,
        user_id=opt_str(meta.get("user_id")) or annotator,
        conversation_id=opt_str(meta.get("thread_id")) or opt_str(meta.get("session_id"))
        or opt_str(meta.get("conversation_id")) or opt_str(run.get("trace_id")),
        response_id=run_id,
        model=opt_str(meta.get("ls_model_name")) or opt_str(meta.get("model")) or opt_str(meta.get("model_name"))
        or options.model,
        created_at=timestamp(fb.get("modified_at")) or timestamp(fb.get("created_at")),
        metadata=fit_metadata({"source": SOURCE, "source_id": fid}, extra, options),
    )


def convert(files: Mapping[str, list[Any]], options: Options) -> Conversion:
    runs: dict[str, Mapping[str, Any]] = {}
    feedback: list[tuple[str, Any]] = []
    for name, recs in files.items():
        for i, rec in enumerate(recs):
            ref = f"{name}[{i}]"
            rec = as_object(rec, ref)
            if "run_id" in rec and "key" in rec:
                feedback.append((ref, rec))
            else:
                runs[opt_str(require(rec, "id", str, ref)) or ""] = rec
    return each_record(Conversion(), SOURCE, feedback, lambda ref, fb: _event(ref, fb, runs, options))

"""Open WebUI: the admin feedback export (Evaluations > Feedbacks > Export).

Records follow ``FeedbackModel`` (backend/open_webui/models/feedbacks.py):
``{id, user_id, version, type: "rating", data: {rating, model_id, reason,
comment, details: {rating}}, meta: {chat_id, message_id, arena, tags},
snapshot: {chat: <the chat>}, created_at, updated_at}``. The chat holds the
message tree as ``history.messages`` ({id: {parentId, role, content, model}});
the prompt is the rated message's branch up to its parent (siblings from
regenerations are ignored) after the chat's ``params.system`` prompt.
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
    prompt_messages,
    require,
    timestamp,
    walk_thread,
)

SOURCE = "openwebui"


def _chat(snapshot: Any) -> Mapping[str, Any] | None:
    """The chat object holding ``history``: snapshot.chat.chat (a ChatResponse), or flatter variants."""
    if not isinstance(snapshot, Mapping):
        return None
    chat = snapshot.get("chat")
    for holder in (chat.get("chat") if isinstance(chat, Mapping) else None, chat, snapshot):
        if isinstance(holder, Mapping) and isinstance(holder.get("history"), Mapping):
            return holder
    return None


def _messages(history: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    msgs = history.get("messages")
    if isinstance(msgs, list):
        return {m["id"]: m for m in msgs if isinstance(m, Mapping) and isinstance(m.get("id"), str)}
    if isinstance(msgs, Mapping):
        return {str(k): v for k, v in msgs.items() if isinstance(v, Mapping)}
    return {}


def _label(data: Mapping[str, Any]) -> str:
    rating = data.get("rating")
    if isinstance(rating, str) and rating.strip().lstrip("-").isdigit():
        rating = int(rating)
    if rating == 1 and not isinstance(rating, bool):
        return "up"
    if rating == -1:
        return "down"
    if rating == 0:
        raise Skip("rating 0 (an arena draw) is not a thumbs vote")
    details = data.get("details")
    if rating is None and isinstance(details, Mapping) and details.get("rating") is not None:
        raise Skip(f"only a 1-10 rating (details.rating={details['rating']}), no thumbs up/down")
    raise Skip(f"rating {rating!r} is not 1 (up) or -1 (down)")


def _text(msg: Mapping[str, Any]) -> str:
    content = msg.get("content")
    return content if isinstance(content, str) else ""


def _event(ref: str, rec: Any, options: Options) -> dict[str, Any]:
    rec = as_object(rec, ref)
    fid = opt_str(require(rec, "id", (str, int), ref))
    where = f"{ref} (feedback {fid})"
    if rec.get("type", "rating") != "rating":
        raise Skip(f"type '{rec.get('type')}' is not a rating")
    data = as_object(require(rec, "data", Mapping, where), where)
    meta = rec.get("meta") if isinstance(rec.get("meta"), Mapping) else {}
    label = _label(data)
    message_id = opt_str(meta.get("message_id"))
    if message_id is None:
        raise Skip("meta.message_id is missing: the rated message is unknown")
    chat = _chat(rec.get("snapshot"))
    if chat is None:
        raise Skip("no snapshot of the chat (export with Evaluations > Feedbacks > Export, "
                   "GET /api/v1/evaluations/feedbacks/all/export)")
    nodes = _messages(chat["history"])
    chain = walk_thread(nodes, message_id, lambda m: opt_str(m.get("parentId")))
    rated = chain[-1]
    if rated.get("role") != "assistant" or not _text(rated).strip():
        raise Skip(f"the rated message '{message_id}' is not a non-empty assistant message")
    turns = [{"role": str(m.get("role")), "content": _text(m)} for m in chain[:-1]]
    params = chat.get("params") if isinstance(chat.get("params"), Mapping) else {}
    if isinstance(params.get("system"), str):
        turns.insert(0, {"role": "system", "content": params["system"]})
    extra = {
        "reason": data.get("reason"), "comment": data.get("comment"),
        "tags": data.get("tags") or meta.get("tags"), "details": data.get("details"),
        "arena": meta.get("arena") or None, "sibling_model_ids": data.get("sibling_model_ids"),
        "title": chat.get("title"),
    }
    return make_event(
        SOURCE, fid,
        messages=prompt_messages(turns),
        response=_text(rated),
        label=label,
        user_id=opt_str(rec.get("user_id")),
        conversation_id=opt_str(meta.get("chat_id")) or opt_str(chat.get("id")),
        response_id=message_id,
        model=opt_str(data.get("model_id")) or opt_str(meta.get("model_id")) or opt_str(rated.get("model"))
        or options.model,
        created_at=timestamp(rec.get("updated_at")) or timestamp(rec.get("created_at")),
        metadata=fit_metadata({"source": SOURCE, "source_id": fid}, extra, options),
    )


def convert(files: Mapping[str, list[Any]], options: Options) -> Conversion:
    items = [(f"{name}[{i}]", rec) for name, recs in files.items() for i, rec in enumerate(recs)]
    return each_record(Conversion(), SOURCE, items, lambda ref, rec: _event(ref, rec, options))

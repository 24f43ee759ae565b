"""LibreChat: a MongoDB export of the ``messages`` collection (JSON lines or a JSON array).

Messages follow ``messageSchema`` (packages/data-schemas/src/schema/message.ts):
``{messageId, conversationId, parentMessageId, user, model, endpoint, sender,
text, content, isCreatedByUser, feedback: {rating: "thumbsUp" | "thumbsDown",
tag, text}, createdAt, updatedAt}``. A rated reply's prompt is its chain of
``parentMessageId`` up to the root (``00000000-0000-0000-0000-000000000000``),
so edited or regenerated siblings are left out. Exporting the
``conversations`` collection alongside adds each chat's ``promptPrefix`` as
the system prompt. mongoexport's extended JSON (``{"$date": ...}``,
``{"$oid": ...}``) is understood.
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
from core.importers.text import part_text

SOURCE = "librechat"
NO_PARENT = "00000000-0000-0000-0000-000000000000"
RATINGS = {"thumbsUp": "up", "thumbsDown": "down"}


def _id(value: Any) -> str | None:
    if isinstance(value, Mapping) and "$oid" in value:
        value = value["$oid"]
    return opt_str(value)


def _text(msg: Mapping[str, Any]) -> str:
    text = msg.get("text")
    if isinstance(text, str) and text.strip():
        return text
    return part_text(msg.get("content")) or ""


def _parent(msg: Mapping[str, Any]) -> str | None:
    parent = opt_str(msg.get("parentMessageId"))
    return None if parent in (None, NO_PARENT) else parent


def _event(ref: str, msg: Mapping[str, Any], nodes: Mapping[str, Any], systems: Mapping[str, str],
           options: Options) -> dict[str, Any]:
    mid = opt_str(require(msg, "messageId", str, ref))
    feedback = as_object(msg["feedback"], f"{ref} (message {mid}) field 'feedback'")
    label = RATINGS.get(str(feedback.get("rating")))
    if label is None:
        raise Skip(f"feedback.rating {feedback.get('rating')!r} is not thumbsUp or thumbsDown")
    if msg.get("isCreatedByUser"):
        raise Skip("the rated message is the user's own")
    if not _text(msg).strip():
        raise Skip("the rated reply has no text")
    chain = walk_thread(nodes, mid, _parent)
    turns = [{"role": "user" if m.get("isCreatedByUser") else "assistant", "content": _text(m)} for m in chain[:-1]]
    conversation = opt_str(msg.get("conversationId"))
    if conversation in systems:
        turns.insert(0, {"role": "system", "content": systems[conversation]})
    extra = {"tag": feedback.get("tag"), "comment": feedback.get("text"), "endpoint": msg.get("endpoint"),
             "sender": msg.get("sender")}
    return make_event(
        SOURCE, mid,
        messages=prompt_messages(turns),
        response=_text(msg),
        label=label,
        user_id=_id(msg.get("user")),
        conversation_id=conversation,
        response_id=mid,
        model=opt_str(msg.get("model")) or options.model,
        created_at=timestamp(msg.get("updatedAt")) or timestamp(msg.get("createdAt")),
        metadata=fit_metadata({"source": SOURCE, "source_id": mid}, extra, options),
    )


def convert(files: Mapping[str, list[Any]], options: Options) -> Conversion:
    nodes: dict[str, Mapping[str, Any]] = {}
    systems: dict[str, str] = {}
    rated: list[tuple[str, Any]] = []
    for name, recs in files.items():
        for i, rec in enumerate(recs):
            ref = f"{name}[{i}]"
            rec = as_object(rec, ref)
            if "messageId" not in rec:  # a conversation document
                prefix = rec.get("promptPrefix")
                if isinstance(prefix, str) and prefix.strip() and opt_str(rec.get("conversationId")):
                    systems[str(rec["conversationId"])] = prefix
                continue
            mid = opt_str(require(rec, "messageId", str, ref))
            nodes[mid] = rec
            if rec.get("feedback") is not None:
                rated.append((ref, rec))
    return each_record(Conversion(), SOURCE, rated, lambda ref, m: _event(ref, m, nodes, systems, options),
                       id_field="messageId")

"""ChatGPT: the account data export (Settings > Data controls > Export data; a zip by email).

``message_feedback.json`` holds ``{id, message_id, conversation_id, user_id,
rating: "thumbsUp" | "thumbsDown" (also "thumbs_up" | "thumbs_down"),
content, create_time, update_time}``; ``conversations.json`` holds
conversations ``{id | conversation_id, title, mapping: {node id: {id, parent,
children, message: {id, author: {role}, content: {content_type, parts},
recipient, metadata: {model_slug}}}}, current_node, default_model_slug}``.
A rated reply's prompt is the chain of ``parent`` links (only the rated
branch); tool calls, tool output and hidden reasoning are left out; custom
instructions become the system prompt. When a feedback record has no
``message_id``, its ``id`` is taken as the rated message's id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from core.importers.base import (
    Conversion,
    Malformed,
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

SOURCE = "chatgpt"
RATINGS = {"thumbsup": "up", "thumbs_up": "up", "thumbsdown": "down", "thumbs_down": "down"}
TEXT_TYPES = ("text", "multimodal_text")


def _turn(node: Mapping[str, Any]) -> dict[str, str] | None:
    """The visible {role, content} of a mapping node, or None (placeholders, tools, reasoning)."""
    msg = node.get("message") if isinstance(node, Mapping) else None
    if not isinstance(msg, Mapping):
        return None
    role = (msg.get("author") or {}).get("role") if isinstance(msg.get("author"), Mapping) else None
    content = msg.get("content") if isinstance(msg.get("content"), Mapping) else {}
    meta = msg.get("metadata") if isinstance(msg.get("metadata"), Mapping) else {}
    if role == "system" or content.get("content_type") == "user_editable_context":
        # Custom instructions: newer exports carry them as content, older ones in metadata.
        ctx = meta.get("user_context_message_data") if isinstance(meta.get("user_context_message_data"),
                                                                 Mapping) else {}
        texts = [content.get("user_profile"), content.get("user_instructions"),
                 ctx.get("about_user_message"), ctx.get("about_model_message")]
        parts = [t for t in texts if isinstance(t, str) and t.strip()] or [_parts(content)]
        return {"role": "system", "content": "\n\n".join(p for p in parts if p)}
    if role not in ("user", "assistant") or content.get("content_type") not in TEXT_TYPES:
        return None
    if role == "assistant" and msg.get("recipient") not in (None, "all"):
        return None  # a tool call
    return {"role": role, "content": _parts(content)}


def _parts(content: Mapping[str, Any]) -> str:
    parts = content.get("parts")
    return "\n".join(p for p in parts if isinstance(p, str) and p) if isinstance(parts, list) else ""


def _feedback_content(raw: Any) -> dict[str, Any]:
    """``content`` is a JSON string ({"tags": [...], "text": ...}) in the exports seen so far."""
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {"comment": raw}
    return dict(raw) if isinstance(raw, Mapping) else {}


def _event(ref: str, fb: Mapping[str, Any], convs: Mapping[str, Mapping[str, Any]], owner: str | None,
           options: Options) -> dict[str, Any]:
    fid = opt_str(require(fb, "id", str, ref))
    label = RATINGS.get(str(fb.get("rating")).lower())
    if label is None:
        raise Skip(f"rating {fb.get('rating')!r} is not thumbsUp or thumbsDown")
    cid = opt_str(require(fb, "conversation_id", str, f"{ref} (feedback {fid})"))
    conv = convs.get(cid)
    if conv is None:
        raise Skip(f"conversation '{cid}' is not in conversations.json")
    mapping = conv["mapping"]
    mid = opt_str(fb.get("message_id")) or fid
    node_id = mid if mid in mapping else next(
        (k for k, n in mapping.items() if isinstance(n, Mapping) and isinstance(n.get("message"), Mapping)
         and n["message"].get("id") == mid), mid)
    chain = walk_thread(mapping, node_id, lambda n: opt_str(n.get("parent")) if isinstance(n, Mapping) else None)
    rated = _turn(chain[-1])
    if rated is None or rated["role"] != "assistant" or not rated["content"].strip():
        raise Skip(f"the rated message '{mid}' is not an assistant reply with text")
    turns = [t for t in (_turn(n) for n in chain[:-1]) if t is not None]
    msg_meta = chain[-1]["message"].get("metadata")
    msg_meta = msg_meta if isinstance(msg_meta, Mapping) else {}
    content = _feedback_content(fb.get("content"))
    extra = {"tags": content.get("tags"), "comment": content.get("text") or content.get("comment"),
             "title": conv.get("title"), "workspace_id": fb.get("workspace_id")}
    return make_event(
        SOURCE, fid,
        messages=prompt_messages(turns),
        response=rated["content"],
        label=label,
        user_id=opt_str(fb.get("user_id")) or owner,
        conversation_id=cid,
        response_id=mid,
        model=opt_str(msg_meta.get("model_slug")) or opt_str(conv.get("default_model_slug")) or options.model,
        created_at=timestamp(fb.get("update_time")) or timestamp(fb.get("create_time")),
        metadata=fit_metadata({"source": SOURCE, "source_id": fid}, extra, options),
    )


def convert(files: Mapping[str, list[Any]], options: Options) -> Conversion:
    convs: dict[str, Mapping[str, Any]] = {}
    feedback: list[tuple[str, Any]] = []
    owner = None
    for name, recs in files.items():
        for i, rec in enumerate(recs):
            ref = f"{name}[{i}]"
            rec = as_object(rec, ref)
            if "mapping" in rec:
                if not isinstance(rec["mapping"], Mapping):
                    raise Malformed(f"{ref}: field 'mapping' must be an object of message nodes")
                cid = opt_str(rec.get("conversation_id")) or opt_str(rec.get("id"))
                if cid is None:
                    raise Malformed(f"{ref}: a conversation needs 'id' or 'conversation_id'")
                convs[cid] = rec
            elif "rating" in rec:
                feedback.append((ref, rec))
            elif "email" in rec and opt_str(rec.get("id")):  # user.json
                owner = str(rec["id"])
    return each_record(Conversion(), SOURCE, feedback, lambda ref, fb: _event(ref, fb, convs, owner, options))

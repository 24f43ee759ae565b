"""ChatGPT data-export importer.

Fixtures follow the export's ``conversations.json`` (conversation ``{id,
title, create_time, update_time, mapping: {node: {id, parent, children,
message: {id, author: {role}, content: {content_type, parts}, recipient,
metadata: {model_slug}}}}, current_node}``, as modelled by
mitkury/chatgpt-export-parser src/schema.ts) and ``message_feedback.json``
(``{id, conversation_id, user_id, rating, content, create_time}``, with the
``thumbs_up``/``thumbs_down`` variant observed in newer exports).
"""

from __future__ import annotations

import io
import zipfile

import orjson

from core.importers import Options, convert
from core.importers.files import unpack


def node(nid, parent, role=None, text="", children=(), content_type="text", recipient="all", **meta) -> dict:
    message = None
    if role is not None:
        message = {"id": nid, "author": {"role": role, "name": None, "metadata": {}}, "create_time": 1700000000.5,
                   "update_time": None, "content": {"content_type": content_type, "parts": [text]},
                   "status": "finished_successfully", "end_turn": True, "weight": 1.0, "metadata": meta,
                   "recipient": recipient}
    return {"id": nid, "message": message, "parent": parent, "children": list(children)}


def conversation() -> dict:
    """Custom instructions, a browsing tool call, and a regenerated answer (a2 and a2b are siblings)."""
    nodes = [
        node("root", None, children=["sys"]),
        node("sys", "root", "system", "", children=["ci"]),  # the hidden empty system message
        {**node("ci", "sys", "user", "", children=["u1"], content_type="user_editable_context"),
         "message": {**node("ci", "sys", "user")["message"],
                     "content": {"content_type": "user_editable_context",
                                 "user_profile": "I am a chemist.", "user_instructions": "Answer briefly."}}},
        node("u1", "ci", "user", "What is NaCl?", children=["a1"]),
        node("a1", "u1", "assistant", "Table salt.", children=["u2"], model_slug="gpt-4o"),
        node("u2", "a1", "user", "Price per kg today?", children=["t1"]),
        node("t1", "u2", "assistant", "search('salt price')", children=["t2"], content_type="code",
             recipient="browser"),
        node("t2", "t1", "tool", "results...", children=["a2", "a2b"]),
        node("a2", "t2", "assistant", "About $1.", model_slug="gpt-4o"),
        node("a2b", "t2", "assistant", "Roughly one dollar.", model_slug="gpt-4o-mini"),
    ]
    return {"title": "Salt", "create_time": 1700000000.0, "update_time": 1700000500.0,
            "mapping": {n["id"]: n for n in nodes}, "moderation_results": [], "current_node": "a2b",
            "plugin_ids": None, "conversation_id": "c-1", "conversation_template_id": None, "gizmo_id": None,
            "id": "c-1", "default_model_slug": "gpt-4o"}


def fb(fid, rating="thumbsUp", message_id=None, conversation_id="c-1", **kw) -> dict:
    rec = {"id": fid, "conversation_id": conversation_id, "user_id": "user-abc", "rating": rating,
           "create_time": "2023-11-14T22:20:00.000000+00:00", "workspace_id": None,
           "content": '{"tags": ["accurate"], "text": "spot on"}', "storage_protocol": "zstd::1.5.5", **kw}
    if message_id is not None:
        rec["message_id"] = message_id
    return rec


def export_zip(feedback: list, conversations: list | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("conversations.json", orjson.dumps(conversations or [conversation()]))
        zf.writestr("message_feedback.json", orjson.dumps(feedback))
        zf.writestr("user.json", orjson.dumps({"id": "user-abc", "email": "a@b.c", "chatgpt_plus_user": True}))
        zf.writestr("chat.html", "<html></html>")
    return buf.getvalue()


def run(body: bytes, **opts):
    return convert("chatgpt", unpack(body, max_uncompressed_bytes=1 << 22), Options(**opts))


def test_zip_export_rated_branch_without_tool_turns_and_with_custom_instructions():
    conv = run(export_zip([fb("f1", message_id="a2")]))
    assert conv.skipped == []
    ref, ev = conv.events[0]
    assert ref == "chatgpt:f1"
    assert ev["messages"] == [
        {"role": "system", "content": "I am a chemist.\n\nAnswer briefly."},
        {"role": "user", "content": "What is NaCl?"},
        {"role": "assistant", "content": "Table salt."},
        {"role": "user", "content": "Price per kg today?"},
    ]
    assert (ev["response"], ev["label"], ev["model"], ev["conversation_id"], ev["response_id"]) == (
        "About $1.", "up", "gpt-4o", "c-1", "a2")
    assert ev["metadata"] == {"source": "chatgpt", "source_id": "f1", "tags": ["accurate"], "comment": "spot on",
                              "title": "Salt"}
    assert ev["created_at"] == "2023-11-14T22:20:00+00:00" and ev["user_id"] == "user-abc"


def test_snake_case_ratings_id_as_message_id_and_the_sibling_branch():
    conv = run(export_zip([fb("a2b", rating="thumbs_down")]))
    ev = conv.events[0][1]
    assert (ev["response"], ev["label"], ev["model"]) == ("Roughly one dollar.", "down", "gpt-4o-mini")


def test_skips_other_ratings_missing_conversations_and_missing_parents():
    broken = conversation()
    broken["id"] = broken["conversation_id"] = "c-2"
    del broken["mapping"]["u2"]
    conv = run(export_zip([fb("f1", rating="neutral", message_id="a2"), fb("f2", conversation_id="c-9",
                                                                           message_id="a2"),
                           fb("f3", conversation_id="c-2", message_id="a2"), fb("f4", message_id="u1")],
                          [conversation(), broken]))
    assert conv.events == []
    reasons = {s["record"]: s["reason"] for s in conv.skipped}
    assert "'neutral'" in reasons["chatgpt:f1"] and "'c-9' is not in" in reasons["chatgpt:f2"]
    assert "'u2' is missing" in reasons["chatgpt:f3"] and "not an assistant reply" in reasons["chatgpt:f4"]


def test_user_from_user_json_when_feedback_has_none():
    record = fb("f1", message_id="a2")
    del record["user_id"]
    assert run(export_zip([record])).events[0][1]["user_id"] == "user-abc"


def test_a_changed_rating_is_a_new_event_reimport_is_identical():
    one = run(export_zip([fb("f1", message_id="a2")])).events[0][1]
    assert run(export_zip([fb("f1", message_id="a2")])).events[0][1] == one
    two = run(export_zip([fb("f1", rating="thumbsDown", message_id="a2",
                             update_time="2023-11-15T08:00:00+00:00")])).events[0][1]
    assert two["event_id"] != one["event_id"] and two["label"] == "down" and two["user_id"] == one["user_id"]

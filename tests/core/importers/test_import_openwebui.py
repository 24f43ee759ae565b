"""Open WebUI importer.

Fixtures follow Open WebUI's ``FeedbackModel`` / ``RatingData`` / ``MetaData``
(backend/open_webui/models/feedbacks.py), with ``snapshot.chat`` the chat as
``GET /api/v1/chats/{id}`` answers it (``ChatResponse`` in
backend/open_webui/models/chats.py: the message tree under
``chat.history.messages``, each ``{id, parentId, childrenIds, role, content,
model}``), as the admin export (GET /api/v1/evaluations/feedbacks/all/export)
returns them.
"""

from __future__ import annotations

import copy

import orjson
import pytest

from core.importers import Malformed, Options, convert
from core.importers.files import unpack


def tree() -> dict:
    """Two turns; the second answer was regenerated (a2 and a2b are siblings)."""
    msgs = [
        {"id": "u1", "parentId": None, "childrenIds": ["a1"], "role": "user", "content": "Hi, what is 2+2?",
         "timestamp": 1717000000, "models": ["llama3:8b"]},
        {"id": "a1", "parentId": "u1", "childrenIds": ["u2"], "role": "assistant", "content": "4.",
         "model": "llama3:8b", "modelName": "Llama 3", "done": True},
        {"id": "u2", "parentId": "a1", "childrenIds": ["a2", "a2b"], "role": "user", "content": "And times 3?"},
        {"id": "a2", "parentId": "u2", "childrenIds": [], "role": "assistant", "content": "12.", "model": "llama3:8b"},
        {"id": "a2b", "parentId": "u2", "childrenIds": [], "role": "assistant", "content": "Twelve.",
         "model": "llama3:8b"},
    ]
    return {"currentId": "a2b", "messages": {m["id"]: m for m in msgs}}


def feedback(fid: str = "fb-1", message_id: str = "a2", rating=1, updated_at: int = 1717000100, **data) -> dict:
    chat = {"id": "chat-1", "title": "Arithmetic", "models": ["llama3:8b"], "params": {"system": "Be terse."},
            "history": tree(), "messages": [], "tags": [], "timestamp": 1717000000000}
    return {
        "id": fid, "user_id": "user-7", "version": 0, "type": "rating",
        "data": {"rating": rating, "model_id": "llama3:8b", "sibling_model_ids": None, "reason": "accurate",
                 "comment": "nice", "tags": ["math"], **data},
        "meta": {"arena": False, "chat_id": "chat-1", "message_id": message_id, "message_index": 3},
        "snapshot": {"chat": {"id": "chat-1", "user_id": "user-7", "title": "Arithmetic", "chat": chat,
                              "updated_at": 1717000050, "created_at": 1717000000, "share_id": None,
                              "archived": False, "pinned": False, "meta": {}, "folder_id": None}},
        "created_at": 1717000090, "updated_at": updated_at,
    }


def run(*records, **opts):
    return convert("openwebui", {"feedback-export.json": orjson.dumps(list(records))}, Options(**opts))


def test_multi_turn_with_system_prompt_and_only_the_rated_branch():
    conv = run(feedback())
    assert conv.skipped == [] and len(conv.events) == 1
    ref, ev = conv.events[0]
    assert ref == "openwebui:fb-1"
    assert ev["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi, what is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And times 3?"},
    ]
    assert ev["response"] == "12."  # the rated message, not its regenerated sibling "Twelve."
    assert (ev["label"], ev["user_id"], ev["conversation_id"], ev["response_id"], ev["model"]) == (
        "up", "user-7", "chat-1", "a2", "llama3:8b")
    assert ev["created_at"] == "2024-05-29T16:28:20+00:00"  # updated_at: the latest rating
    assert ev["metadata"] == {"source": "openwebui", "source_id": "fb-1", "reason": "accurate", "comment": "nice",
                              "tags": ["math"], "title": "Arithmetic"}
    assert ev["event_id"].startswith("openwebui:fb-1:")


def test_rating_the_sibling_gives_the_other_response_and_down():
    ev = run(feedback(message_id="a2b", rating=-1)).events[0][1]
    assert (ev["response"], ev["label"]) == ("Twelve.", "down")


def test_non_thumbs_ratings_are_skipped_with_reasons():
    only_details = feedback("fb-2")
    del only_details["data"]["rating"]
    only_details["data"]["details"] = {"rating": 7}
    conv = run(feedback("fb-1", rating=0), only_details, feedback("fb-3", rating=5), feedback("fb-4", rating="-1"))
    assert [s["record"] for s in conv.skipped] == ["openwebui:fb-1", "openwebui:fb-2", "openwebui:fb-3"]
    reasons = [s["reason"] for s in conv.skipped]
    assert "arena draw" in reasons[0] and "details.rating=7" in reasons[1] and "rating 5" in reasons[2]
    assert [e["label"] for _, e in conv.events] == ["down"]  # "-1" as a string is still thumbs down


def test_missing_parent_and_missing_snapshot_are_skipped():
    broken = feedback("fb-1")
    del broken["snapshot"]["chat"]["chat"]["history"]["messages"]["u2"]
    no_snapshot = feedback("fb-2")
    del no_snapshot["snapshot"]
    conv = run(broken, no_snapshot)
    assert conv.events == []
    assert "'u2' is missing" in conv.skipped[0]["reason"]
    assert "feedbacks/all/export" in conv.skipped[1]["reason"]


def test_rated_user_message_and_unknown_type_are_skipped():
    conv = run(feedback("fb-1", message_id="u2"), {**feedback("fb-2"), "type": "comment"})
    assert len(conv.skipped) == 2 and conv.events == []


def test_reimport_is_identical_and_a_changed_rating_is_a_new_event_of_the_same_voter():
    first = run(feedback()).events[0][1]
    assert run(feedback()).events[0][1] == first
    changed = run(feedback(rating=-1, updated_at=1717009999)).events[0][1]
    assert changed["event_id"] != first["event_id"] and changed["event_id"].startswith("openwebui:fb-1:")
    assert (changed["user_id"], changed["messages"], changed["response"]) == (
        first["user_id"], first["messages"], first["response"])


def test_malformed_record_names_record_and_field():
    bad = feedback()
    bad["data"] = "up"
    with pytest.raises(Malformed) as exc:
        run(feedback("ok"), bad)
    assert "feedback-export.json[1]" in exc.value.message and "'data'" in exc.value.message
    with pytest.raises(Malformed, match="must be a JSON object"):
        run(feedback(), [1, 2])


def test_flat_snapshot_and_message_list_are_understood():
    rec = feedback()
    chat = rec["snapshot"]["chat"]["chat"]
    chat["history"]["messages"] = list(chat["history"]["messages"].values())
    rec["snapshot"] = {"chat": {"id": "chat-1", "title": "x"}, "history": chat["history"]}  # no params: no system
    ev = run(rec).events[0][1]
    assert ev["messages"][0] == {"role": "user", "content": "Hi, what is 2+2?"} and ev["response"] == "12."


def test_oversized_extras_are_dropped_within_the_metadata_limit():
    rec = feedback(comment="x" * 5000)
    ev = run(rec, max_metadata_bytes=2000).events[0][1]
    assert "comment" not in ev["metadata"] and ev["metadata"]["dropped"] == ["comment"]
    assert len(orjson.dumps(ev["metadata"])) <= 2000


def test_jsonl_and_gzip_bodies():
    body = b"\n".join(orjson.dumps(feedback(f"fb-{i}")) for i in range(3))
    import gzip

    files = unpack(gzip.compress(body), name="export.jsonl.gz", max_uncompressed_bytes=1 << 20)
    assert list(files) == ["export.jsonl"]
    conv = convert("openwebui", files, Options())
    assert [r for r, _ in conv.events] == ["openwebui:fb-0", "openwebui:fb-1", "openwebui:fb-2"]
    assert copy.deepcopy(conv.events[0][1]["messages"]) == conv.events[1][1]["messages"]

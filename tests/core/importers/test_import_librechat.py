"""LibreChat importer.

Fixtures follow LibreChat's ``messageSchema``
(packages/data-schemas/src/schema/message.ts: messageId, conversationId,
parentMessageId, user, model, endpoint, sender, text, content,
isCreatedByUser, feedback {rating: thumbsUp | thumbsDown, tag, text},
createdAt/updatedAt) as ``mongoexport --collection messages`` writes them
(extended JSON: ``{"$oid"}``, ``{"$date"}``), and the ``conversations``
collection's ``promptPrefix`` (packages/data-schemas/src/schema/convo.ts).
"""

from __future__ import annotations

import orjson
import pytest

from core.importers import Malformed, Options, convert

ROOT = "00000000-0000-0000-0000-000000000000"


def msg(mid: str, parent: str, text: str, user: bool, feedback=None, **kw) -> dict:
    rec = {"_id": {"$oid": "65f0" + mid.rjust(20, "0")}, "messageId": mid, "conversationId": "conv-1",
           "parentMessageId": parent, "user": "u-42", "model": None if user else "gpt-4o",
           "endpoint": "openAI", "sender": "User" if user else "GPT-4o", "text": text, "isCreatedByUser": user,
           "unfinished": False, "error": False, "createdAt": {"$date": "2024-06-01T10:00:00.000Z"},
           "updatedAt": {"$date": "2024-06-01T10:05:00.000Z"}, **kw}
    if feedback is not None:
        rec["feedback"] = feedback
    return rec


def thread(rating: str = "thumbsUp") -> list[dict]:
    """Two turns; the user edited the second question (q2 and q2b are siblings) and rated the edited branch."""
    return [
        msg("q1", ROOT, "Name a prime.", True),
        msg("r1", "q1", "7", False),
        msg("q2", "r1", "A bigger one?", True),
        msg("r2", "q2", "11", False),
        msg("q2b", "r1", "An even one?", True),
        msg("r2b", "q2b", "2", False, feedback={"rating": rating, "tag": {"key": "accurate"}, "text": "yes"}),
    ]


def jsonl(records) -> bytes:
    return b"\n".join(orjson.dumps(r) for r in records)


def run(files: dict, **opts):
    return convert("librechat", {k: jsonl(v) for k, v in files.items()}, Options(**opts))


def test_rated_branch_with_system_prompt_from_the_conversation():
    convos = [{"_id": {"$oid": "1" * 24}, "conversationId": "conv-1", "title": "Primes", "endpoint": "openAI",
               "model": "gpt-4o", "promptPrefix": "You are a number theorist.", "user": "u-42"}]
    conv = run({"messages.jsonl": thread(), "conversations.jsonl": convos})
    assert conv.skipped == [] and conv.records == 1
    ref, ev = conv.events[0]
    assert ref == "librechat:r2b"
    assert ev["messages"] == [{"role": "system", "content": "You are a number theorist."},
                              {"role": "user", "content": "Name a prime."},
                              {"role": "assistant", "content": "7"},
                              {"role": "user", "content": "An even one?"}]
    assert (ev["response"], ev["label"], ev["user_id"], ev["conversation_id"], ev["model"]) == (
        "2", "up", "u-42", "conv-1", "gpt-4o")
    assert ev["created_at"] == "2024-06-01T10:05:00+00:00"
    assert ev["metadata"] == {"source": "librechat", "source_id": "r2b", "tag": {"key": "accurate"},
                              "comment": "yes", "endpoint": "openAI", "sender": "GPT-4o"}


def test_json_array_export_and_content_parts():
    records = thread("thumbsDown")
    records[-1]["text"] = ""
    records[-1]["content"] = [{"type": "think", "think": "hmm"}, {"type": "text", "text": "Two."}]
    conv = convert("librechat", {"messages.json": orjson.dumps(records)}, Options())
    ev = conv.events[0][1]
    assert (ev["response"], ev["label"]) == ("Two.", "down") and ev["messages"][0]["role"] == "user"


def test_missing_parent_and_other_ratings_are_skipped():
    records = thread()[1:]  # q1 is not in the export
    records.append(msg("r9", "q2", "13", False, feedback={"rating": "meh"}))
    records.append(msg("q9", "r1", "me?", True, feedback={"rating": "thumbsUp"}))
    conv = run({"m.jsonl": records})
    assert conv.events == []
    assert [s["record"] for s in conv.skipped] == ["librechat:r2b", "librechat:r9", "librechat:q9"]
    assert "'q1' is missing" in conv.skipped[0]["reason"]
    assert "'meh'" in conv.skipped[1]["reason"] and "user's own" in conv.skipped[2]["reason"]


def test_changed_rating_is_a_new_event_and_reimport_the_same():
    up = run({"m.jsonl": thread()}).events[0][1]
    assert run({"m.jsonl": thread()}).events[0][1] == up
    records = thread("thumbsDown")
    records[-1]["updatedAt"] = {"$date": {"$numberLong": "1717236000000"}}
    down = run({"m.jsonl": records}).events[0][1]
    assert down["label"] == "down" and down["event_id"] != up["event_id"]
    assert down["created_at"] == "2024-06-01T10:00:00+00:00"
    assert (down["user_id"], down["messages"], down["response"]) == (up["user_id"], up["messages"], up["response"])


def test_a_message_without_message_id_is_malformed():
    records = thread()
    records[2]["messageId"] = 5
    with pytest.raises(Malformed, match=r"m.jsonl\[2\]: field 'messageId'"):
        run({"m.jsonl": records})

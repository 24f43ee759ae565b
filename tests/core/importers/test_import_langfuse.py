"""Langfuse importer.

Fixtures follow Langfuse's public API types (fern/apis/server/definition/commons.yml:
``Trace``, ``Observation``, ``BooleanScore`` / ``NumericScore`` /
``CategoricalScore`` discriminated by ``dataType``) as ``GET
/api/public/traces``, ``/api/public/observations`` and ``/api/public/scores``
page them (``{"data": [...], "meta": {...}}``).
"""

from __future__ import annotations

import io
import tarfile

import orjson
import pytest

from core.importers import Malformed, Options, convert
from core.importers.files import unpack

CHAT_INPUT = [{"role": "system", "content": "You are support."}, {"role": "user", "content": "Reset my password"},
              {"role": "assistant", "content": "Which account?"}, {"role": "user", "content": "The admin one"}]


def trace(tid="t-1", **kw) -> dict:
    return {"id": tid, "timestamp": "2024-07-01T12:00:00.000Z", "name": "support-chat", "input": CHAT_INPUT,
            "output": {"role": "assistant", "content": "Use the reset link."}, "sessionId": "s-1",
            "release": None, "version": None, "userId": "end-user-1", "metadata": {}, "tags": ["prod"],
            "public": False, "htmlPath": f"/project/p/traces/{tid}", "latency": 1.2, "totalCost": 0.001,
            "observations": ["o-1"], "scores": [], **kw}


def observation(oid="o-1", tid="t-1") -> dict:
    return {"id": oid, "traceId": tid, "type": "GENERATION", "name": "llm", "startTime": "2024-07-01T12:00:00Z",
            "endTime": "2024-07-01T12:00:01Z", "model": "gpt-4o-mini", "modelParameters": {"temperature": 0},
            "input": {"messages": CHAT_INPUT[1:]}, "output": {"choices": [{"index": 0, "message": {
                "role": "assistant", "content": "Click 'Forgot password'."}, "finish_reason": "stop"}]},
            "usage": {"input": 20, "output": 5, "total": 25, "unit": "TOKENS"}, "level": "DEFAULT",
            "statusMessage": None, "parentObservationId": None, "promptId": None}


def score(sid, value, data_type="BOOLEAN", name="user-feedback", tid="t-1", oid=None, **kw) -> dict:
    rec = {"id": sid, "traceId": tid, "name": name, "source": "API", "observationId": oid,
           "timestamp": "2024-07-01T12:01:00.000Z", "createdAt": "2024-07-01T12:01:00.100Z",
           "updatedAt": "2024-07-01T12:01:00.100Z", "authorUserId": None, "comment": None, "configId": None,
           "queueId": None, "dataType": data_type, "value": value, **kw}
    if data_type == "BOOLEAN":
        rec["stringValue"] = "True" if value == 1 else "False"
    return rec


def page(items) -> bytes:
    return orjson.dumps({"data": items, "meta": {"page": 1, "limit": 50, "totalItems": len(items),
                                                 "totalPages": 1}})


def run(scores, traces=(), observations=(), **opts):
    files = {"scores.json": page(scores), "traces.json": page(list(traces)),
             "observations.json": page(list(observations))}
    return convert("langfuse", files, Options(**opts))


def test_boolean_trace_score_with_system_prompt_and_turns():
    conv = run([score("s-1", 1)], [trace()])
    assert conv.skipped == []
    ref, ev = conv.events[0]
    assert ref == "langfuse:s-1"
    assert ev["messages"] == CHAT_INPUT and ev["response"] == "Use the reset link."
    assert (ev["label"], ev["user_id"], ev["conversation_id"], ev["response_id"], ev["created_at"]) == (
        "up", "end-user-1", "s-1", "t-1", "2024-07-01T12:01:00+00:00")
    assert ev["metadata"]["name"] == "user-feedback" and ev["metadata"]["tags"] == ["prod"]


def test_observation_score_uses_the_generation_and_its_model():
    ev = run([score("s-1", 0, oid="o-1")], [trace()], [observation()]).events[0][1]
    assert ev["messages"] == CHAT_INPUT[1:] and ev["response"] == "Click 'Forgot password'."
    assert (ev["label"], ev["model"], ev["response_id"]) == ("down", "gpt-4o-mini", "o-1")


def test_numeric_threshold_categorical_mapping_and_names():
    scores = [score("n-1", 0.9, "NUMERIC"), score("n-2", 0.2, "NUMERIC"),
              score("c-1", None, "CATEGORICAL", stringValue="helpful"),
              score("c-2", None, "CATEGORICAL", stringValue="meh"),
              score("x-1", 1, name="faithfulness"), {**score("b-1", 0.5), "stringValue": "0.5"}]
    conv = run(scores, [trace()], numeric_threshold=0.5)
    assert [(r, e["label"]) for r, e in conv.events] == [("langfuse:n-1", "up"), ("langfuse:n-2", "down"),
                                                         ("langfuse:c-1", "up")]
    reasons = {s["record"]: s["reason"] for s in conv.skipped}
    assert "'meh'" in reasons["langfuse:c-2"] and "'faithfulness'" in reasons["langfuse:x-1"]
    assert "neither 1 nor 0" in reasons["langfuse:b-1"]
    custom = run([score("c-2", None, "CATEGORICAL", stringValue="meh"), score("x-1", 1, name="faithfulness")],
                 [trace()], categorical_down=("meh",), score_names=("faithfulness",))
    assert [r for r, _ in custom.events] == ["langfuse:x-1"] and len(custom.skipped) == 1


def test_missing_trace_and_unusable_output_are_skipped():
    conv = run([score("s-1", 1, tid="t-9"), score("s-2", 1, tid="t-2")], [trace("t-2", output={"a": 1, "b": 2})])
    assert conv.events == []
    assert "'t-9' is not in the export" in conv.skipped[0]["reason"]
    assert "no response text" in conv.skipped[1]["reason"]


def test_trace_with_embedded_scores_snake_case_and_tar_gz():
    full = trace(scores=[{k: v for k, v in score("s-1", 1).items() if k != "traceId"}],
                 observations=[observation()])
    snake = {"id": "s-2", "trace_id": "t-1", "name": "user-feedback", "data_type": "BOOLEAN", "value": 0,
             "timestamp": "2024-07-02T00:00:00Z"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("export/trace.json", orjson.dumps(full)), ("export/scores.jsonl", orjson.dumps(snake))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    conv = convert("langfuse", unpack(buf.getvalue(), max_uncompressed_bytes=1 << 20), Options())
    assert sorted((r, e["label"]) for r, e in conv.events) == [("langfuse:s-1", "up"), ("langfuse:s-2", "down")]


def test_changed_value_is_a_new_event_of_the_same_voter_and_reimport_identical():
    one = run([score("s-1", 1)], [trace()]).events[0][1]
    assert run([score("s-1", 1)], [trace()]).events[0][1] == one
    two = run([score("s-1", 0)], [trace()]).events[0][1]
    assert two["event_id"] != one["event_id"] and two["user_id"] == one["user_id"] == "end-user-1"


def test_without_a_user_the_score_is_the_voter():
    ev = run([score("s-1", 1)], [trace(userId=None)]).events[0][1]
    assert ev["user_id"] == "langfuse-record:s-1"


def test_a_trace_without_id_is_malformed():
    with pytest.raises(Malformed, match=r"traces.json\[0\]: field 'id'"):
        run([score("s-1", 1)], [{"name": "x", "input": "a", "output": "b"}])

"""LangSmith importer.

Fixtures follow the SDK's ``Feedback`` / ``FeedbackSourceBase`` and ``Run``
models (python/langsmith/schemas.py) as ``Client.list_feedback()`` /
``Client.list_runs()`` serialise them, and the REST ``POST /runs/query``
page (``{"runs": [...], "cursors": {...}}``).
"""

from __future__ import annotations

import orjson

from core.importers import Options, convert

LC_INPUT = {"messages": [[
    {"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", "SystemMessage"],
     "kwargs": {"content": "You are a travel agent.", "type": "system"}},
    {"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", "HumanMessage"],
     "kwargs": {"content": "Cheap flights to Rome?", "type": "human"}},
    {"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", "AIMessage"],
     "kwargs": {"content": "", "type": "ai", "tool_calls": [{"name": "search", "args": {}, "id": "c1"}]}},
    {"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", "ToolMessage"],
     "kwargs": {"content": "[...]", "type": "tool", "tool_call_id": "c1"}},
    {"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", "HumanMessage"],
     "kwargs": {"content": "In May", "type": "human"}},
]]}
LC_OUTPUT = {"generations": [[{"text": "Try Ryanair in May.", "generation_info": {"finish_reason": "stop"},
                               "type": "ChatGeneration", "message": {"lc": 1, "type": "constructor",
                                                                     "id": ["langchain", "schema", "messages",
                                                                            "AIMessage"],
                                                                     "kwargs": {"content": "Try Ryanair in May."}}}]],
             "llm_output": None, "run": None}


def run_(rid="r-1", inputs=None, outputs=None, **meta) -> dict:
    return {"id": rid, "name": "ChatOpenAI", "start_time": "2024-08-01T09:00:00", "run_type": "llm",
            "end_time": "2024-08-01T09:00:02", "extra": {"invocation_params": {"model_name": "gpt-4o"},
                                                         "metadata": {"thread_id": "th-1", **meta}},
            "error": None, "inputs": inputs or LC_INPUT, "outputs": outputs or LC_OUTPUT, "tags": ["prod"],
            "trace_id": rid, "dotted_order": f"20240801T090000000000Z{rid}", "session_id": "proj-1"}


def feedback(fid, score=1, key="user_score", run_id="r-1", **kw) -> dict:
    return {"id": fid, "created_at": "2024-08-01T09:01:00.000000+00:00",
            "modified_at": "2024-08-01T09:01:00.000000+00:00", "run_id": run_id, "trace_id": run_id, "key": key,
            "score": score, "value": None, "comment": None, "correction": None,
            "feedback_source": {"type": "api", "metadata": {}, "user_id": "sdk-key-owner"}, **kw}


def run(feedbacks, runs, **opts):
    files = {"feedback.json": orjson.dumps(feedbacks), "runs.json": orjson.dumps({"runs": runs, "cursors": {}})}
    return convert("langsmith", files, Options(**opts))


def test_langchain_messages_without_tool_turns():
    conv = run([feedback("f-1")], [run_(user_id="end-user-9")])
    assert conv.skipped == []
    ref, ev = conv.events[0]
    assert ref == "langsmith:f-1"
    assert ev["messages"] == [{"role": "system", "content": "You are a travel agent."},
                              {"role": "user", "content": "Cheap flights to Rome?"},
                              {"role": "user", "content": "In May"}]
    assert (ev["response"], ev["label"], ev["user_id"], ev["conversation_id"], ev["model"], ev["response_id"]) == (
        "Try Ryanair in May.", "up", "end-user-9", "th-1", "gpt-4o", "r-1")
    assert ev["metadata"]["key"] == "user_score" and ev["metadata"]["run_type"] == "llm"


def test_scores_values_and_keys():
    feedbacks = [feedback("f-0", 0), feedback("f-t", True), feedback("f-n", -1), feedback("f-x", 0.7),
                 feedback("f-c", None, value="thumbs_down"), feedback("f-k", 1, key="correctness")]
    conv = run(feedbacks, [run_()])
    assert [(r, e["label"]) for r, e in conv.events] == [("langsmith:f-0", "down"), ("langsmith:f-t", "up"),
                                                         ("langsmith:f-n", "down"), ("langsmith:f-c", "down")]
    reasons = {s["record"]: s["reason"] for s in conv.skipped}
    assert "0.7" in reasons["langsmith:f-x"] and "'correctness'" in reasons["langsmith:f-k"]
    assert [r for r, _ in run([feedback("f-k", 1, key="correctness")], [run_()],
                              feedback_keys=("correctness",)).events] == ["langsmith:f-k"]


def test_chain_inputs_and_missing_runs():
    chain = run_("r-2", inputs={"question": "Capital of Italy?"}, outputs={"answer": "Rome"})
    conv = run([feedback("f-1", run_id="r-2"), feedback("f-2", run_id="r-404")], [chain])
    ev = conv.events[0][1]
    assert (ev["prompt"], ev["response"]) == ("Capital of Italy?", "Rome")
    assert "'r-404' is not in the export" in conv.skipped[0]["reason"]


def test_voter_is_the_end_user_else_the_app_annotator_else_the_feedback():
    api = run([feedback("f-1")], [run_()]).events[0][1]
    assert api["user_id"] == "langsmith-record:f-1"  # an API key's owner is not the voter
    app = feedback("f-2", feedback_source={"type": "app", "user_id": "reviewer-1"})
    assert run([app], [run_()]).events[0][1]["user_id"] == "reviewer-1"


def test_modified_feedback_is_a_new_event_of_the_same_voter():
    one = run([feedback("f-1")], [run_(user_id="u")]).events[0][1]
    assert run([feedback("f-1")], [run_(user_id="u")]).events[0][1] == one
    two = run([feedback("f-1", 0, modified_at="2024-08-02T00:00:00Z")], [run_(user_id="u")]).events[0][1]
    assert (two["label"], two["user_id"], two["created_at"]) == ("down", "u", "2024-08-02T00:00:00+00:00")
    assert two["event_id"] != one["event_id"]

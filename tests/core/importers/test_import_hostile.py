"""Hostile or odd exports never crash a converter: each gives a conversion, or a DomainError (a 4xx).

Records are generated from the field names of every source's schema (see
the per-source tests for the schema files), nested at random.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import DomainError
from core.importers import SOURCES, Options, convert
from core.importers.files import unpack

KEYS = ["id", "user_id", "type", "data", "rating", "meta", "message_id", "snapshot", "chat", "history", "messages",
        "parentId", "role", "content", "details", "updated_at", "messageId", "parentMessageId", "feedback", "text",
        "isCreatedByUser", "conversationId", "promptPrefix", "updatedAt", "$date", "$numberLong", "traceId",
        "observationId", "dataType", "value", "stringValue", "name", "input", "output", "userId", "scores",
        "observations", "run_id", "key", "score", "inputs", "outputs", "extra", "metadata", "feedback_source",
        "mapping", "parent", "message", "author", "parts", "content_type", "conversation_id", "lc", "kwargs",
        "choices", "generations", "params", "system", "timestamp", "email"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from(["", "a2", "u1", "user-feedback", "thumbsUp", "thumbs_down", "user", "assistant",
                                     "BOOLEAN", "NUMERIC", "CATEGORICAL", "1", "-1", "2024-01-01T00:00:00Z",
                                     "99999999999999999999", "user_score", "text", "all"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)),
                      max_leaves=30)
records = st.lists(st.dictionaries(st.sampled_from(KEYS), values, max_size=8), max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from(sorted(SOURCES)), recs=records)
def test_random_records_never_crash(source, recs):
    try:
        conv = convert(source, {"x.json": orjson.dumps(recs)}, Options(max_metadata_bytes=512, max_metadata_depth=3))
    except DomainError:
        return
    for _, event in conv.events:
        assert isinstance(event, dict)


@pytest.mark.parametrize("body", [b"", b"\x1f\x8b\x08garbage", b"PK\x05\x06" + b"\0" * 18, b"[" * 5000 + b"]" * 5000,
                                  b'{"data": 5}', b"\xff\xfe not utf-8"])
def test_odd_bodies(body):
    for source in SOURCES:
        try:
            convert(source, unpack(body, max_uncompressed_bytes=1 << 20), Options())
        except DomainError:
            pass


def test_deep_nesting_in_free_form_fields():
    deep = "[" * 1000 + '"x"' + "]" * 1000  # deeper than Python's recursion limit, within orjson's
    body = (f'[{{"id": "t", "input": {deep}, "output": {deep}, "metadata": {deep}}},'
            f'{{"id": "s", "traceId": "t", "name": "user-feedback", "dataType": "BOOLEAN", "value": 1, '
            f'"comment": {deep}}}]').encode()
    conv = convert("langfuse", {"x.json": body}, Options())
    assert conv.events == [] and "no prompt text" in conv.skipped[0]["reason"]
    body = body.replace(f'"input": {deep}'.encode(), b'"input": "hi"').replace(f'"output": {deep}'.encode(),
                                                                               b'"output": "hello"')
    ev = convert("langfuse", {"x.json": body}, Options()).events[0][1]
    assert (ev["prompt"], ev["response"]) == ("hi", "hello") and ev["metadata"]["dropped"] == ["comment"]

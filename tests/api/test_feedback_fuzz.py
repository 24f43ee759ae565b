"""Schemathesis against the OpenAPI schema of /v1/feedback: no generated request gets a 5xx.

Bounded (max_examples per operation, no deadline) so it stays well under a minute.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from api.main import create_app
from core.db import session_scope
from core.keys import create_key


@pytest.fixture
def fuzz_app(request, settings):
    app = create_app(settings)
    with session_scope(app.state.engine) as s:
        app.state.fuzz_key = create_key(s, name="fuzz", scopes="admin")[1]
    # A few stored events, so GET/DELETE and the 200/409 paths are reachable.
    from fastapi.testclient import TestClient

    client = TestClient(app)
    auth = {"Authorization": f"Bearer {app.state.fuzz_key}"}
    for i in range(3):
        client.post("/v1/feedback", json={"event_id": f"seed{i}", "prompt": "p", "response": "r", "label": "up"},
                    headers=auth)
    return app


def test_no_5xx(fuzz_app):
    """Every /v1/feedback operation, driven by Hypothesis through schemathesis' strategies."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app).include(path_regex="^/v1/feedback")
    auth = {"Authorization": f"Bearer {fuzz_app.state.fuzz_key}"}
    seen: Counter = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(headers=auth)
            seen[(case.method, response.status_code)] += 1
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])

        check()
    # Authenticated requests reached the handlers (not a wall of 401s).
    assert seen[("GET", 200)] > 0 and not any(code in (401, 403) for _, code in seen)

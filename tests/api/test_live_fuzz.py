"""Schemathesis against the live-loop endpoints (per-version feedback, routing, rollouts, serving targets):
no generated request gets a 5xx, on SQLite and Postgres (which refuses NUL in text)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from api.main import create_app
from core.db import session_scope
from core.keys import create_key

PATHS = r"^/v1/(adapters/\{name\}/(feedback|route|rollouts)|serving-targets)"


@pytest.fixture
def fuzz_app(settings):
    app = create_app(settings)
    with session_scope(app.state.engine) as s:
        app.state.fuzz_key = create_key(s, name="fuzz", scopes="admin")[1]
    return app


def test_no_5xx(fuzz_app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app).include(path_regex=PATHS)
    auth = {"Authorization": f"Bearer {fuzz_app.state.fuzz_key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(headers=auth)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])

        check()

"""A TestClient on a fresh app with one API key per scope, for API tests.

Importable from tests as ``from api_client import make_api``.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.main import create_app
from core.db import session_scope
from core.keys import SCOPES, create_key
from core.settings import Settings


def make_api(settings: Settings) -> tuple[TestClient, dict[str, dict[str, str]]]:
    """The client and, per scope (ingest, read, train, admin), the headers of a key with only that scope."""
    app = create_app(settings)
    headers = {}
    with session_scope(app.state.engine) as s:
        for scope in SCOPES:
            headers[scope] = {"Authorization": f"Bearer {create_key(s, name=scope, scopes=scope)[1]}"}
    return TestClient(app), headers

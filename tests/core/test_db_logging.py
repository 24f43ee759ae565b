"""SQL parameters hold prompts: database errors (and so logs) must not carry them."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from core.db import make_engine


def test_errors_hide_parameters(db_url):
    engine = make_engine(db_url)
    try:
        with pytest.raises(DBAPIError) as info, engine.connect() as conn:
            conn.execute(text("SELECT * FROM no_such_table WHERE x = :p"), {"p": "my secret prompt"})
        assert "my secret prompt" not in str(info.value)
    finally:
        engine.dispose()

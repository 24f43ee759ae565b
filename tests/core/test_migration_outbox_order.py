"""Migration 0008_outbox_order numbers the deliveries already written, per target, in the order they were listed."""

from __future__ import annotations

from sqlalchemy import text

from core.db import make_engine
from core.migrate import downgrade, upgrade


def test_existing_deliveries_are_numbered_per_target(db_url):
    engine = make_engine(db_url)
    try:
        downgrade(db_url, "0007_bundled_preparing")
        with engine.begin() as conn:
            for t in ("t1", "t2"):
                conn.execute(text(
                    "INSERT INTO serving_targets (id, name, kind, url, adapter_name, secret, loaded, created_at) "
                    f"VALUES ('{t}', '{t}', 'webhook', 'http://x', 'bot', 's', '[]', '2026-01-01 00:00:00')"))
            for i, (target, at) in enumerate([("t1", "03"), ("t2", "01"), ("t1", "01"), ("t1", "02"), ("t2", "02")]):
                conn.execute(text(
                    "INSERT INTO deliveries (id, target_id, event, payload, status, attempts, next_attempt_at, "
                    f"created_at) VALUES ('d{i}', '{target}', 'alias.moved', '{{}}', 'pending', 0, "
                    f"'2026-01-01 00:00:{at}', '2026-01-01 00:00:{at}')"))
        upgrade(db_url)
        with engine.connect() as conn:
            got = conn.execute(text("SELECT target_id, seq, id FROM deliveries ORDER BY target_id, seq")).all()
        assert got == [("t1", 1, "d2"), ("t1", 2, "d3"), ("t1", 3, "d0"), ("t2", 1, "d1"), ("t2", 2, "d4")]
    finally:
        engine.dispose()

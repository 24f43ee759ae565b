"""Migration 0004_live_loop down to 0001 and up again keeps the feedback already stored."""

from __future__ import annotations

from sqlalchemy import inspect, text

from core.db import make_engine
from core.migrate import downgrade, upgrade

LIVE_TABLES = {"rollouts", "rollout_evaluations", "serving_targets", "deliveries"}


def test_live_loop_migration_down_and_up(db_url):
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO feedback_events (event_id, content_hash, prompt, prompt_key, pair_key, response, label, "
                "created_at, received_at, adapter, adapter_version) VALUES ('e1', 'h', 'p', 'k', 'pk', 'r', true, "
                "'2026-01-01 00:00:00', '2026-01-01 00:00:00', 'bot', 3)"))
        downgrade(db_url, "0001")
        insp = inspect(engine)
        assert LIVE_TABLES.isdisjoint(insp.get_table_names())
        assert {"adapter", "adapter_version"}.isdisjoint(c["name"] for c in insp.get_columns("feedback_events"))
        assert "rollout" not in {c["name"] for c in insp.get_columns("training_policies")}
        upgrade(db_url)
        assert LIVE_TABLES <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:  # the event survived; its attribution was the downgrade's to drop
            assert conn.execute(text("SELECT event_id, adapter FROM feedback_events")).all() == [("e1", None)]
    finally:
        engine.dispose()

"""upgrade -> downgrade -> upgrade, and no drift between the models and the migrated schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from core.db import make_engine
from core.migrate import downgrade, upgrade
from core.models import Base


def _diff(engine) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, Base.metadata)


def test_upgrade_downgrade_upgrade_has_no_drift(db_url):
    engine = make_engine(db_url)
    try:
        assert _diff(engine) == []
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables

        downgrade(db_url, "base")
        left = set(inspect(engine).get_table_names()) - {"alembic_version"}
        assert left == set()

        upgrade(db_url)
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        assert _diff(engine) == []
    finally:
        engine.dispose()


def test_fencing_migration_down_and_up(db_url):
    """0002_fencing: claim tokens, one version per job, kept prompt splits, snapshot filters."""
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    engine = make_engine(db_url)
    try:
        downgrade(db_url, "0001")
        insp = inspect(engine)
        assert "prompt_splits" not in insp.get_table_names()
        assert "claim_token" not in {c["name"] for c in insp.get_columns("alignment_jobs")}
        upgrade(db_url)
        insp = inspect(engine)
        assert {"claim_token", "snapshot_filters"} <= {c["name"] for c in insp.get_columns("alignment_jobs")}
        assert "snapshot_filters" in {c["name"] for c in insp.get_columns("training_policies")}
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO base_models (name, source, path, sha256, created_at) "
                              "VALUES ('b', 's', 'p', 'h', '2026-01-01')"))
            base_id = conn.execute(text("SELECT id FROM base_models")).scalar()
            row = ("INSERT INTO adapter_versions (adapter_name, version, path, manifest, manifest_sha256, job_id, "
                   "base_model_id, created_at) VALUES ('a', :v, 'p', '{}', 'h', :job, :b, '2026-01-01')")
            conn.execute(text(row), {"v": 1, "job": None, "b": base_id})
            conn.execute(text(row), {"v": 2, "job": None, "b": base_id})  # versions without a job: many
            conn.execute(text(row), {"v": 3, "job": "j1", "b": base_id})
        try:
            with engine.begin() as conn:
                conn.execute(text(row), {"v": 4, "job": "j1", "b": base_id})
            raise AssertionError("a second version of job j1 was accepted")
        except IntegrityError:
            pass
    finally:
        engine.dispose()


def test_0003_namespaces_voter_keys_and_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url, "0001")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for pk, user in ((1, "u1"), (2, None), (3, "event:e9")):
                conn.exec_driver_sql(
                    "INSERT INTO feedback_events (id, event_id, content_hash, prompt, prompt_key, pair_key, response,"
                    " label, user_id, created_at, received_at) VALUES (?, ?, 'h', 'p', 'k', ?, 'r', 1, ?,"
                    " '2025-01-01', '2025-01-01')", (pk, f"e{pk}", f"pair{pk}", user))
                conn.exec_driver_sql(
                    "INSERT INTO votes (voter_key, pair_key, prompt_key, event_pk, label, created_at, updated_at)"
                    " VALUES (?, ?, 'k', ?, 1, '2025-01-01', '2025-01-01')", (user or f"event:e{pk}", f"pair{pk}", pk))

        def keys() -> list[str]:
            with engine.connect() as conn:
                return [r[0] for r in conn.exec_driver_sql("SELECT voter_key FROM votes ORDER BY event_pk")]

        upgrade(url, "0003_hardening")
        assert keys() == ["user:u1", "event:e2", "user:event:e9"]
        downgrade(url, "0001")
        assert keys() == ["u1", "event:e2", "event:e9"]
    finally:
        engine.dispose()


def test_0003_adds_pins_accountability_and_erasure_columns_and_drops_them(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url, "0001")
    engine = make_engine(url)
    added = {"base_models": {"files", "created_by_key_id"}, "snapshots": {"redacted_at", "created_by_key_id"},
             "alignment_jobs": {"created_by_key_id"}, "training_policies": {"created_by_key_id"},
             "feedback_events": {"erased_at"}}

    def columns() -> dict[str, set[str]]:
        insp = inspect(engine)
        return {t: {c["name"] for c in insp.get_columns(t)} & cols for t, cols in added.items()}

    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO base_models (name, source, path, sha256, created_at)"
                                 " VALUES ('old', '/m', '/m', 'abc', '2025-01-01')")
        assert columns() == {t: set() for t in added}
        upgrade(url, "0003_hardening")
        assert columns() == added
        with engine.connect() as conn:  # an old row pins its weights only until re-registered
            assert conn.exec_driver_sql("SELECT sha256, files, created_by_key_id FROM base_models").all() == [
                ("abc", None, None)]
        downgrade(url, "0001")
        assert columns() == {t: set() for t in added}
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT name, sha256 FROM base_models").all() == [("old", "abc")]
    finally:
        engine.dispose()

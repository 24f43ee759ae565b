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

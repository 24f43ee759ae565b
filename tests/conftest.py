"""Shared fixtures: every database test runs on SQLite and, when
PROSPECT_TEST_DATABASE_URL is set, on Postgres; broker tests run on the
SQLAlchemy broker and, when PROSPECT_TEST_REDIS_URL is set, on Redis.

Each test gets a fresh, migrated database: the migrations run once per session
into a template, and each test copies it (a file copy on SQLite,
CREATE DATABASE ... TEMPLATE on Postgres), which is much faster than
migrating per test.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine

from core.db import make_engine
from core.migrate import upgrade
from core.settings import Settings

# Prometheus samples of this run (and of the processes it starts) go to a folder of their own,
# set before anything imports prometheus_client (core.metrics reads it at import).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="prospect-metrics-"))

PG_URL = os.environ.get("PROSPECT_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("PROSPECT_TEST_REDIS_URL")
NO_PG = "PROSPECT_TEST_DATABASE_URL is not set: Postgres variant skipped"
NO_REDIS = "PROSPECT_TEST_REDIS_URL is not set: Redis variant skipped"


def _pg_admin_engine() -> Engine:
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT")


def create_pg_database(template: str | None = None) -> str:
    """Create a uniquely named Postgres database; returns its URL."""
    name = f"prospect_t_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    admin.dispose()
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    name = make_url(url).database
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session", autouse=True)
def _models_anywhere_in_pytest_tmp(tmp_path_factory) -> Iterator[None]:
    """Tests build model folders in pytest's temp folders: let every Settings (and the CLI) register from
    there. Tests of the confinement pass their own base_model_dirs."""
    os.environ["PROSPECT_BASE_MODEL_DIRS"] = json.dumps([str(tmp_path_factory.getbasetemp())])
    yield
    os.environ.pop("PROSPECT_BASE_MODEL_DIRS", None)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def _pg_template() -> Iterator[str]:
    url = create_pg_database()
    upgrade(url)
    yield make_url(url).database
    drop_pg_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> Iterator[str]:
    """A fresh, migrated database URL (SQLite file or a new Postgres database)."""
    if request.param == "sqlite":
        path = tmp_path / "prospect.db"
        shutil.copy(request.getfixturevalue("_sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    if not PG_URL:
        pytest.skip(NO_PG)
    url = create_pg_database(template=request.getfixturevalue("_pg_template"))
    yield url
    drop_pg_database(url)


@pytest.fixture
def engine(db_url) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture(params=["sqla", pytest.param("redis", marks=pytest.mark.redis)])
def broker_url(request, tmp_path) -> str:
    if request.param == "sqla":
        return f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    if not REDIS_URL:
        pytest.skip(NO_REDIS)
    return REDIS_URL


@pytest.fixture
def settings(tmp_path, db_url) -> Settings:
    """Settings for one test: its own data dir and database, the embedded broker."""
    return Settings(
        data_dir=tmp_path / "var",
        database_url=db_url,
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        result_backend=f"db+sqlite:///{tmp_path / 'results.db'}",
        register_bundled_model=False,
    )


# A SeaweedFS S3 endpoint for the artifact-store tests (skipped where `weed` cannot start).
from tests.s3kit import blackhole, s3_bucket, s3_server  # noqa: F401

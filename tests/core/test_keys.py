from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import select

from core import keys
from core.db import make_engine, session_scope
from core.errors import Forbidden, InvalidInput, Unauthorized
from core.models import ApiKey


def test_create_stores_only_the_hash_and_authenticates(engine):
    with session_scope(engine) as s:
        _, plaintext = keys.create_key(s, name="ingestor", scopes="ingest,read")
    with session_scope(engine) as s:
        stored = s.scalars(select(ApiKey)).one()
        assert stored.key_hash == keys.hash_key(plaintext)
        assert plaintext not in (stored.key_hash, stored.prefix, stored.name)
        principal = keys.authenticate(s, plaintext=plaintext)
    assert principal.scopes == {"ingest", "read"}
    principal.require("read")
    with pytest.raises(Forbidden, match="train"):
        principal.require("train")


def test_bad_missing_and_revoked_keys(engine):
    with session_scope(engine) as s:
        row, plaintext = keys.create_key(s, name="k", scopes="admin")
    with session_scope(engine) as s:
        with pytest.raises(Unauthorized, match="missing"):
            keys.authenticate(s, plaintext=None)
        with pytest.raises(Unauthorized, match="invalid"):
            keys.authenticate(s, plaintext=plaintext + "x")
        keys.authenticate(s, plaintext=plaintext).require("train")  # admin implies all
        keys.revoke_key(s, key_id=row.id)
    with session_scope(engine) as s, pytest.raises(Unauthorized):
        keys.authenticate(s, plaintext=plaintext)


def test_scope_validation():
    assert keys.parse_scopes("read, ingest,read") == ["ingest", "read"]
    with pytest.raises(InvalidInput, match="unknown scope"):
        keys.parse_scopes("ingest,root")
    with pytest.raises(InvalidInput, match="at least one"):
        keys.parse_scopes(" , ")


def test_cli_keys_create_prints_key_last_and_list_hides_it(db_url, tmp_path):
    env = {**os.environ, "PROSPECT_DATABASE_URL": db_url, "PROSPECT_DATA_DIR": str(tmp_path)}
    cli = [sys.executable, "-m", "core.cli"]
    out = subprocess.run([*cli, "keys", "create", "--name", "bot", "--scopes", "ingest,read"],
                         env=env, capture_output=True, text=True, check=True)
    plaintext = out.stdout.strip().splitlines()[-1]
    assert plaintext.startswith(keys.KEY_PREFIX)
    listed = subprocess.run([*cli, "keys", "list"], env=env, capture_output=True, text=True, check=True)
    assert "bot" in listed.stdout and plaintext not in listed.stdout
    bad = subprocess.run([*cli, "keys", "create", "--name", "x", "--scopes", "root"], env=env,
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "unknown scope" in bad.stderr
    subprocess.run([*cli, "keys", "revoke", "1"], env=env, check=True, capture_output=True)
    engine = make_engine(db_url)
    with session_scope(engine) as s, pytest.raises(Unauthorized, match="revoked"):
        keys.authenticate(s, plaintext=plaintext)
    engine.dispose()
    missing = subprocess.run([*cli, "keys", "revoke", "99"], env=env, capture_output=True, text=True, check=False)
    assert missing.returncode == 2 and "no API key with id 99" in missing.stderr

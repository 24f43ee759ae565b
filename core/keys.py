"""API keys: random secrets shown once; only their sha256 is stored.

Keys carry 256 bits of entropy, so a fast hash is enough (no need for a slow
password hash) and lets each request find its key with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from core.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from core.models import ApiKey, utcnow

SCOPES = ("ingest", "read", "train", "admin")
KEY_PREFIX = "pk_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, name and scopes (admin implies all)."""

    key_id: int
    name: str
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        if scope not in self.scopes and "admin" not in self.scopes:
            raise Forbidden(f"this API key lacks the '{scope}' scope (has: {', '.join(sorted(self.scopes))})")


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def parse_scopes(raw: str | list[str]) -> list[str]:
    items = raw.split(",") if isinstance(raw, str) else raw
    scopes = sorted({s.strip() for s in items if s.strip()})
    if not scopes:
        raise InvalidInput(f"give at least one scope out of: {', '.join(SCOPES)}")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise InvalidInput(f"unknown scope(s) {', '.join(unknown)}; valid scopes: {', '.join(SCOPES)}")
    return scopes


def create_key(session: Session, *, name: str, scopes: str | list[str]) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the plaintext, which is never stored."""
    if not name.strip():
        raise InvalidInput("the key needs a non-empty name")
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        name=name.strip(), prefix=plaintext[:10], key_hash=hash_key(plaintext), scopes=",".join(parse_scopes(scopes))
    )
    session.add(row)
    session.flush()
    return row, plaintext


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_key(session: Session, *, key_id: int) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no API key with id {key_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def touch_last_used(session: Session, *, key_id: int, now: datetime, min_interval: timedelta) -> bool:
    """Set the key's last_used_at unless another process did within ``min_interval``; the caller commits."""
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - min_interval))
        .values(last_used_at=now)
    )
    return result.rowcount == 1


def authenticate(session: Session, *, plaintext: str | None) -> Principal:
    if not plaintext:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(plaintext)))
    if row is None or row.revoked_at is not None:
        raise Unauthorized("invalid or revoked API key")
    return Principal(key_id=row.id, name=row.name, scopes=frozenset(row.scopes.split(",")))

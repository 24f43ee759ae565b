"""One clock for leases and heartbeats: the database server's.

A job's heartbeat is written by a worker host and judged stale by the reaper on
another host; an outbox delivery's lease is taken by one worker and checked by
the next. With each host's own clock, a host running 10 minutes slow looks dead
to the others (its job is taken over while it trains), and one running fast
holds leases too long. On PostgreSQL every such time is the server's
``statement_timestamp()``; SQLite is one host's embedded file, so its clock is
that host's.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from core.models import utcnow


def db_now(bind: Session | Connection | Engine) -> datetime:
    """Now, timezone-aware UTC, from the database server where it has a clock of its own."""
    engine = bind.get_bind() if isinstance(bind, Session) else bind.engine
    if engine.dialect.name != "postgresql":
        return utcnow()
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            value = conn.execute(text("SELECT statement_timestamp()")).scalar_one()
    else:
        value = bind.execute(text("SELECT statement_timestamp()")).scalar_one()
    return value.astimezone(UTC)

"""Group commit: several single events, each from its own request, written in one transaction.

The rules are ``core.feedback``'s, applied in arrival order as if the events had come one
after the other: the first of an event_id is created, a later one with the same content is a
duplicate, with other content a conflict; a voter's newer vote (ties: the later arrival) is the
one counted. One multi-row statement per table and one commit serve the whole group.

A group that fails is not answered as a whole: its transaction rolled back, so each event is
then written on its own, in order, and each gets its own outcome (one bad row fails only its
own request; if the database is down, each gets that error).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import Engine

from core import feedback_write
from core.feedback import IngestResult, PreparedEvent

log = logging.getLogger(__name__)

Outcome = IngestResult | Exception


def ingest_group(engine: Engine, prepared: Sequence[PreparedEvent]) -> list[Outcome]:
    """One outcome per event, in order: its IngestResult (conflicts not raised), or the exception
    that kept it from being stored. Every IngestResult returned is committed."""
    if len(prepared) == 1:
        return [_alone(engine, prepared[0])]
    group = [PreparedEvent(i, p.row, p.voter_key) for i, p in enumerate(prepared)]
    results: list[IngestResult | None] = [None] * len(group)
    try:
        with engine.begin() as conn:
            feedback_write._write(conn, group, results)
    except Exception as exc:  # noqa: BLE001 - each row is retried alone and gets its own outcome
        log.info("a group of %d events failed (%s: %s); writing them one at a time",
                 len(group), type(exc).__name__, exc)
        return [_alone(engine, p) for p in prepared]
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def _alone(engine: Engine, prepared: PreparedEvent) -> Outcome:
    try:
        return feedback_write.ingest_prepared(engine, prepared)
    except Exception as exc:  # noqa: BLE001 - handed to the request that sent this event
        return exc

"""Feedback over time, for the dashboard: counted votes per day and the most recent events.

Counts follow ``core.feedback_query.feedback_stats`` (counted votes after re-votes
and retractions, bounded on the vote's created_at); days are UTC days.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import Date, Engine, cast, func, select

from core.feedback import EVENTS, VOTES, _utc
from core.feedback_query import _vote_filters
from core.live_stats import figures


def _day(engine: Engine, column):
    if engine.dialect.name == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    return func.date(column)  # SQLite stores UTC as naive text


def votes_per_day(engine: Engine, *, since: datetime | None = None, until: datetime | None = None,
                  model: str | None = None) -> list[dict[str, Any]]:
    """[{day, up, down, total, rate, interval}] for each UTC day with counted votes, oldest first."""
    day = _day(engine, VOTES.c.created_at).label("day")
    stmt = _vote_filters(select(day, VOTES.c.label, func.count()).group_by(day, VOTES.c.label), since, until, model)
    per: dict[date, dict[str, int]] = {}
    with engine.connect() as conn:
        for d, label, n in conn.execute(stmt):
            counts = per.setdefault(date.fromisoformat(str(d)[:10]), {"up": 0, "down": 0})
            counts["up" if label else "down"] += n
    return [{"day": d, **figures(c["up"], c["down"])} for d, c in sorted(per.items())]


def _prompt_text(prompt: str | None, messages: list | None) -> str:
    if prompt is not None:
        return prompt
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


def recent_events(engine: Engine, *, limit: int = 50, since: datetime | None = None,
                  until: datetime | None = None, model: str | None = None) -> list[dict[str, Any]]:
    """The newest events (by created_at) with whether each one's vote counts; texts in full."""
    stmt = (select(EVENTS.c.event_id, EVENTS.c.label, EVENTS.c.model, EVENTS.c.adapter, EVENTS.c.adapter_version,
                   EVENTS.c.prompt, EVENTS.c.messages, EVENTS.c.response, EVENTS.c.created_at,
                   EVENTS.c.retracted_at, VOTES.c.id.is_not(None).label("counted"))
            .outerjoin(VOTES, VOTES.c.event_pk == EVENTS.c.id)
            .order_by(EVENTS.c.created_at.desc(), EVENTS.c.id.desc()).limit(limit))
    stmt = _vote_filters(stmt, since, until, model, table=EVENTS)
    with engine.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    return [{**{k: r[k] for k in ("event_id", "model", "adapter", "adapter_version", "response", "retracted_at")},
             "label": "up" if r["label"] else "down", "prompt": _prompt_text(r["prompt"], r["messages"]),
             "created_at": _utc(r["created_at"]) if r["created_at"] else None, "counted": bool(r["counted"])}
            for r in rows]

"""Insert feedback events and counted votes straight through the ORM, for tests.

Follows the agreed vote semantics (see core/models.py): one counted vote per
(voter, pair); a re-vote moves it to the newer event; a retraction deletes it.
Importable from tests as ``from feedback_votes import add_vote``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.models import FeedbackEvent, Vote, utcnow

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def add_vote(
    session: Session,
    *,
    response: str,
    label: bool,
    prompt: str | None = None,
    messages: list | None = None,
    user: str | None = None,
    minute: int = 0,
    model: str | None = None,
    metadata: dict | None = None,
    received_at: datetime | None = None,
) -> FeedbackEvent:
    """One feedback event at T0 + ``minute``; its vote counts unless the voter has a newer one."""
    prompt_key = _sha(json.dumps(messages if messages is not None else prompt, sort_keys=True))
    pair_key = _sha(prompt_key + "\x00" + response)
    event_id = uuid.uuid4().hex
    created_at = T0 + timedelta(minutes=minute)
    event = FeedbackEvent(
        event_id=event_id, content_hash=_sha(event_id), prompt=prompt, messages=messages, prompt_key=prompt_key,
        pair_key=pair_key, response=response, label=label, user_id=user, model=model, metadata_=metadata,
        created_at=created_at, received_at=received_at or utcnow(),
    )
    session.add(event)
    session.flush()
    voter = f"user:{user}" if user else f"event:{event_id}"
    vote = session.scalar(select(Vote).where(Vote.voter_key == voter, Vote.pair_key == pair_key))
    if vote is None:
        session.add(Vote(voter_key=voter, pair_key=pair_key, prompt_key=prompt_key, event_pk=event.id, label=label,
                         model=model, created_at=created_at))
    elif vote.created_at <= created_at:
        vote.event_pk, vote.label, vote.model, vote.created_at = event.id, label, model, created_at
    session.flush()
    return event


def retract(session: Session, event: FeedbackEvent) -> None:
    event.retracted_at = utcnow()
    session.execute(delete(Vote).where(Vote.event_pk == event.id))
    session.flush()

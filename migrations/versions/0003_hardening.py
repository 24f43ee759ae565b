"""hardening: namespaced voter keys ("user:<user_id>" beside "event:<event_id>")

Revision ID: 0003_hardening
Revises: 0001
"""
from __future__ import annotations

from alembic import op

revision = "0003_hardening"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The counted event's user_id is its voter: rewrite exactly the rows of named voters.
    op.execute(
        "UPDATE votes SET voter_key = 'user:' || "
        "(SELECT e.user_id FROM feedback_events e WHERE e.id = votes.event_pk) "
        "WHERE EXISTS (SELECT 1 FROM feedback_events e WHERE e.id = votes.event_pk AND e.user_id IS NOT NULL)"
    )


def downgrade() -> None:
    op.execute("UPDATE votes SET voter_key = substr(voter_key, 6) WHERE voter_key LIKE 'user:%'")

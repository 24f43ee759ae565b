"""hardening: namespaced voter keys, pinned base-model files, who created what, erasure marks

Revision ID: 0003_hardening
Revises: 0002_fencing
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_hardening"
down_revision = "0002_fencing"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
CREATED_BY = ("alignment_jobs", "snapshots", "training_policies", "base_models")


def upgrade() -> None:
    # The counted event's user_id is its voter: rewrite exactly the rows of named voters.
    op.execute(
        "UPDATE votes SET voter_key = 'user:' || "
        "(SELECT e.user_id FROM feedback_events e WHERE e.id = votes.event_pk) "
        "WHERE EXISTS (SELECT 1 FROM feedback_events e WHERE e.id = votes.event_pk AND e.user_id IS NOT NULL)"
    )
    for table in CREATED_BY:
        op.add_column(table, sa.Column("created_by_key_id", BigId, nullable=True))
    # Rows registered before this pin their weights only (files NULL); verify_base_model handles both.
    op.add_column("base_models", sa.Column("files", sa.JSON(), nullable=True))
    op.add_column("snapshots", sa.Column("redacted_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("feedback_events", sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite 3.35+): none of these columns is indexed or constrained.
    op.drop_column("feedback_events", "erased_at")
    op.drop_column("snapshots", "redacted_at")
    op.drop_column("base_models", "files")
    for table in reversed(CREATED_BY):
        op.drop_column(table, "created_by_key_id")
    op.execute("UPDATE votes SET voter_key = substr(voter_key, 6) WHERE voter_key LIKE 'user:%'")

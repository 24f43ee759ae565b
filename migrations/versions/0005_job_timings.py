"""job timings: seconds per phase of a job (queue wait, snapshot, split, load, reference pass, training, ...)

Revision ID: 0005_job_timings
Revises: 0004_live_loop
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_job_timings"
down_revision = "0004_live_loop"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alignment_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("timings", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alignment_jobs", schema=None) as batch_op:
        batch_op.drop_column("timings")

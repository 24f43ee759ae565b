"""first hour: the phase a running job is in (loading model, reference pass n/N, training, ...)

Revision ID: 0006_first_hour
Revises: 0005_job_timings
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_first_hour"
down_revision = "0005_job_timings"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alignment_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phase", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alignment_jobs", schema=None) as batch_op:
        batch_op.drop_column("phase")

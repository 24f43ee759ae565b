"""fencing: a claim token per job delivery, one version per job, kept prompt splits, snapshot filters

Revision ID: 0002_fencing
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import core.models

revision = "0002_fencing"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alignment_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_token", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("snapshot_filters", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
    with op.batch_alter_table("training_policies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("snapshot_filters", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.create_index("uq_adapter_versions_job_id", ["job_id"], unique=True)
    op.create_table(
        "prompt_splits",
        sa.Column("prompt_key", sa.String(length=64), nullable=False),
        sa.Column("heldout", sa.Boolean(), nullable=False),
        sa.Column("created_at", core.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("prompt_key"),
    )


def downgrade() -> None:
    op.drop_table("prompt_splits")
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.drop_index("uq_adapter_versions_job_id")
    with op.batch_alter_table("training_policies", schema=None) as batch_op:
        batch_op.drop_column("snapshot_filters")
    with op.batch_alter_table("alignment_jobs", schema=None) as batch_op:
        batch_op.drop_column("snapshot_filters")
        batch_op.drop_column("claim_token")

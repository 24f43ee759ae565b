"""live loop: feedback attributed to adapter versions, rollouts, serving targets and the outbox

Revision ID: 0004_live_loop
Revises: 0003_hardening
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import core.models

revision = "0004_live_loop"
down_revision = "0003_hardening"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("feedback_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("adapter", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("adapter_version", sa.Integer(), nullable=True))
        batch_op.create_index("ix_events_adapter_version", ["adapter", "adapter_version"], unique=False)
    with op.batch_alter_table("training_policies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rollout", sa.JSON(), nullable=True))

    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("adapter_name", sa.String(length=200), nullable=False),
        sa.Column("candidate_version", sa.Integer(), nullable=False),
        sa.Column("baseline_version", sa.Integer(), nullable=False),
        sa.Column("baseline_ref", sa.String(length=100), nullable=False),
        sa.Column("traffic", sa.Double(), nullable=False),
        sa.Column("min_votes", sa.Integer(), nullable=False),
        sa.Column("probability", sa.Double(), nullable=False),
        sa.Column("max_days", sa.Double(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("figures", sa.JSON(), nullable=True),
        sa.Column("started_by", sa.String(length=200), nullable=True),
        sa.Column("policy_id", sa.String(length=32), nullable=True),
        sa.Column("started_at", core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("evaluated_at", core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ended_at", core.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_index("ix_rollouts_adapter_started", ["adapter_name", "started_at"], unique=False)
        batch_op.create_index("uq_rollouts_one_running_per_adapter", ["adapter_name"], unique=True,
                              sqlite_where=sa.text("status = 'running'"),
                              postgresql_where=sa.text("status = 'running'"))

    op.create_table(
        "rollout_evaluations",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("rollout_id", sa.String(length=32), nullable=False),
        sa.Column("evaluated_at", core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rollout_evaluations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rollout_evaluations_rollout_id"), ["rollout_id"], unique=False)

    op.create_table(
        "serving_targets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("url", sa.String(length=1000), nullable=False),
        sa.Column("adapter_name", sa.String(length=200), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=False),
        sa.Column("adapter_root", sa.String(length=1000), nullable=True),
        sa.Column("loaded", sa.JSON(), nullable=False),
        sa.Column("created_at", core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", core.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("serving_targets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_serving_targets_adapter_name"), ["adapter_name"], unique=False)
        batch_op.create_index("uq_serving_targets_live_name", ["name"], unique=True,
                              sqlite_where=sa.text("deleted_at IS NULL"),
                              postgresql_where=sa.text("deleted_at IS NULL"))

    op.create_table(
        "deliveries",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.String(length=32), nullable=False),
        sa.Column("event", sa.String(length=40), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("lease_until", core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", core.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["target_id"], ["serving_targets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_due", ["status", "next_attempt_at"], unique=False)
        batch_op.create_index("ix_deliveries_target_created", ["target_id", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_table("deliveries")
    op.drop_table("serving_targets")
    op.drop_table("rollout_evaluations")
    op.drop_table("rollouts")
    with op.batch_alter_table("training_policies", schema=None) as batch_op:
        batch_op.drop_column("rollout")
    with op.batch_alter_table("feedback_events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_adapter_version")
        batch_op.drop_column("adapter_version")
        batch_op.drop_column("adapter")

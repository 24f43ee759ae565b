"""outbox order: deliveries numbered per target, sent in that order; a vllm target's --max-lora-rank

Revision ID: 0008_outbox_order
Revises: 0007_bundled_preparing
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_outbox_order"
down_revision = "0007_bundled_preparing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("serving_targets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_lora_rank", sa.Integer(), nullable=True))
    op.execute("UPDATE serving_targets SET max_lora_rank = 16 WHERE kind = 'vllm'")  # vLLM's default
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.Integer(), nullable=True))
    # Rows written before: numbered in the order they were listed (time, then id).
    op.execute(
        "UPDATE deliveries SET seq = (SELECT COUNT(*) FROM deliveries d2 WHERE d2.target_id = deliveries.target_id"
        " AND (d2.created_at < deliveries.created_at"
        " OR (d2.created_at = deliveries.created_at AND d2.id <= deliveries.id)))"
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.alter_column("seq", existing_type=sa.Integer(), nullable=False)
        batch_op.create_index("uq_deliveries_target_seq", ["target_id", "seq"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("uq_deliveries_target_seq")
        batch_op.drop_column("seq")
    with op.batch_alter_table("serving_targets", schema=None) as batch_op:
        batch_op.drop_column("max_lora_rank")

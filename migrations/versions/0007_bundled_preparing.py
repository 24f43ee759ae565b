"""bundled preparing: a base model's state (preparing, ready, failed) and why its preparation failed

The bundled model's name is registered at once as ``preparing``; jobs for it wait queued until the worker
has converted it (``ready``) or fail with the conversion's error (``failed``).

Revision ID: 0007_bundled_preparing
Revises: 0006_first_hour
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_bundled_preparing"
down_revision = "0006_first_hour"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status", sa.String(length=20), nullable=False, server_default="ready"))
        batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        batch_op.drop_column("error")
        batch_op.drop_column("status")

"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-29 02:47:55.552118
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import core.models

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('adapter_alias_history',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('adapter_name', sa.String(length=200), nullable=False),
    sa.Column('alias', sa.String(length=100), nullable=False),
    sa.Column('from_version', sa.Integer(), nullable=True),
    sa.Column('to_version', sa.Integer(), nullable=False),
    sa.Column('moved_by', sa.String(length=200), nullable=True),
    sa.Column('moved_at', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('adapter_alias_history', schema=None) as batch_op:
        batch_op.create_index('ix_alias_history_name_alias', ['adapter_name', 'alias'], unique=False)

    op.create_table('adapter_aliases',
    sa.Column('adapter_name', sa.String(length=200), nullable=False),
    sa.Column('alias', sa.String(length=100), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('updated_at', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('adapter_name', 'alias')
    )
    op.create_table('api_keys',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('scopes', sa.String(length=200), nullable=False),
    sa.Column('created_at', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', core.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_used_at', core.models.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_hash')
    )
    op.create_table('base_models',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('source', sa.String(length=1000), nullable=False),
    sa.Column('revision', sa.String(length=200), nullable=True),
    sa.Column('path', sa.String(length=1000), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('architecture', sa.String(length=200), nullable=True),
    sa.Column('created_at', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('snapshots',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=True),
    sa.Column('filters', sa.JSON(), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('cutoff', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('n_rows', sa.Integer(), nullable=False),
    sa.Column('n_desirable', sa.Integer(), nullable=False),
    sa.Column('n_undesirable', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=500), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('adapter_versions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('adapter_name', sa.String(length=200), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=1000), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('tarball_sha256', sa.String(length=64), nullable=True),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('base_model_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('snapshot_id', sa.String(length=32), nullable=True),
    sa.Column('created_at', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['base_model_id'], ['base_models.id'], ),
    sa.ForeignKeyConstraint(['snapshot_id'], ['snapshots.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('adapter_name', 'version', name='uq_adapter_versions_name_version')
    )
    op.create_table('feedback_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=200), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=True),
    sa.Column('messages', sa.JSON(), nullable=True),
    sa.Column('prompt_key', sa.String(length=64), nullable=False),
    sa.Column('pair_key', sa.String(length=64), nullable=False),
    sa.Column('response', sa.Text(), nullable=False),
    sa.Column('label', sa.Boolean(), nullable=False),
    sa.Column('user_id', sa.String(length=200), nullable=True),
    sa.Column('conversation_id', sa.String(length=200), nullable=True),
    sa.Column('response_id', sa.String(length=200), nullable=True),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('metadata', sa.JSON(), nullable=True),
    sa.Column('created_at', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('received_at', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('retracted_at', core.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('api_key_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_id')
    )
    with op.batch_alter_table('feedback_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_feedback_events_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_feedback_events_pair_key'), ['pair_key'], unique=False)

    op.create_table('training_policies',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('adapter_name', sa.String(length=200), nullable=False),
    sa.Column('base_model_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('min_new_feedback', sa.Integer(), nullable=False),
    sa.Column('min_interval_minutes', sa.Integer(), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('snapshot_options', sa.JSON(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('last_job_id', sa.String(length=32), nullable=True),
    sa.Column('last_triggered_at', core.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_vote_watermark', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', core.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['base_model_id'], ['base_models.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('training_policies', schema=None) as batch_op:
        batch_op.create_index('uq_policies_live_adapter', ['adapter_name'], unique=True, sqlite_where=sa.text('deleted_at IS NULL'), postgresql_where=sa.text('deleted_at IS NULL'))

    op.create_table('alignment_jobs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('adapter_name', sa.String(length=200), nullable=False),
    sa.Column('base_model_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('snapshot_id', sa.String(length=32), nullable=True),
    sa.Column('policy_id', sa.String(length=32), nullable=True),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('snapshot_options', sa.JSON(), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('force_publish', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('progress_step', sa.Integer(), nullable=False),
    sa.Column('progress_total', sa.Integer(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.Column('eval_metrics', sa.JSON(), nullable=True),
    sa.Column('n_desirable', sa.Integer(), nullable=True),
    sa.Column('n_undesirable', sa.Integer(), nullable=True),
    sa.Column('class_weights', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('celery_task_id', sa.String(length=200), nullable=True),
    sa.Column('enqueued_at', core.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('heartbeat_at', core.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('resumed_from_step', sa.Integer(), nullable=True),
    sa.Column('adapter_version_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', core.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', core.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['adapter_version_id'], ['adapter_versions.id'], ),
    sa.ForeignKeyConstraint(['base_model_id'], ['base_models.id'], ),
    sa.ForeignKeyConstraint(['policy_id'], ['training_policies.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['snapshot_id'], ['snapshots.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('alignment_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_adapter_created', ['adapter_name', 'created_at'], unique=False)
        batch_op.create_index('ix_jobs_status', ['status'], unique=False)
        batch_op.create_index('uq_jobs_one_running_per_adapter', ['adapter_name'], unique=True, sqlite_where=sa.text("status = 'running'"), postgresql_where=sa.text("status = 'running'"))

    op.create_table('votes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('voter_key', sa.String(length=220), nullable=False),
    sa.Column('pair_key', sa.String(length=64), nullable=False),
    sa.Column('prompt_key', sa.String(length=64), nullable=False),
    sa.Column('event_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('label', sa.Boolean(), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('created_at', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['event_pk'], ['feedback_events.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_pk'),
    sa.UniqueConstraint('voter_key', 'pair_key', name='uq_votes_voter_pair')
    )
    with op.batch_alter_table('votes', schema=None) as batch_op:
        batch_op.create_index('ix_votes_created_at', ['created_at'], unique=False)
        batch_op.create_index('ix_votes_model', ['model'], unique=False)

    op.create_table('job_metrics',
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('created_at', core.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['alignment_jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'step')
    )


def downgrade() -> None:
    op.drop_table('job_metrics')
    with op.batch_alter_table('votes', schema=None) as batch_op:
        batch_op.drop_index('ix_votes_model')
        batch_op.drop_index('ix_votes_created_at')

    op.drop_table('votes')
    with op.batch_alter_table('alignment_jobs', schema=None) as batch_op:
        batch_op.drop_index('uq_jobs_one_running_per_adapter', sqlite_where=sa.text("status = 'running'"), postgresql_where=sa.text("status = 'running'"))
        batch_op.drop_index('ix_jobs_status')
        batch_op.drop_index('ix_jobs_adapter_created')

    op.drop_table('alignment_jobs')
    with op.batch_alter_table('training_policies', schema=None) as batch_op:
        batch_op.drop_index('uq_policies_live_adapter', sqlite_where=sa.text('deleted_at IS NULL'), postgresql_where=sa.text('deleted_at IS NULL'))

    op.drop_table('training_policies')
    with op.batch_alter_table('feedback_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_feedback_events_pair_key'))
        batch_op.drop_index(batch_op.f('ix_feedback_events_created_at'))

    op.drop_table('feedback_events')
    op.drop_table('adapter_versions')
    op.drop_table('snapshots')
    op.drop_table('base_models')
    op.drop_table('api_keys')
    op.drop_table('adapter_aliases')
    with op.batch_alter_table('adapter_alias_history', schema=None) as batch_op:
        batch_op.drop_index('ix_alias_history_name_alias')

    op.drop_table('adapter_alias_history')

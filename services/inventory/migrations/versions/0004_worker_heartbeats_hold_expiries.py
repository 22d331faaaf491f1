"""Workers record their heartbeats where the API can read them for /metrics (shared/last_seen.py),
and each drop counts its holds that expired (drops.holds_expired, for /metrics).

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa

from shared.messaging.frozen_migrations import create_worker_heartbeats_v1, drop_worker_heartbeats_v1

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    create_worker_heartbeats_v1()
    op.add_column("drops", sa.Column("holds_expired", sa.BigInteger, nullable=False, server_default="0"))


def downgrade():
    op.drop_column("drops", "holds_expired")
    drop_worker_heartbeats_v1()

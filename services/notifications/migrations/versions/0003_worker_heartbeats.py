"""Workers record their heartbeats where the API can read them for /metrics (shared/last_seen.py).

Revision ID: 0003
Revises: 0002
"""
from shared.messaging.frozen_migrations import create_worker_heartbeats_v1, drop_worker_heartbeats_v1

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    create_worker_heartbeats_v1()


def downgrade():
    drop_worker_heartbeats_v1()

"""Reservations remember the newest order version they acted on (stale order events are ignored).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("reservations", sa.Column("order_version", sa.Integer, nullable=False, server_default="1"))


def downgrade() -> None:
    op.drop_column("reservations", "order_version")

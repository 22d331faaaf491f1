"""Cancellation, shipping, refunds, email status, and the per-address allowance.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TIMESTAMPS = ("cancelled_at", "shipped_at", "refunded_at", "email_sent_at")


def upgrade():
    op.add_column("orders", sa.Column("address_key", sa.String(64)))
    op.add_column("orders", sa.Column("refund_id", sa.String(128)))
    for column in TIMESTAMPS:
        op.add_column("orders", sa.Column(column, sa.DateTime(timezone=True)))
    op.create_table(
        "address_allowances",
        sa.Column("drop_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("address_key", sa.String(64), primary_key=True),
        sa.Column("taken", sa.Integer, sa.CheckConstraint("taken >= 0"), nullable=False),
    )


def downgrade():
    op.drop_table("address_allowances")
    for column in ("address_key", "refund_id", *TIMESTAMPS):
        op.drop_column("orders", column)

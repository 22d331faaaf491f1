"""What the payment provider gave back of each of an order's captures (refunds and reversals:
a refund in its dashboard, a chargeback, checkout's own refunds), parts adding up: the order's
payment given back whole ends it, and a capture given back before its completion arrived
(webhooks come in any order) never confirms it. A constant default: PostgreSQL adds the column
without rewriting the table.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("orders", sa.Column("captures_given_back", pg.JSONB, nullable=False, server_default="{}"))


def downgrade():
    op.drop_column("orders", "captures_given_back")

"""The captures the payment provider refunded or reversed on its side (a refund made in its
dashboard, a chargeback) before the order took them as its payment: webhooks arrive in any
order, and a completion arriving after its own refund must not confirm the order. And how much
of the order's own payment was given back there, parts adding up. Constant defaults: PostgreSQL
adds the columns without rewriting the table.

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
    op.add_column("orders", sa.Column("captures_undone", pg.ARRAY(sa.String(128)), nullable=False,
                                      server_default="{}"))
    op.add_column("orders", sa.Column("given_back_amount", sa.Integer, nullable=False, server_default="0"))


def downgrade():
    op.drop_column("orders", "given_back_amount")
    op.drop_column("orders", "captures_undone")

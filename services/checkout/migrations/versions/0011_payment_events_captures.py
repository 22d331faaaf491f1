"""Whether an order was ever charged, for the email of its end: the provider's captures by order
(a partial index: the approvals, half of the webhooks, do not pay for it).

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("payment_events_captures", "payment_events", ["order_id"],
                    postgresql_where=sa.text("event_type = 'PAYMENT.CAPTURE.COMPLETED'"))


def downgrade():
    op.drop_index("payment_events_captures", table_name="payment_events")

"""Whether an order was ever charged, for the email of its end: the provider's captures by order
(a partial index: the approvals, half of the webhooks, do not pay for it). Built concurrently:
every payment webhook writes `payment_events` first, and a plain build would hold them all for
as long as it reads the table (which keeps every webhook).

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
    with op.get_context().autocommit_block():
        # an interrupted build leaves an invalid index by this name: built again from scratch
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS payment_events_captures")
        op.create_index("payment_events_captures", "payment_events", ["order_id"],
                        postgresql_where=sa.text("event_type = 'PAYMENT.CAPTURE.COMPLETED'"),
                        postgresql_concurrently=True)


def downgrade():
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS payment_events_captures")

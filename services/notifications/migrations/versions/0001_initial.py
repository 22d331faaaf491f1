"""The delivery log, outbox and inbox.

Revision ID: 0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from shared.messaging.frozen_migrations import create_outbox_and_inbox_v1, drop_outbox_and_inbox_v1

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "deliveries",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("event_id", sa.String(128), nullable=False, unique=True),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("order_id", sa.String(64), index=True),
        sa.Column("to_address", sa.String(320), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("message_id", sa.String(200), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    # The admin API looks addresses up case-insensitively.
    op.create_index("deliveries_to_address", "deliveries", [sa.text("lower(to_address)")])
    # Notifications publishes nothing today; the outbox is there so every service looks alike.
    create_outbox_and_inbox_v1()  # as they were at this revision (frozen)


def downgrade():
    drop_outbox_and_inbox_v1()
    op.drop_table("deliveries")

"""The delivery log keeps a bounded past (DELIVERY_LOG_RETENTION_SECONDS): what the purged
deliveries counted towards /metrics' totals is kept in `delivery_totals_purged`, one row the
consumer's purge adds to (services/notifications/repository.py `DeliveryLog.purge_finished`).

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "delivery_totals_purged",
        sa.Column("id", sa.SmallInteger(), primary_key=True, autoincrement=False),
        sa.Column("sent", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("retries", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("dead_letters", sa.BigInteger(), nullable=False, server_default="0"),
        sa.CheckConstraint("id = 1", name="one_row"),
    )


def downgrade():
    op.drop_table("delivery_totals_purged")

"""Deliveries record every event's state, not only the sent ones: attempts, retries, dead letters.

Revision ID: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("deliveries", sa.Column("attempts", sa.Integer, nullable=False, server_default="1"))
    op.add_column("deliveries", sa.Column("retries", sa.Integer, nullable=False, server_default="0"))
    op.add_column("deliveries", sa.Column("dead_letters", sa.Integer, nullable=False, server_default="0"))
    op.add_column("deliveries", sa.Column("last_error", sa.Text))
    op.add_column("deliveries", sa.Column("occurred_at", sa.DateTime(timezone=True)))
    op.add_column("deliveries", sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("deliveries", sa.Column("handled_by", sa.String(200)))
    op.execute("UPDATE deliveries SET updated_at = sent_at")
    op.alter_column("deliveries", "updated_at", nullable=False, server_default=sa.func.now())
    # A failed event may not have an address or subject yet (its data could not be read).
    op.alter_column("deliveries", "to_address", nullable=True)
    op.alter_column("deliveries", "subject", nullable=True)
    op.alter_column("deliveries", "sent_at", nullable=True)
    op.create_index("deliveries_status", "deliveries", ["status", "updated_at"])
    # The oldest event still waiting for its email, for /metrics.
    op.create_index(
        "deliveries_pending_since",
        "deliveries",
        ["occurred_at"],
        postgresql_where=sa.text("status = 'retrying'"),
    )


def downgrade():
    op.drop_index("deliveries_pending_since", "deliveries")
    op.drop_index("deliveries_status", "deliveries")
    op.execute("DELETE FROM deliveries WHERE status <> 'sent'")
    op.alter_column("deliveries", "sent_at", nullable=False)
    op.alter_column("deliveries", "subject", nullable=False)
    op.alter_column("deliveries", "to_address", nullable=False)
    for column in ("handled_by", "updated_at", "occurred_at", "last_error", "dead_letters", "retries", "attempts"):
        op.drop_column("deliveries", column)

"""Each order email's delivery keeps the order's version its event carried, so a state the
order has left is not mailed after a newer one (services/notifications/handlers.py).

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    # nullable, no default: adding it rewrites nothing, and older rows simply have no version
    op.add_column("deliveries", sa.Column("order_version", sa.Integer(), nullable=True))


def downgrade():
    op.execute("UPDATE deliveries SET status = 'sent' WHERE status = 'superseded'")
    op.drop_column("deliveries", "order_version")

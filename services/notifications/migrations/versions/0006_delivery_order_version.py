"""An order's emails never tell a state the order has left (services/notifications/handlers.py):
each delivery keeps the order's version its event carried, and `order_email_versions` the newest
version of each order whose email went out.

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
    op.create_table(
        "order_email_versions",
        sa.Column("order_id", sa.String(64), primary_key=True),
        sa.Column("newest_version", sa.Integer(), nullable=False),
    )


def downgrade():
    op.drop_table("order_email_versions")
    op.execute("UPDATE deliveries SET status = 'sent' WHERE status = 'superseded'")
    op.drop_column("deliveries", "order_version")

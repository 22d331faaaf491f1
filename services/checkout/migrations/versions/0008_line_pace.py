"""The admitter's pace lives on the line's row, so every admitter replica admits at one rate
between them (before, each replica kept its own, and two replicas admitted up to twice the
line's `admission_rate`).

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("lines", sa.Column("pace_rate", sa.Float, nullable=False, server_default="0"))
    op.add_column("lines", sa.Column("pace_budget", sa.Float, nullable=False, server_default="0"))
    op.add_column("lines", sa.Column("paced_at", sa.DateTime(timezone=True), nullable=True))


def downgrade():
    op.drop_column("lines", "paced_at")
    op.drop_column("lines", "pace_budget")
    op.drop_column("lines", "pace_rate")

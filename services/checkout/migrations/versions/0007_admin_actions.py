"""What admins did in this service: who, when, what, and how it ended (shared/admin_actions.py).

Revision ID: 0007
Revises: 0006
"""
from shared.admin_actions import create_table_v1, drop_table_v1

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    create_table_v1()


def downgrade():
    drop_table_v1()

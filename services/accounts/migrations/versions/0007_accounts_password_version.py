"""Accounts count how often their password was set by a person (`password_version`).

A sign-in checks the password between two transactions; it compares this number under the
account's lock before it starts a session, so a reset (`create-admin`) committed meanwhile
refuses it. A rehash of the same password (argon2 settings changed) keeps the number, so two
sign-ins rehashing at once do not refuse each other. A constant default: PostgreSQL adds the
column without rewriting the table.

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
    op.add_column("accounts", sa.Column("password_version", sa.Integer, nullable=False, server_default="0"))


def downgrade():
    op.drop_column("accounts", "password_version")

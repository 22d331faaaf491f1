"""A drop's waiting room: lines, their tickets, and checkout's load as the admitter reads it.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "lines",
        sa.Column("drop_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("opens_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="pre_queue"),
        sa.Column("seed", sa.LargeBinary, nullable=False),
        sa.Column("commitment", sa.String(64), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True)),
        sa.Column("joined", sa.Integer, nullable=False, server_default="0"),
        sa.Column("pre_queue_size", sa.Integer, nullable=False, server_default="0"),
        sa.Column("admitted_through", sa.Integer, nullable=False, server_default="0"),
        sa.Column("admission_factor", sa.Float, nullable=False, server_default="1.0"),
        sa.Column("admission_rate", sa.Float, nullable=False, server_default="20.0"),
        sa.Column("pass_ttl_seconds", sa.Integer, nullable=False, server_default="120"),
        sa.Column("accounts_created_before", sa.DateTime(timezone=True)),
        sa.Column("remaining_units", sa.Integer),
        sa.Column("observed_rate", sa.Float, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "line_tickets",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("drop_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("buyer_id", sa.String(64), nullable=False),
        sa.Column("arrival", sa.Integer, nullable=False),
        sa.Column("position", sa.Integer),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("admitted_at", sa.DateTime(timezone=True)),
        sa.Column("pass_expires_at", sa.DateTime(timezone=True)),
        sa.Column("used_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("drop_id", "buyer_id", name="line_tickets_one_per_account"),
        sa.UniqueConstraint("drop_id", "arrival", name="line_tickets_arrival"),
    )
    op.create_index("line_tickets_waiting", "line_tickets", ["drop_id", "position"],
                    postgresql_where=sa.text("admitted_at IS NULL"))
    op.create_index("line_tickets_active", "line_tickets", ["drop_id", "pass_expires_at"],
                    postgresql_where=sa.text("used_at IS NULL"))
    op.create_table(
        "checkout_load",
        sa.Column("process", sa.String(200), primary_key=True),
        sa.Column("refused", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade():
    op.drop_table("checkout_load")
    op.drop_table("line_tickets")
    op.drop_table("lines")

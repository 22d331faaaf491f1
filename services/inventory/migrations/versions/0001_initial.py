"""Products, drops, reservations, buyer allowances, and the outbox and inbox.

Revision ID: 0001
Revises:
Create Date: 2025-11-22
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from shared.messaging.frozen_migrations import create_outbox_and_inbox_v1, drop_outbox_and_inbox_v1

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("sku", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("price_amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.CheckConstraint("price_amount >= 0", name="price_not_negative"),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_code"),
    )
    op.create_table(
        "drops",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("product_id", pg.UUID(as_uuid=True), sa.ForeignKey("products.id"), nullable=False, index=True),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("available", sa.Integer, nullable=False),
        sa.Column("opens_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closes_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("per_buyer_limit", sa.Integer, nullable=False, server_default="1"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("quantity > 0", name="quantity_positive"),
        sa.CheckConstraint("available >= 0 AND available <= quantity", name="available_within_stock"),
        sa.CheckConstraint("closes_at > opens_at", name="closes_after_opening"),
        sa.CheckConstraint("per_buyer_limit > 0", name="per_buyer_limit_positive"),
    )
    op.create_table(
        "reservations",
        sa.Column("order_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("drop_id", pg.UUID(as_uuid=True), sa.ForeignKey("drops.id"), nullable=False, index=True),
        sa.Column("buyer_id", sa.String(128), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("hold_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("quantity > 0", name="quantity_positive"),
        sa.CheckConstraint("status IN ('held', 'sold', 'released')", name="known_status"),
    )
    op.create_index(
        "reservations_held_expiry", "reservations", ["hold_expires_at"], postgresql_where=sa.text("status = 'held'")
    )
    op.create_table(
        "buyer_allowances",
        sa.Column("drop_id", pg.UUID(as_uuid=True), sa.ForeignKey("drops.id"), primary_key=True),
        sa.Column("buyer_id", sa.String(128), primary_key=True),
        sa.Column("taken", sa.Integer, nullable=False),
        sa.CheckConstraint("taken >= 0", name="taken_not_negative"),
    )
    create_outbox_and_inbox_v1()  # as they were at this revision (frozen)


def downgrade() -> None:
    drop_outbox_and_inbox_v1()
    op.drop_table("buyer_allowances")
    op.drop_table("reservations")
    op.drop_table("drops")
    op.drop_table("products")

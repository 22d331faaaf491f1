"""Stock spread over shard rows; invite-only phase, shipping countries, restocks, hold TTL, announcements.

Each drop's `available` moves into one shard row (shard 0); new drops get up to 16 shards.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drop_stock_shards",
        sa.Column("drop_id", pg.UUID(as_uuid=True), sa.ForeignKey("drops.id"), primary_key=True),
        sa.Column("shard", sa.SmallInteger, primary_key=True),
        sa.Column("available", sa.Integer, nullable=False),
        sa.CheckConstraint("available >= 0", name="shard_available_not_negative"),
        sa.CheckConstraint("shard >= 0", name="shard_not_negative"),
    )
    op.execute("INSERT INTO drop_stock_shards (drop_id, shard, available) SELECT id, 0, available FROM drops")

    op.add_column("drops", sa.Column("stock_shards", sa.SmallInteger, nullable=False, server_default="1"))
    op.add_column("drops", sa.Column("restocked", sa.Integer, nullable=False, server_default="0"))
    op.add_column("drops", sa.Column("invite_only_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("drops", sa.Column("invite_tier", sa.String(64), nullable=True))
    op.add_column(
        "drops",
        sa.Column("shipping_countries", pg.ARRAY(sa.String(2)), nullable=False, server_default=sa.text("'{}'")),
    )
    op.add_column("drops", sa.Column("hold_ttl_seconds", sa.Integer, nullable=True))
    op.create_check_constraint("stock_shards_in_range", "drops", "stock_shards BETWEEN 1 AND 64")
    op.create_check_constraint("restocked_not_negative", "drops", "restocked >= 0")
    op.create_check_constraint(
        "invite_phase_complete", "drops", "(invite_only_until IS NULL) = (invite_tier IS NULL)"
    )
    op.create_check_constraint("hold_ttl_positive", "drops", "hold_ttl_seconds IS NULL OR hold_ttl_seconds > 0")
    op.drop_constraint("available_within_stock", "drops", type_="check")
    op.drop_column("drops", "available")

    op.create_table(
        "drop_announcements",
        sa.Column("drop_id", pg.UUID(as_uuid=True), sa.ForeignKey("drops.id"), primary_key=True),
        sa.Column("event_type", sa.String(32), primary_key=True),
        sa.Column("announced_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    # Drops that opened before this revision are not announced late.
    op.execute(
        "INSERT INTO drop_announcements (drop_id, event_type) SELECT id, 'drop.opened' FROM drops WHERE opens_at <= now()"
    )


def downgrade() -> None:
    op.drop_table("drop_announcements")
    op.add_column("drops", sa.Column("available", sa.Integer, nullable=False, server_default="0"))
    op.execute(
        "UPDATE drops SET available = LEAST(quantity, (SELECT COALESCE(sum(available), 0) FROM drop_stock_shards s"
        " WHERE s.drop_id = drops.id))"
    )
    op.alter_column("drops", "available", server_default=None)
    op.create_check_constraint("available_within_stock", "drops", "available >= 0 AND available <= quantity")
    for name in ("hold_ttl_positive", "invite_phase_complete", "restocked_not_negative", "stock_shards_in_range"):
        op.drop_constraint(name, "drops", type_="check")
    for column in ("hold_ttl_seconds", "shipping_countries", "invite_tier", "invite_only_until", "restocked", "stock_shards"):
        op.drop_column("drops", column)
    op.drop_table("drop_stock_shards")

"""Sessions with rotating refresh tokens, sign-in throttling, invites, saved addresses.

Revision ID: 0002
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "sessions",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("account_id", pg.UUID(as_uuid=True), sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_reason", sa.String(32)),
    )
    op.create_index("sessions_account_id", "sessions", ["account_id"])
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("session_id", pg.UUID(as_uuid=True), sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True)),
    )
    op.create_index("refresh_tokens_session_id", "refresh_tokens", ["session_id"])
    op.create_index("refresh_tokens_expires_at", "refresh_tokens", ["expires_at"])
    op.create_table(
        "login_throttle",
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("blocked_until", sa.DateTime(timezone=True)),
    )
    op.create_index("login_throttle_last_failure_at", "login_throttle", ["last_failure_at"])
    op.create_table(
        "invites",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("email", sa.String(254)),
        sa.Column("tier", sa.String(64), nullable=False),
        sa.Column("max_uses", sa.Integer, nullable=False),
        sa.Column("uses", sa.Integer, nullable=False, server_default="0"),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", pg.UUID(as_uuid=True)),
        sa.UniqueConstraint("code", name="invites_code_key"),
        sa.CheckConstraint("uses >= 0 AND uses <= max_uses", name="invites_uses"),
    )
    op.create_table(
        "invite_redemptions",
        sa.Column("invite_id", pg.UUID(as_uuid=True), sa.ForeignKey("invites.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("account_id", pg.UUID(as_uuid=True), sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("redeemed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "addresses",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("account_id", pg.UUID(as_uuid=True), sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("street_address", sa.String(300), nullable=False),
        sa.Column("city", sa.String(100), nullable=False),
        sa.Column("city_area", sa.String(100), nullable=False),
        sa.Column("sorting_code", sa.String(20), nullable=False),
        sa.Column("postal_code", sa.String(20), nullable=False),
        sa.Column("country_area", sa.String(100), nullable=False),
        sa.Column("country_code", sa.String(2), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("addresses_account_id", "addresses", ["account_id"])


def downgrade():
    op.drop_table("addresses")
    op.drop_table("invite_redemptions")
    op.drop_table("invites")
    op.drop_table("login_throttle")
    op.drop_table("refresh_tokens")
    op.drop_table("sessions")

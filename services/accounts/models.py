"""Accounts' tables: who can sign in, and the keys their tokens are signed with."""
from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql as pg

ROLES = ("buyer", "admin")


class Base(orm.DeclarativeBase):
    pass


class Account(Base):
    """A buyer or an admin. `email` is stored normalised (trimmed, lower-case), so it is unique
    case-insensitively through a plain unique constraint."""

    __tablename__ = "accounts"

    id: orm.Mapped[uuid.UUID] = orm.mapped_column(pg.UUID(as_uuid=True), primary_key=True)
    email: orm.Mapped[str] = orm.mapped_column(sa.String(254), unique=True)
    name: orm.Mapped[str | None] = orm.mapped_column(sa.String(200))
    password_hash: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    # How often a person set the password (create-admin resets it); a rehash keeps it
    password_version: orm.Mapped[int] = orm.mapped_column(sa.Integer, server_default="0")
    role: orm.Mapped[str] = orm.mapped_column(sa.String(16))
    tier: orm.Mapped[str | None] = orm.mapped_column(sa.String(64))
    created_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())

    __table_args__ = (sa.CheckConstraint(f"role IN {ROLES}", name="accounts_role"),)


class SigningKey(Base):
    """An ES256 key pair. The newest non-retired key signs; every non-retired key is published.

    The private half is stored encrypted (`key_encryption`). `private_key_pem` holds it in clear
    only for keys made before encryption, until `reencrypt-signing-keys` encrypts them."""

    __tablename__ = "signing_keys"

    kid: orm.Mapped[str] = orm.mapped_column(sa.String(64), primary_key=True)
    encrypted_private_key: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    private_key_pem: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    public_jwk: orm.Mapped[dict] = orm.mapped_column(pg.JSONB)
    created_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
    retired_at: orm.Mapped[datetime | None] = orm.mapped_column(sa.DateTime(timezone=True))


class Session(Base):
    """A sign-in and every refresh token rotated from it (the token family). Revoking it ends
    them all; its access tokens run out on their own within their short lifetime."""

    __tablename__ = "sessions"
    __table_args__ = (
        sa.Index("sessions_account_id", "account_id"),
        # what the purge of spent refresh tokens looks for
        sa.Index("sessions_revoked_at", "revoked_at", postgresql_where=sa.text("revoked_at IS NOT NULL")),
    )

    id: orm.Mapped[uuid.UUID] = orm.mapped_column(pg.UUID(as_uuid=True), primary_key=True)
    account_id: orm.Mapped[uuid.UUID] = orm.mapped_column(pg.UUID(as_uuid=True), sa.ForeignKey("accounts.id", ondelete="CASCADE"))
    created_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True))
    revoked_at: orm.Mapped[datetime | None] = orm.mapped_column(sa.DateTime(timezone=True))
    revoked_reason: orm.Mapped[str | None] = orm.mapped_column(sa.String(32))


class RefreshToken(Base):
    """One refresh token of a session, kept only as its SHA-256 (it is 256 random bits, so a
    fast hash is enough). `used_at` is set when it is exchanged; a second use is a theft."""

    __tablename__ = "refresh_tokens"
    __table_args__ = (
        sa.Index("refresh_tokens_session_id", "session_id"),
        sa.Index("refresh_tokens_expires_at", "expires_at"),
    )

    token_hash: orm.Mapped[str] = orm.mapped_column(sa.String(64), primary_key=True)
    session_id: orm.Mapped[uuid.UUID] = orm.mapped_column(pg.UUID(as_uuid=True), sa.ForeignKey("sessions.id", ondelete="CASCADE"))
    issued_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True))
    expires_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True))
    used_at: orm.Mapped[datetime | None] = orm.mapped_column(sa.DateTime(timezone=True))


class LoginThrottle(Base):
    """Recent failed sign-ins for one key (`client:<client>|account:<email>`, `account:<email>`
    or `client:<client>`, see `throttle.SignInThrottle`), shared by every worker, and until when
    that key is refused without checking a password."""

    __tablename__ = "login_throttle"
    __table_args__ = (sa.Index("login_throttle_last_failure_at", "last_failure_at"),)

    key: orm.Mapped[str] = orm.mapped_column(sa.String(300), primary_key=True)
    failures: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    last_failure_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True))
    blocked_until: orm.Mapped[datetime | None] = orm.mapped_column(sa.DateTime(timezone=True))


class Invite(Base):
    """An invite code giving an early-access `tier`; for one person (`email`) or several uses."""

    __tablename__ = "invites"

    id: orm.Mapped[uuid.UUID] = orm.mapped_column(pg.UUID(as_uuid=True), primary_key=True)
    code: orm.Mapped[str] = orm.mapped_column(sa.String(32), unique=True)
    email: orm.Mapped[str | None] = orm.mapped_column(sa.String(254))
    tier: orm.Mapped[str] = orm.mapped_column(sa.String(64))
    max_uses: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    uses: orm.Mapped[int] = orm.mapped_column(sa.Integer, default=0, server_default="0")
    expires_at: orm.Mapped[datetime | None] = orm.mapped_column(sa.DateTime(timezone=True))
    created_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True))
    created_by: orm.Mapped[uuid.UUID | None] = orm.mapped_column(pg.UUID(as_uuid=True))


class InviteRedemption(Base):
    __tablename__ = "invite_redemptions"

    invite_id: orm.Mapped[uuid.UUID] = orm.mapped_column(pg.UUID(as_uuid=True), sa.ForeignKey("invites.id", ondelete="CASCADE"), primary_key=True)
    account_id: orm.Mapped[uuid.UUID] = orm.mapped_column(pg.UUID(as_uuid=True), sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    redeemed_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True))


class Address(Base):
    """A buyer's saved shipping address, stored as `shared.addresses.normalise` returns it."""

    __tablename__ = "addresses"
    __table_args__ = (sa.Index("addresses_account_id", "account_id"),)

    id: orm.Mapped[uuid.UUID] = orm.mapped_column(pg.UUID(as_uuid=True), primary_key=True)
    account_id: orm.Mapped[uuid.UUID] = orm.mapped_column(pg.UUID(as_uuid=True), sa.ForeignKey("accounts.id", ondelete="CASCADE"))
    name: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    street_address: orm.Mapped[str] = orm.mapped_column(sa.String(300))
    city: orm.Mapped[str] = orm.mapped_column(sa.String(100))
    city_area: orm.Mapped[str] = orm.mapped_column(sa.String(100))
    sorting_code: orm.Mapped[str] = orm.mapped_column(sa.String(20))
    postal_code: orm.Mapped[str] = orm.mapped_column(sa.String(20))
    country_area: orm.Mapped[str] = orm.mapped_column(sa.String(100))
    country_code: orm.Mapped[str] = orm.mapped_column(sa.String(2))
    created_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True))

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
    role: orm.Mapped[str] = orm.mapped_column(sa.String(16))
    tier: orm.Mapped[str | None] = orm.mapped_column(sa.String(64))
    created_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True))

    __table_args__ = (sa.CheckConstraint(f"role IN {ROLES}", name="accounts_role"),)


class SigningKey(Base):
    """An ES256 key pair. The newest non-retired key signs; every non-retired key is published."""

    __tablename__ = "signing_keys"

    kid: orm.Mapped[str] = orm.mapped_column(sa.String(64), primary_key=True)
    private_key_pem: orm.Mapped[str] = orm.mapped_column(sa.Text)
    public_jwk: orm.Mapped[dict] = orm.mapped_column(pg.JSONB)
    created_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True))
    retired_at: orm.Mapped[datetime | None] = orm.mapped_column(sa.DateTime(timezone=True))

"""What admins did, kept by the service that did it: the `admin_actions` table of inventory,
checkout and notifications.

An admin's action (the control room's buttons, or a script calling the same endpoints) is
recorded by the view that performs it: who (the access token's subject and email), when (the
database's clock), what (method, path, drop, the JSON body as sent) and how it ended (`outcome`).
Where the action is a change in the service's database (a drop's close, a line's state) the row is
written in that change's transaction, so an action is recorded exactly when it took effect; where
it has no transaction of its own (a replay of dead letters, on the broker) the row follows it. A
refused action changes nothing and records nothing.

`GET /admin-actions` (shared/control_room.py) lists a service's recent actions; the control room
merges the three lists.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql as pg

MAX_PATH = 1000


def define_table(metadata: sa.MetaData) -> sa.Table:
    """The `admin_actions` table, added to a service's metadata (its models call this)."""
    return sa.Table(
        "admin_actions",
        metadata,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("admin_subject", sa.String(128), nullable=False),
        sa.Column("admin_email", sa.String(320)),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(MAX_PATH), nullable=False),
        sa.Column("drop_id", pg.UUID(as_uuid=True)),
        sa.Column("body", pg.JSONB, nullable=False),
        sa.Column("outcome", pg.JSONB(none_as_null=True)),
        sa.Column("request_id", sa.String(128)),
        # a drop's actions, newest first (GET /admin-actions?drop_id=)
        sa.Index("admin_actions_drop", "drop_id", "id"),
    )


# What the repository below writes and reads, without a service's metadata.
ADMIN_ACTIONS = define_table(sa.MetaData())


@dataclass(frozen=True)
class AdminAction:
    """One admin's request that changed something: who, what, and (once known) how it ended."""

    admin_subject: str
    admin_email: str | None
    method: str
    path: str
    drop_id: uuid.UUID | None
    body: dict
    outcome: dict | None = None
    request_id: str | None = None

    def ended(self, outcome: dict) -> "AdminAction":
        """The same action with what it did (`{"replayed": 2}`, the drop's new close, ...)."""
        return replace(self, outcome=outcome)


class AdminActions:
    """The service's record of admin actions, on a unit of work's session: a recorded action is
    kept only if the transaction commits."""

    def __init__(self, session: orm.Session):
        self._session = session

    def record(self, action: AdminAction) -> None:
        """Write `action`, stamped with the database's time, in the session's transaction."""
        self._session.execute(_RECORD, {
            "admin_subject": action.admin_subject[:128],
            "admin_email": action.admin_email[:320] if action.admin_email else None,
            "method": action.method[:8],
            "path": action.path[:MAX_PATH],
            "drop_id": action.drop_id,
            "body": action.body,
            "outcome": action.outcome,
            "request_id": action.request_id,
        })

    def recent(self, drop_id: uuid.UUID | None = None, limit: int = 50) -> list["RecordedAction"]:
        """The latest `limit` actions, newest first; with `drop_id`, those on that drop and those
        on no drop in particular (a replay of dead letters concerns every drop)."""
        query = sa.select(ADMIN_ACTIONS).order_by(ADMIN_ACTIONS.c.id.desc()).limit(limit)
        if drop_id is not None:
            query = query.where(sa.or_(ADMIN_ACTIONS.c.drop_id == drop_id, ADMIN_ACTIONS.c.drop_id.is_(None)))
        return [RecordedAction(**row._mapping) for row in self._session.execute(query)]


@dataclass(frozen=True)
class RecordedAction:
    """An action as stored: its id and time, and what `AdminAction` said."""

    id: int
    at: datetime
    admin_subject: str
    admin_email: str | None
    method: str
    path: str
    drop_id: uuid.UUID | None
    body: dict
    outcome: dict | None
    request_id: str | None


_RECORD = ADMIN_ACTIONS.insert()


# --- the migration ------------------------------------------------------------------------------
# Frozen, as shared/messaging/frozen_migrations.py's functions are: each service's migration that
# created the table calls it, so never edit it. A change to the table above comes with a new
# function here and a migration in each of the three services that calls it.

def create_table_v1() -> None:
    """Create `admin_actions` as `define_table` first described it (for Alembic migrations)."""
    from alembic import op  # loaded by the migration job only

    op.create_table(
        "admin_actions",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("admin_subject", sa.String(128), nullable=False),
        sa.Column("admin_email", sa.String(320)),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(1000), nullable=False),
        sa.Column("drop_id", pg.UUID(as_uuid=True)),
        sa.Column("body", pg.JSONB, nullable=False),
        sa.Column("outcome", pg.JSONB),
        sa.Column("request_id", sa.String(128)),
    )
    op.create_index("admin_actions_drop", "admin_actions", ["drop_id", "id"])


def drop_table_v1() -> None:
    """Undo `create_table_v1`."""
    from alembic import op

    op.drop_table("admin_actions")

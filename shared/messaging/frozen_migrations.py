"""The tables every service's database holds, as the migrations that created them did: the outbox
and inbox (each service's first migration), the workers' heartbeats (shared/last_seen.py). Frozen:
never edit a function here. A change to the shared tables (shared/messaging/outbox.py,
shared/last_seen.py) comes with a new function and a migration in each service that calls it, so
history is never rewritten."""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg


def create_outbox_and_inbox_v1() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("event_id", pg.UUID(as_uuid=False), nullable=False, unique=True),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("envelope", pg.JSONB, nullable=False),
        sa.Column("request_id", sa.String(128)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("published_at", sa.DateTime(timezone=True)),
    )
    op.create_index("outbox_pending", "outbox", ["id"], postgresql_where=sa.text("published_at IS NULL"))
    op.create_table(
        "inbox",
        sa.Column("message_id", sa.String(128), primary_key=True),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def drop_outbox_and_inbox_v1() -> None:
    op.drop_table("inbox")
    op.drop_table("outbox")


def create_worker_heartbeats_v1() -> None:
    op.create_table(
        "worker_heartbeats",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("instance", sa.String(200), primary_key=True),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
    )


def drop_worker_heartbeats_v1() -> None:
    op.drop_table("worker_heartbeats")


def add_outbox_trace_context_v1() -> None:
    # nullable and without a default: adding it rewrites no row, however long the outbox
    op.add_column("outbox", sa.Column("trace_context", pg.JSONB))


def drop_outbox_trace_context_v1() -> None:
    op.drop_column("outbox", "trace_context")

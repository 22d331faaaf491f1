"""The transactional outbox and the consumers' inbox, as tables every service's database holds.

An event is written as an outbox row in the same transaction as the state change it reports;
the relay (`python -m services.<service> relay`) publishes it later. The row keeps the W3C trace
context of the work that wrote it (`trace_context`: `traceparent`, `tracestate`; NULL without
tracing), so the publish and the consumers join that work's trace (`shared/tracing.py`).
A consumer records each message id in its inbox in the same transaction as its effects, so a
redelivered message changes nothing.
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy import orm

from shared import tracing
from shared.logs import current_request_id
from shared.messaging.envelope import Envelope
from shared.sql import Json, Statement


def define_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """The outbox and inbox tables, added to a service's metadata."""
    outbox = sa.Table(
        "outbox",
        metadata,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("event_id", pg.UUID(as_uuid=False), nullable=False, unique=True),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("envelope", pg.JSONB, nullable=False),
        sa.Column("request_id", sa.String(128)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        sa.Column("trace_context", pg.JSONB(none_as_null=True)),
        sa.Index("outbox_pending", "id", postgresql_where=sa.text("published_at IS NULL")),
    )
    inbox = sa.Table(
        "inbox",
        metadata,
        sa.Column("message_id", sa.String(128), primary_key=True),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    return outbox, inbox


# The relay and consumer use these lightweight mirrors, which need no service metadata.
_shared_metadata = sa.MetaData()
OUTBOX, INBOX = define_tables(_shared_metadata)


def add_event(session: orm.Session, source: str, event_type: str, data: dict, correlation_id: str | None = None) -> Envelope:
    """Write `event_type` to the outbox inside the session's transaction."""
    request_id = current_request_id()
    envelope = Envelope(type=event_type, data=data, source=source, correlation_id=correlation_id or request_id)
    trace_context = tracing.outbox_context(event_type, envelope.id, source)
    _INSERT_EVENT.run(session, {
        "event_id": envelope.id, "event_type": event_type, "envelope": Json(envelope.to_dict()), "request_id": request_id,
        "trace_context": None if trace_context is None else Json(trace_context),
    })
    return envelope


def claim_message(session: orm.Session, message_id: str, event_type: str) -> bool:
    """Record `message_id` in the inbox; False when it was handled before (a duplicate).

    Concurrent deliveries of one id serialise on the primary key: the second waits for the
    first transaction and then sees the conflict.
    """
    return _CLAIM_MESSAGE.first(session, {"message_id": message_id, "event_type": event_type}) is not None


# Every service writes these in its busiest transactions: straight to the driver (shared.sql).
_INSERT_EVENT = Statement(
    "INSERT INTO outbox (event_id, event_type, envelope, request_id, trace_context) "
    "VALUES (:event_id, :event_type, :envelope, :request_id, :trace_context)"
)
_CLAIM_MESSAGE = Statement(
    "INSERT INTO inbox (message_id, event_type) VALUES (:message_id, :event_type) "
    "ON CONFLICT (message_id) DO NOTHING RETURNING message_id"
)

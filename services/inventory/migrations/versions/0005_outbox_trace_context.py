"""The outbox keeps the trace context of the work that wrote each event (shared/tracing.py).

Revision ID: 0005
Revises: 0004
"""
from shared.messaging.frozen_migrations import add_outbox_trace_context_v1, drop_outbox_trace_context_v1

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    add_outbox_trace_context_v1()


def downgrade():
    drop_outbox_trace_context_v1()

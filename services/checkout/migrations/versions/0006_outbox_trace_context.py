"""The outbox keeps the trace context of the work that wrote each event (shared/tracing.py).

Revision ID: 0006
Revises: 0005
"""
from shared.messaging.frozen_migrations import add_outbox_trace_context_v1, drop_outbox_trace_context_v1

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    add_outbox_trace_context_v1()


def downgrade():
    drop_outbox_trace_context_v1()

"""A big line's pre-queue gets its positions over several admitter turns after a short opening,
not all in the opening's transaction (which held joins back for its whole length: 17-24 s
for 500,000 tickets). The opening records the pre-queue's last arrival number, so the turns
after it know which tickets are the pre-queue's.

The index of active passes keeps only admitted tickets: every other ticket, placed or joining,
was an entry in it for nothing (a tenth of what writing a position costs). The index is built
again, which holds joins back while it reads the tickets: upgrade outside a drop.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    # NULL for lines opened before: their pre-queue was placed whole at the opening
    op.add_column("lines", sa.Column("pre_queue_last_arrival", sa.Integer, nullable=True))
    op.drop_index("line_tickets_active", table_name="line_tickets")
    op.create_index("line_tickets_active", "line_tickets", ["drop_id", "pass_expires_at"],
                    postgresql_where=sa.text("used_at IS NULL AND pass_expires_at IS NOT NULL"))


def downgrade():
    op.drop_index("line_tickets_active", table_name="line_tickets")
    op.create_index("line_tickets_active", "line_tickets", ["drop_id", "pass_expires_at"],
                    postgresql_where=sa.text("used_at IS NULL"))
    op.drop_column("lines", "pre_queue_last_arrival")

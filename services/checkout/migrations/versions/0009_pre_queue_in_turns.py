"""A big line's pre-queue gets its positions over several admitter turns after a short opening,
not all in the opening's transaction (which held joins back for its whole length: 17-24 s
for 500,000 tickets). The opening records the pre-queue's last arrival number, so the turns
after it know which tickets are the pre-queue's.

The index of active passes keeps only admitted tickets: every other ticket, placed or joining,
was an entry in it for nothing (a tenth of what writing a position costs). The new index is
built beside the old one without blocking joins, polls or orders (CONCURRENTLY), then takes its
name.

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
    # NULL for lines opened before: their pre-queue was placed whole at the opening (IF NOT
    # EXISTS: committed before the index is built, it stays if the build is interrupted)
    op.execute("ALTER TABLE lines ADD COLUMN IF NOT EXISTS pre_queue_last_arrival integer")
    with op.get_context().autocommit_block():
        _swap_active_index("used_at IS NULL AND pass_expires_at IS NOT NULL")


def downgrade():
    # the previous version places every ticket without a position in arrival order: a pre-queue
    # still being placed would lose the seed's order
    op.execute(
        """
        DO $$ BEGIN
          IF EXISTS (SELECT 1 FROM lines WHERE placed < pre_queue_size) THEN
            RAISE EXCEPTION 'a line''s pre-queue is still being placed; downgrade once every position is written';
          END IF;
        END $$
        """
    )
    with op.get_context().autocommit_block():
        _swap_active_index("used_at IS NULL")
    op.drop_column("lines", "pre_queue_last_arrival")


def _swap_active_index(where: str) -> None:
    op.execute("DROP INDEX CONCURRENTLY IF EXISTS line_tickets_active_next")  # left by an interrupted build
    op.create_index("line_tickets_active_next", "line_tickets", ["drop_id", "pass_expires_at"],
                    postgresql_where=sa.text(where), postgresql_concurrently=True)
    op.execute("DROP INDEX CONCURRENTLY IF EXISTS line_tickets_active")
    op.execute("ALTER INDEX line_tickets_active_next RENAME TO line_tickets_active")

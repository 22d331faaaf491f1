"""Drop the index on refresh tokens' `used_at`.

The purge deletes a used token only once it has also expired, which the index on `expires_at`
finds; nothing reads `used_at` through this one any more, and keeping it made every refresh (which
sets `used_at`) write an index entry instead of updating the row in place.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    # Without blocking sign-ins and refreshes, which write this table all along.
    with op.get_context().autocommit_block():
        op.drop_index("refresh_tokens_used_at", table_name="refresh_tokens", postgresql_concurrently=True,
                      if_exists=True)


def downgrade():
    with op.get_context().autocommit_block():
        op.create_index(
            "refresh_tokens_used_at", "refresh_tokens", ["used_at"],
            postgresql_where=sa.text("used_at IS NOT NULL"), postgresql_concurrently=True, if_not_exists=True,
        )

"""Signing keys encrypted at rest; indexes for purging spent refresh tokens.

Only the schema changes here. Keys already stored keep their clear PEM, which the running
version still reads while this runs; the new version reads both, and `reencrypt-signing-keys`
(run once the new version is rolled out) encrypts them. A migration holds no secret.

Revision ID: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("signing_keys", sa.Column("encrypted_private_key", sa.Text))
    op.alter_column("signing_keys", "private_key_pem", existing_type=sa.Text, nullable=True)
    op.create_check_constraint(
        "signing_keys_one_private_key", "signing_keys", "num_nonnulls(private_key_pem, encrypted_private_key) = 1"
    )
    # Built without blocking sign-ins and refreshes, which write these tables all along.
    with op.get_context().autocommit_block():
        op.create_index(
            "refresh_tokens_used_at", "refresh_tokens", ["used_at"],
            postgresql_where=sa.text("used_at IS NOT NULL"), postgresql_concurrently=True, if_not_exists=True,
        )
        op.create_index(
            "sessions_revoked_at", "sessions", ["revoked_at"],
            postgresql_where=sa.text("revoked_at IS NOT NULL"), postgresql_concurrently=True, if_not_exists=True,
        )


def downgrade():
    # The previous version reads only clear PEM: going back would lose every encrypted key.
    op.execute(
        """
        DO $$ BEGIN
          IF EXISTS (SELECT 1 FROM signing_keys WHERE private_key_pem IS NULL) THEN
            RAISE EXCEPTION 'signing keys are encrypted; the previous version cannot read them';
          END IF;
        END $$
        """
    )
    op.drop_index("sessions_revoked_at", table_name="sessions")
    op.drop_index("refresh_tokens_used_at", table_name="refresh_tokens")
    op.drop_constraint("signing_keys_one_private_key", "signing_keys", type_="check")
    op.alter_column("signing_keys", "private_key_pem", existing_type=sa.Text, nullable=False)
    op.drop_column("signing_keys", "encrypted_private_key")

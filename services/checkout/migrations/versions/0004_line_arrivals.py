"""Joins no longer queue on the line's row: arrival numbers come from a sequence, the admitter
hands out positions (`lines.placed` of them so far), and positions are unique within a drop.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("CREATE SEQUENCE line_arrivals")
    # tickets joined so far get numbers the sequence will not hand out again
    op.execute("SELECT setval('line_arrivals', GREATEST(1, (SELECT COALESCE(max(arrival), 0) FROM line_tickets)))")
    op.execute("ALTER SEQUENCE line_arrivals OWNED BY line_tickets.arrival")
    op.add_column("lines", sa.Column("placed", sa.Integer, nullable=False, server_default="0"))
    op.execute("UPDATE lines SET placed = COALESCE((SELECT max(position) FROM line_tickets "
               "WHERE line_tickets.drop_id = lines.drop_id), 0)")
    op.create_unique_constraint("line_tickets_position", "line_tickets", ["drop_id", "position"])
    op.create_index("line_tickets_unplaced", "line_tickets", ["drop_id", "arrival"],
                    postgresql_where=sa.text("position IS NULL"))


def downgrade():
    op.drop_index("line_tickets_unplaced", table_name="line_tickets")
    op.drop_constraint("line_tickets_position", "line_tickets")
    op.drop_column("lines", "placed")
    op.execute("DROP SEQUENCE line_arrivals")

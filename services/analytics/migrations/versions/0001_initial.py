"""analytics: daily ticket counts, inbox, dead letters

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

from libs.common.migrations import create_messaging_tables, drop_messaging_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None
SCHEMA = "analytics"


def upgrade() -> None:
    op.create_table(
        "daily_ticket_counts",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tickets_created", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("tenant_id", "day", name="pk_daily_ticket_counts"),
        schema=SCHEMA,
    )
    create_messaging_tables(SCHEMA, with_outbox=False)


def downgrade() -> None:
    drop_messaging_tables(SCHEMA)
    op.drop_table("daily_ticket_counts", schema=SCHEMA)

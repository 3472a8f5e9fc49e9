"""summarization: received events journal, outbox, inbox, dead letters

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from libs.common.migrations import create_messaging_tables, drop_messaging_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None
SCHEMA = "summarization"


def upgrade() -> None:
    op.create_table(
        "received_events",
        sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("aggregate_id", sa.Text(), nullable=False),
        sa.Column("data", postgresql.JSONB(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("event_id", name="pk_received_events"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_received_events_tenant_id_received_at",
        "received_events",
        ["tenant_id", "received_at"],
        schema=SCHEMA,
    )
    create_messaging_tables(SCHEMA)


def downgrade() -> None:
    drop_messaging_tables(SCHEMA)
    op.drop_table("received_events", schema=SCHEMA)

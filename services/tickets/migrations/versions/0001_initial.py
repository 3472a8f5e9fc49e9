"""tickets: tickets, per-tenant numbers, idempotency keys, outbox/inbox/dead letters

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
SCHEMA = "tickets"


def upgrade() -> None:
    op.create_table(
        "tickets",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("status", sa.Text(), nullable=False, server_default="open"),
        sa.Column("priority", sa.Text(), nullable=False, server_default="medium"),
        sa.Column("category", sa.Text()),
        sa.Column("requester_id", sa.Text(), nullable=False),
        sa.Column("assignee_id", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.PrimaryKeyConstraint("id", name="pk_tickets"),
        schema=SCHEMA,
    )
    op.create_index(
        "uq_tickets_tenant_id_number", "tickets", ["tenant_id", "number"], unique=True, schema=SCHEMA
    )
    op.create_index(
        "ix_tickets_tenant_id_created_at_id",
        "tickets",
        ["tenant_id", sa.text("created_at DESC"), sa.text("id DESC")],
        schema=SCHEMA,
    )
    op.create_index(
        "ix_tickets_tenant_id_requester_id_created_at_id",
        "tickets",
        ["tenant_id", "requester_id", sa.text("created_at DESC"), sa.text("id DESC")],
        schema=SCHEMA,
    )
    op.create_table(
        "ticket_numbers",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("last_number", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_ticket_numbers"),
        schema=SCHEMA,
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.Text(), nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("response", postgresql.JSONB()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("tenant_id", "key", name="pk_idempotency_keys"),
        schema=SCHEMA,
    )
    create_messaging_tables(SCHEMA)


def downgrade() -> None:
    drop_messaging_tables(SCHEMA)
    op.drop_table("idempotency_keys", schema=SCHEMA)
    op.drop_table("ticket_numbers", schema=SCHEMA)
    op.drop_table("tickets", schema=SCHEMA)

"""tickets: partial indexes for the SLA breach scan

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None
SCHEMA = "tickets"

# Only tickets whose breach is still to be announced are indexed, so every scan (each tenant,
# every few seconds) reads just the rows past their deadline. services/tickets/sla/repository.py
# repeats these conditions literally; the planner uses a partial index only when it can.
UNANNOUNCED = "sla_paused_at IS NULL AND deleted_at IS NULL AND status_category NOT IN ('resolved', 'closed')"
INDEXES = {
    "ix_tickets_sla_first_response_scan": (
        ["tenant_id", "first_response_due_at"],
        "first_response_due_at IS NOT NULL AND first_responded_at IS NULL "
        f"AND first_response_breached_at IS NULL AND {UNANNOUNCED}",
    ),
    "ix_tickets_sla_resolution_scan": (
        ["tenant_id", "due_at"],
        f"due_at IS NOT NULL AND resolution_breached_at IS NULL AND {UNANNOUNCED}",
    ),
}


def upgrade() -> None:
    for name, (columns, where) in INDEXES.items():
        op.create_index(name, "tickets", columns, schema=SCHEMA, postgresql_where=sa.text(where))


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="tickets", schema=SCHEMA)

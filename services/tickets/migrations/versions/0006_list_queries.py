"""tickets: updated_at never before created_at; an index for the unassigned queue

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None
SCHEMA = "tickets"

# The list query relies on it: `updated_to=X` also bounds created_at below X, so the
# (tenant_id, created_at) index can start there (services/tickets/repository.py). Imports must
# write a consistent pair; the constraint turns a bad pair into an error instead of a ticket
# that such lists would silently leave out.
CHECK = "updated_at_not_before_created_at"
# `assignee_id IS NULL` is no equality to the planner, so the (tenant_id, assignee_id,
# created_at) index cannot return the unassigned queue in order; this one does (1 ms, not 5).
UNASSIGNED = "ix_tickets_tenant_id_unassigned_created_at_id"


def upgrade() -> None:
    op.create_check_constraint(CHECK, "tickets", "updated_at >= created_at", schema=SCHEMA)
    op.create_index(
        UNASSIGNED,
        "tickets",
        ["tenant_id", sa.text("created_at DESC"), sa.text("id DESC")],
        postgresql_where=sa.text("assignee_id IS NULL"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_index(UNASSIGNED, table_name="tickets", schema=SCHEMA)
    op.drop_constraint(CHECK, "tickets", schema=SCHEMA, type_="check")

"""tickets: the SLA scan asks which tenants have breaches due instead of visiting every tenant

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None
SCHEMA = "tickets"

UNANNOUNCED = "sla_paused_at IS NULL AND deleted_at IS NULL AND status_category NOT IN ('resolved', 'closed')"
FIRST_RESPONSE_DUE = (
    "first_response_due_at IS NOT NULL AND first_responded_at IS NULL "
    f"AND first_response_breached_at IS NULL AND {UNANNOUNCED}"
)
RESOLUTION_DUE = f"due_at IS NOT NULL AND resolution_breached_at IS NULL AND {UNANNOUNCED}"
# Deadline first: the rows past their deadline are one short range of each index (announced
# breaches leave it), for all tenants at once and, filtered by tenant, for one tenant's claim.
INDEXES = {
    "ix_tickets_sla_first_response_scan": ("first_response_due_at", FIRST_RESPONSE_DUE),
    "ix_tickets_sla_resolution_scan": ("due_at", RESOLUTION_DUE),
}
FUNCTION = f'"{SCHEMA}".tenants_with_due_sla_breaches'
# The table owner is bound by FORCE ROW LEVEL SECURITY too (unless it is a superuser); the
# function below runs as the owner and must see every tenant's deadlines.
OWNER_POLICY = "sla_breach_scan"


def upgrade() -> None:
    for name, (deadline, where) in INDEXES.items():
        op.drop_index(name, table_name="tickets", schema=SCHEMA)
        op.create_index(
            name, "tickets", [deadline, "tenant_id"], schema=SCHEMA, postgresql_where=sa.text(where)
        )
    op.execute(f'CREATE POLICY {OWNER_POLICY} ON "{SCHEMA}".tickets FOR SELECT TO CURRENT_USER USING (true)')
    # SECURITY DEFINER: the service role, scoped to no tenant, learns which tenants to scan, and
    # nothing else; each tenant is then scanned in its own tenant-scoped transaction. Only roles
    # with USAGE on the schema (the tickets role) can call it.
    op.execute(
        f"""
        CREATE FUNCTION {FUNCTION}(as_of timestamptz) RETURNS SETOF text
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
            SELECT tenant_id FROM "{SCHEMA}".tickets WHERE first_response_due_at < as_of AND {FIRST_RESPONSE_DUE}
            UNION
            SELECT tenant_id FROM "{SCHEMA}".tickets WHERE due_at < as_of AND {RESOLUTION_DUE}
        $$
        """
    )


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}(timestamptz)")
    op.execute(f'DROP POLICY IF EXISTS {OWNER_POLICY} ON "{SCHEMA}".tickets')
    for name, (deadline, where) in INDEXES.items():
        op.drop_index(name, table_name="tickets", schema=SCHEMA)
        op.create_index(
            name, "tickets", ["tenant_id", deadline], schema=SCHEMA, postgresql_where=sa.text(where)
        )

"""tickets: SLA changes too large for one request move the open tickets in the background

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None
SCHEMA = "tickets"
TABLE = "sla_retargets"
TENANT_SETTING = "NULLIF(current_setting('app.tenant_id', true), '')"
FUNCTION = f'"{SCHEMA}".tenants_with_sla_retargets'
OWNER_POLICY = "sla_retarget_scan"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.UUID(), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("priorities", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("open_tickets", sa.Integer(), nullable=False),
        sa.Column("tickets_updated", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("after_id", sa.UUID()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        schema=SCHEMA,
    )
    op.create_index("ix_sla_retargets_tenant", TABLE, ["tenant_id", "created_at"], schema=SCHEMA)
    op.create_index(
        "ix_sla_retargets_unfinished",
        TABLE,
        ["created_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("finished_at IS NULL"),
    )
    op.execute(f'ALTER TABLE "{SCHEMA}".{TABLE} ENABLE ROW LEVEL SECURITY')
    op.execute(f'ALTER TABLE "{SCHEMA}".{TABLE} FORCE ROW LEVEL SECURITY')
    op.execute(
        f'CREATE POLICY tenant_isolation ON "{SCHEMA}".{TABLE} '
        f"USING (tenant_id = {TENANT_SETTING}) WITH CHECK (tenant_id = {TENANT_SETTING})"
    )
    # As in 0007: the scheduler, scoped to no tenant, learns which tenants have work waiting (and
    # nothing else) through a function running as the owner, whom FORCE binds to a policy too.
    op.execute(f'CREATE POLICY {OWNER_POLICY} ON "{SCHEMA}".{TABLE} FOR SELECT TO CURRENT_USER USING (true)')
    op.execute(
        f"""
        CREATE FUNCTION {FUNCTION}() RETURNS SETOF text
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
            SELECT DISTINCT tenant_id FROM "{SCHEMA}".{TABLE} WHERE finished_at IS NULL
        $$
        """
    )


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
    op.drop_table(TABLE, schema=SCHEMA)

"""tickets: a failing SLA retarget is retried with a growing delay; admins can cancel one

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None
SCHEMA = "tickets"
TABLE = "sla_retargets"
FUNCTION = f'"{SCHEMA}".tenants_with_sla_retargets'


def _tenants_function(condition: str) -> str:
    # 0010's function (SECURITY DEFINER, see there), listing tenants whose work is due.
    return f"""
        CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS SETOF text
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
            SELECT DISTINCT tenant_id FROM "{SCHEMA}".{TABLE} WHERE {condition}
        $$
        """


def upgrade() -> None:
    # Consecutive failed batches, and when the next attempt may start (NULL: at once).
    op.add_column(
        TABLE, sa.Column("failures", sa.Integer(), nullable=False, server_default="0"), schema=SCHEMA
    )
    op.add_column(TABLE, sa.Column("next_attempt_at", sa.DateTime(timezone=True)), schema=SCHEMA)
    op.add_column(TABLE, sa.Column("cancelled_at", sa.DateTime(timezone=True)), schema=SCHEMA)
    op.add_column(TABLE, sa.Column("cancelled_by", sa.Text()), schema=SCHEMA)
    op.execute(
        _tenants_function("finished_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= now())")
    )


def downgrade() -> None:
    op.execute(_tenants_function("finished_at IS NULL"))
    for column in ("cancelled_by", "cancelled_at", "next_attempt_at", "failures"):
        op.drop_column(TABLE, column, schema=SCHEMA)

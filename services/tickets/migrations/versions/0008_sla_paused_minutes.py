"""tickets: the business minutes each ticket's SLA clock was paused

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None
SCHEMA = "tickets"


# Deadlines recomputed from creation (a new priority, a changed policy or calendar applied to
# open tickets) add this credit back. Tickets resumed before this migration start from 0.
def upgrade() -> None:
    op.add_column(
        "tickets",
        sa.Column("sla_paused_minutes", sa.Double(), nullable=False, server_default=sa.text("0")),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_column("tickets", "sla_paused_minutes", schema=SCHEMA)

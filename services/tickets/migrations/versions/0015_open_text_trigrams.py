"""tickets: the trigram index of duplicate hints covers only open tickets

Duplicate hints look only among one tenant's open, not deleted, not merged tickets; the index of
every ticket's trigrams was ten times larger than they need (at 1M tickets, ~9 % are open) and
every lookup read the postings of closed tickets of all tenants. A partial index holds just the
rows the query can return, with the tenant as its first column (btree_gin, as the search vector's
index). Building it reads the table once (seconds at 1M tickets, during which writes to tickets
wait); the old index is dropped after.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-23
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None
SCHEMA = "tickets"

# As in services/tickets/search.py: an index serves a query only when the query repeats its
# expression, and a partial one only when the query's conditions imply its predicate.
TICKET_TEXT = "(subject || ' ' || description)"
OPEN_TICKET_PREDICATE = (
    "status_category IN ('open', 'pending', 'in_progress') AND deleted_at IS NULL AND merged_into_id IS NULL"
)


def upgrade() -> None:
    op.execute(
        f'CREATE INDEX ix_tickets_tenant_id_open_text_trgm ON "{SCHEMA}".tickets '
        f"USING gin (tenant_id, {TICKET_TEXT} public.gin_trgm_ops) WHERE {OPEN_TICKET_PREDICATE}"
    )
    op.execute(f'DROP INDEX "{SCHEMA}".ix_tickets_search_trgm')


def downgrade() -> None:
    op.execute(
        f'CREATE INDEX ix_tickets_search_trgm ON "{SCHEMA}".tickets USING gin ({TICKET_TEXT} public.gin_trgm_ops)'
    )
    op.execute(f'DROP INDEX "{SCHEMA}".ix_tickets_tenant_id_open_text_trgm')

"""tickets: full-text (simple config) and trigram search over tickets and comments; number function

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None
SCHEMA = "tickets"

# The same expressions appear in services/tickets/search.py; an index serves a query only when
# the query repeats its expression exactly.
TICKET_TEXT = "(subject || ' ' || description)"


def upgrade() -> None:
    # Trusted extension (PostgreSQL 13+): the database owner may create it. Korean has no
    # stemmer, so substring search (엘리베이터 inside 엘리베이터가) rests on trigrams.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public")
    op.execute(
        f'CREATE INDEX ix_tickets_search_tsv ON "{SCHEMA}".tickets '
        f"USING gin (to_tsvector('simple'::regconfig, {TICKET_TEXT}))"
    )
    op.execute(
        f'CREATE INDEX ix_tickets_search_trgm ON "{SCHEMA}".tickets USING gin ({TICKET_TEXT} public.gin_trgm_ops)'
    )
    op.execute(
        f'CREATE INDEX ix_comments_search_tsv ON "{SCHEMA}".comments '
        "USING gin (to_tsvector('simple'::regconfig, body))"
    )
    op.execute(
        f'CREATE INDEX ix_comments_search_trgm ON "{SCHEMA}".comments USING gin (body public.gin_trgm_ops)'
    )
    # nextval() for ticket numbers under row-level security: scopes its own statement to the
    # tenant (called in autocommit mode, so the setting ends with the statement).
    op.execute(
        f"""CREATE FUNCTION "{SCHEMA}".next_ticket_number(p_tenant text) RETURNS integer
        LANGUAGE plpgsql AS $$
        DECLARE
            allocated integer;
            caller_tenant text := current_setting('app.tenant_id', true);
        BEGIN
            PERFORM set_config('app.tenant_id', p_tenant, true);
            INSERT INTO "{SCHEMA}".ticket_numbers AS n (tenant_id, last_number) VALUES (p_tenant, 1)
            ON CONFLICT (tenant_id) DO UPDATE SET last_number = n.last_number + 1
            RETURNING n.last_number INTO allocated;
            -- Called inside a scoped transaction, it must not leave that transaction re-scoped.
            PERFORM set_config('app.tenant_id', coalesce(caller_tenant, ''), true);
            RETURN allocated;
        END $$"""
    )


def downgrade() -> None:
    op.execute(f'DROP FUNCTION IF EXISTS "{SCHEMA}".next_ticket_number(text)')
    for index in [
        "ix_comments_search_trgm",
        "ix_comments_search_tsv",
        "ix_tickets_search_trgm",
        "ix_tickets_search_tsv",
    ]:
        op.execute(f'DROP INDEX IF EXISTS "{SCHEMA}".{index}')

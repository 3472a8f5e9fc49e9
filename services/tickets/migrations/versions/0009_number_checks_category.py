"""tickets: the ticket number is allocated together with the category check

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None
SCHEMA = "tickets"


# A create asked three things one after the other (is the category allowed, what is the SLA
# policy, which number is next). The number and the category check are now one statement (on
# its own connection, in autocommit), so it can run while the policy is read in the request's
# transaction. A category the tenant does not allow gets NULL and takes no number.
def upgrade() -> None:
    op.execute(
        f"""CREATE FUNCTION "{SCHEMA}".next_ticket_number(p_tenant text, p_category text)
        RETURNS integer LANGUAGE plpgsql AS $$
        DECLARE
            allocated integer;
            caller_tenant text := current_setting('app.tenant_id', true);
        BEGIN
            PERFORM set_config('app.tenant_id', p_tenant, true);
            -- A tenant without categories accepts any; otherwise only its own.
            IF p_category IS NULL
               OR NOT EXISTS (SELECT FROM "{SCHEMA}".categories WHERE tenant_id = p_tenant)
               OR EXISTS (
                   SELECT FROM "{SCHEMA}".categories WHERE tenant_id = p_tenant AND key = p_category
               )
            THEN
                INSERT INTO "{SCHEMA}".ticket_numbers AS n (tenant_id, last_number) VALUES (p_tenant, 1)
                ON CONFLICT (tenant_id) DO UPDATE SET last_number = n.last_number + 1
                RETURNING n.last_number INTO allocated;
            END IF;
            -- Called inside a scoped transaction, it must not leave that transaction re-scoped.
            PERFORM set_config('app.tenant_id', coalesce(caller_tenant, ''), true);
            RETURN allocated;
        END $$"""
    )
    op.execute(f'DROP FUNCTION "{SCHEMA}".next_ticket_number(text)')


def downgrade() -> None:
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
            PERFORM set_config('app.tenant_id', coalesce(caller_tenant, ''), true);
            RETURN allocated;
        END $$"""
    )
    op.execute(f'DROP FUNCTION "{SCHEMA}".next_ticket_number(text, text)')

"""tickets: each tenant's ticket numbers come from a sequence of its own

A create took its number from the tenant's counter row in a transaction of its own, on a second
connection, so that the row stayed locked only for that statement. That cost a quarter of a
create's CPU (a second pooled connection, a durable commit, and creates of one tenant queueing on
one row). A sequence hands out numbers without a lock held to commit and without a commit of its
own, so the number is now taken inside the create's transaction. Like the counter, a create that
fails afterwards leaves a gap; numbers stay unique and increasing.

A tenant's sequence is made on its first ticket, by `ticket_number_sequence(tenant)`, which also
registers the tenant (as the counter's trigger did). It runs as the migration role: the service
role may not create objects in the schema.

`next_ticket_number(tenant, category)` stays, on top of the sequences, for the replicas of the
previous release while a rolling upgrade runs. A later migration drops it.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None
SCHEMA = "tickets"
TENANT_SETTING = "NULLIF(current_setting('app.tenant_id', true), '')"
_SCOPE = sa.text("SELECT set_config('app.tenant_id', :tenant, true)")


def _sequence_name(tenant: str) -> str:
    """SQL: the qualified name of the sequence of the tenant in SQL expression `tenant` (the
    tenant id may hold any character; the md5 digest never needs quoting)."""
    return f"""format('"{SCHEMA}".%I', 'ticket_numbers_' || md5({tenant}))"""


def upgrade() -> None:
    # A concurrent first ticket of the same tenant waits on the advisory lock until the first
    # one commits, then finds the sequence.
    op.execute(
        f"""CREATE FUNCTION "{SCHEMA}".ticket_number_sequence(p_tenant text) RETURNS regclass
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        DECLARE
            qualified text := {_sequence_name("p_tenant")};
            existing regclass := to_regclass(qualified);
        BEGIN
            IF existing IS NOT NULL THEN
                RETURN existing;
            END IF;
            PERFORM pg_advisory_xact_lock(hashtextextended('{SCHEMA}.ticket_numbers:' || p_tenant, 0));
            EXECUTE format('CREATE SEQUENCE IF NOT EXISTS %s AS integer', qualified);
            INSERT INTO "{SCHEMA}".tenants (tenant_id) VALUES (p_tenant) ON CONFLICT DO NOTHING;
            RETURN qualified::regclass;
        END $$"""
    )
    _replace_next_ticket_number(f'allocated := nextval("{SCHEMA}".ticket_number_sequence(p_tenant));')
    conn = op.get_bind()
    counters = conn.execute(sa.text(f'SELECT tenant_id, last_number FROM "{SCHEMA}".ticket_numbers')).all()
    for tenant, last_number in counters:  # scoped, as the registry's policy asks of a non-superuser
        conn.execute(_SCOPE, {"tenant": tenant})
        conn.execute(
            sa.text(f'SELECT setval("{SCHEMA}".ticket_number_sequence(:tenant), :last)'),
            {"tenant": tenant, "last": last_number},
        )
    conn.execute(_SCOPE, {"tenant": ""})
    op.execute(f'DROP TRIGGER ticket_numbers_register_tenant ON "{SCHEMA}".ticket_numbers')
    op.execute(f'DROP FUNCTION "{SCHEMA}".register_tenant()')
    op.drop_table("ticket_numbers", schema=SCHEMA)


def downgrade() -> None:
    op.execute(
        f"""CREATE TABLE "{SCHEMA}".ticket_numbers (
            tenant_id text NOT NULL CONSTRAINT pk_ticket_numbers PRIMARY KEY,
            last_number integer NOT NULL
        )"""
    )
    op.execute(
        f"""CREATE FUNCTION "{SCHEMA}".register_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO "{SCHEMA}".tenants (tenant_id) VALUES (NEW.tenant_id) ON CONFLICT DO NOTHING;
            RETURN NULL;
        END $$"""
    )
    op.execute(
        f"""CREATE TRIGGER ticket_numbers_register_tenant AFTER INSERT ON "{SCHEMA}".ticket_numbers
        FOR EACH ROW EXECUTE FUNCTION "{SCHEMA}".register_tenant()"""
    )
    conn = op.get_bind()
    sequences = conn.execute(
        sa.text(
            "SELECT tenant_id, pg_sequence_last_value(sequence) AS last_number, sequence::text AS name"
            f" FROM (SELECT tenant_id, to_regclass({_sequence_name('tenant_id')}) AS sequence"
            f' FROM "{SCHEMA}".tenants) AS known WHERE sequence IS NOT NULL'
        )
    ).all()
    for tenant, last_number, name in sequences:
        if last_number is not None:
            conn.execute(_SCOPE, {"tenant": tenant})
            conn.execute(
                sa.text(
                    f'INSERT INTO "{SCHEMA}".ticket_numbers (tenant_id, last_number) VALUES (:tenant, :last)'
                ),
                {"tenant": tenant, "last": last_number},
            )
        op.execute(f"DROP SEQUENCE {name}")
    conn.execute(_SCOPE, {"tenant": ""})
    op.execute(f'ALTER TABLE "{SCHEMA}".ticket_numbers ENABLE ROW LEVEL SECURITY')
    op.execute(f'ALTER TABLE "{SCHEMA}".ticket_numbers FORCE ROW LEVEL SECURITY')
    op.execute(
        f'CREATE POLICY tenant_isolation ON "{SCHEMA}".ticket_numbers '
        f"USING (tenant_id = {TENANT_SETTING}) WITH CHECK (tenant_id = {TENANT_SETTING})"
    )
    _replace_next_ticket_number(
        f"""INSERT INTO "{SCHEMA}".ticket_numbers AS n (tenant_id, last_number) VALUES (p_tenant, 1)
                ON CONFLICT (tenant_id) DO UPDATE SET last_number = n.last_number + 1
                RETURNING n.last_number INTO allocated;"""
    )
    op.execute(f'DROP FUNCTION "{SCHEMA}".ticket_number_sequence(text)')


def _replace_next_ticket_number(take_number: str) -> None:
    """The function of migration 0009 (category check, then a number), with `take_number` (a
    statement setting `allocated`)."""
    op.execute(
        f"""CREATE OR REPLACE FUNCTION "{SCHEMA}".next_ticket_number(p_tenant text, p_category text)
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
                {take_number}
            END IF;
            -- Called inside a scoped transaction, it must not leave that transaction re-scoped.
            PERFORM set_config('app.tenant_id', coalesce(caller_tenant, ''), true);
            RETURN allocated;
        END $$"""
    )

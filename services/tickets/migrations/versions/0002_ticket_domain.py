"""tickets: the full ticket domain — workflow, SLA, comments, history, attachments, row-level security

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
SCHEMA = "tickets"

# Tables holding one tenant's rows: row-level security keeps a transaction to the tenant it set.
TENANT_TABLES = [
    "tickets",
    "ticket_numbers",
    "idempotency_keys",
    "comments",
    "ticket_history",
    "attachments",
    "statuses",
    "categories",
    "sla_policies",
    "tenant_settings",
]
# After a scoped transaction ends, the setting reads '' (not NULL) on that connection: NULLIF
# keeps an unscoped statement from matching rows with an empty tenant id.
TENANT_SETTING = "NULLIF(current_setting('app.tenant_id', true), '')"


def _timestamps() -> list[sa.Column]:
    return [sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())]


def upgrade() -> None:
    add = op.add_column
    for column in [
        sa.Column("type", sa.Text()),
        sa.Column("source", sa.Text(), nullable=False, server_default="portal"),
        sa.Column("status_category", sa.Text(), nullable=False, server_default="open"),
        sa.Column(
            "priority_rank",
            sa.SmallInteger(),
            sa.Computed(
                "CASE priority WHEN 'low' THEN 1 WHEN 'medium' THEN 2 WHEN 'high' THEN 3 ELSE 4 END",
                persisted=True,
            ),
            nullable=False,
        ),
        sa.Column("location", sa.Text()),
        sa.Column("building", sa.Text()),
        sa.Column("floor", sa.Text()),
        sa.Column("room", sa.Text()),
        sa.Column("requester_name", sa.Text()),
        sa.Column("requester_email", sa.Text()),
        sa.Column("group_id", sa.Text()),
        sa.Column("tags", postgresql.ARRAY(sa.Text()), nullable=False, server_default="{}"),
        sa.Column("custom_fields", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column("watchers", postgresql.ARRAY(sa.Text()), nullable=False, server_default="{}"),
        sa.Column("due_at", sa.DateTime(timezone=True)),
        sa.Column("first_response_due_at", sa.DateTime(timezone=True)),
        sa.Column("first_responded_at", sa.DateTime(timezone=True)),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.Column("closed_at", sa.DateTime(timezone=True)),
        sa.Column("sla_paused_at", sa.DateTime(timezone=True)),
        sa.Column("first_response_breached_at", sa.DateTime(timezone=True)),
        sa.Column("resolution_breached_at", sa.DateTime(timezone=True)),
        sa.Column("parent_id", postgresql.UUID(as_uuid=True)),
        sa.Column("merged_into_id", postgresql.UUID(as_uuid=True)),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.Column("summary", postgresql.JSONB()),
    ]:
        add("tickets", column, schema=SCHEMA)

    # Keyset paths: every sort is (tenant, sort key, id); every equality filter has its own
    # (tenant, filter, created_at, id) index so a selective filter never walks the tenant.
    for name, columns in {
        "ix_tickets_tenant_id_updated_at_id": ["tenant_id", "updated_at DESC", "id DESC"],
        "ix_tickets_tenant_id_priority_rank_created_at_id": [
            "tenant_id",
            "priority_rank DESC",
            "created_at DESC",
            "id DESC",
        ],
        # Tickets without a deadline sort after every deadline, in both directions of one index.
        "ix_tickets_tenant_id_due_sort_id": [
            "tenant_id",
            "(COALESCE(due_at, 'infinity'::timestamptz))",
            "id",
        ],
        "ix_tickets_tenant_id_status_created_at_id": ["tenant_id", "status", "created_at DESC", "id DESC"],
        "ix_tickets_tenant_id_status_category_created_at_id": [
            "tenant_id",
            "status_category",
            "created_at DESC",
            "id DESC",
        ],
        "ix_tickets_tenant_id_priority_created_at_id": [
            "tenant_id",
            "priority",
            "created_at DESC",
            "id DESC",
        ],
        "ix_tickets_tenant_id_category_created_at_id": [
            "tenant_id",
            "category",
            "created_at DESC",
            "id DESC",
        ],
        "ix_tickets_tenant_id_assignee_id_created_at_id": [
            "tenant_id",
            "assignee_id",
            "created_at DESC",
            "id DESC",
        ],
        "ix_tickets_tenant_id_group_id_created_at_id": [
            "tenant_id",
            "group_id",
            "created_at DESC",
            "id DESC",
        ],
        "ix_tickets_tenant_id_building_floor_room": ["tenant_id", "building", "floor", "room"],
        "ix_tickets_tenant_id_parent_id": ["tenant_id", "parent_id"],
    }.items():
        op.create_index(name, "tickets", [sa.text(column) for column in columns], schema=SCHEMA)
    op.create_index("ix_tickets_tags", "tickets", ["tags"], postgresql_using="gin", schema=SCHEMA)
    op.create_index(
        "ix_tickets_custom_fields",
        "tickets",
        [sa.text("custom_fields jsonb_path_ops")],
        postgresql_using="gin",
        schema=SCHEMA,
    )

    op.create_table(
        "comments",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("ticket_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("author_id", sa.Text(), nullable=False),
        sa.Column("visibility", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_comments"),
        sa.CheckConstraint("visibility IN ('public', 'internal')", name="ck_comments_visibility"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_comments_tenant_id_ticket_id_created_at_id",
        "comments",
        ["tenant_id", "ticket_id", "created_at", "id"],
        schema=SCHEMA,
    )
    op.create_table(
        "ticket_history",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("ticket_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("actor_id", sa.Text(), nullable=False),
        sa.Column("field", sa.Text(), nullable=False),
        sa.Column("old_value", postgresql.JSONB()),
        sa.Column("new_value", postgresql.JSONB()),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_ticket_history"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_ticket_history_tenant_id_ticket_id_created_at_id",
        "ticket_history",
        ["tenant_id", "ticket_id", "created_at", "id"],
        schema=SCHEMA,
    )
    op.create_table(
        "attachments",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("ticket_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("comment_id", postgresql.UUID(as_uuid=True)),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("content_type", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("storage_key", sa.Text(), nullable=False),
        sa.Column("uploaded_by", sa.Text(), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_attachments"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_attachments_tenant_id_ticket_id_created_at",
        "attachments",
        ["tenant_id", "ticket_id", "created_at"],
        schema=SCHEMA,
    )
    op.create_table(
        "statuses",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False, server_default=sa.text("0")),
        *_timestamps(),
        sa.PrimaryKeyConstraint("tenant_id", "key", name="pk_statuses"),
        schema=SCHEMA,
    )
    op.create_table(
        "categories",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("tenant_id", "key", name="pk_categories"),
        schema=SCHEMA,
    )
    op.create_table(
        "sla_policies",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("priority", sa.Text(), nullable=False),
        sa.Column("first_response_minutes", sa.Integer(), nullable=False),
        sa.Column("resolution_minutes", sa.Integer(), nullable=False),
        sa.Column("business_hours_only", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("pause_while_pending", sa.Boolean(), nullable=False, server_default=sa.false()),
        *_timestamps(),
        sa.PrimaryKeyConstraint("tenant_id", "priority", name="pk_sla_policies"),
        schema=SCHEMA,
    )
    op.create_table(
        "tenant_settings",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("time_zone", sa.Text(), nullable=False, server_default="UTC"),
        sa.Column("business_hours", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column("holidays", postgresql.ARRAY(sa.Date()), nullable=False, server_default="{}"),
        *_timestamps(),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_tenant_settings"),
        schema=SCHEMA,
    )
    # Tenant registry for cross-tenant jobs (the SLA scheduler enumerates tenants, then works
    # inside each one). Holds slugs only; filled by a trigger when a tenant's first number is taken.
    op.create_table(
        "tenants",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_tenants"),
        schema=SCHEMA,
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
    op.execute(f'INSERT INTO "{SCHEMA}".tenants (tenant_id) SELECT tenant_id FROM "{SCHEMA}".ticket_numbers')

    for table in TENANT_TABLES:
        op.execute(f'ALTER TABLE "{SCHEMA}".{table} ENABLE ROW LEVEL SECURITY')
        op.execute(f'ALTER TABLE "{SCHEMA}".{table} FORCE ROW LEVEL SECURITY')
        op.execute(
            f'CREATE POLICY tenant_isolation ON "{SCHEMA}".{table} '
            f"USING (tenant_id = {TENANT_SETTING}) WITH CHECK (tenant_id = {TENANT_SETTING})"
        )
    op.execute(f'ALTER TABLE "{SCHEMA}".tenants ENABLE ROW LEVEL SECURITY')
    op.execute(f'ALTER TABLE "{SCHEMA}".tenants FORCE ROW LEVEL SECURITY')
    op.execute(f'CREATE POLICY tenants_readable ON "{SCHEMA}".tenants FOR SELECT USING (true)')
    op.execute(
        f'CREATE POLICY tenants_register ON "{SCHEMA}".tenants FOR INSERT WITH CHECK (tenant_id = {TENANT_SETTING})'
    )


def downgrade() -> None:
    op.execute(f'DROP POLICY IF EXISTS tenants_readable ON "{SCHEMA}".tenants')
    op.execute(f'DROP POLICY IF EXISTS tenants_register ON "{SCHEMA}".tenants')
    for table in TENANT_TABLES:
        op.execute(f'DROP POLICY IF EXISTS tenant_isolation ON "{SCHEMA}".{table}')
        op.execute(f'ALTER TABLE "{SCHEMA}".{table} NO FORCE ROW LEVEL SECURITY')
        op.execute(f'ALTER TABLE "{SCHEMA}".{table} DISABLE ROW LEVEL SECURITY')
    op.execute(f'DROP TRIGGER IF EXISTS ticket_numbers_register_tenant ON "{SCHEMA}".ticket_numbers')
    op.execute(f'DROP FUNCTION IF EXISTS "{SCHEMA}".register_tenant()')
    for table in ["tenants", "tenant_settings", "sla_policies", "categories", "statuses", "attachments"]:
        op.drop_table(table, schema=SCHEMA)
    op.drop_table("ticket_history", schema=SCHEMA)
    op.drop_table("comments", schema=SCHEMA)
    for index in [
        "ix_tickets_custom_fields",
        "ix_tickets_tags",
        "ix_tickets_tenant_id_parent_id",
        "ix_tickets_tenant_id_building_floor_room",
        "ix_tickets_tenant_id_group_id_created_at_id",
        "ix_tickets_tenant_id_assignee_id_created_at_id",
        "ix_tickets_tenant_id_category_created_at_id",
        "ix_tickets_tenant_id_priority_created_at_id",
        "ix_tickets_tenant_id_status_category_created_at_id",
        "ix_tickets_tenant_id_status_created_at_id",
        "ix_tickets_tenant_id_due_sort_id",
        "ix_tickets_tenant_id_priority_rank_created_at_id",
        "ix_tickets_tenant_id_updated_at_id",
    ]:
        op.drop_index(index, table_name="tickets", schema=SCHEMA)
    for column in [
        "summary",
        "deleted_at",
        "merged_into_id",
        "parent_id",
        "resolution_breached_at",
        "first_response_breached_at",
        "sla_paused_at",
        "closed_at",
        "resolved_at",
        "first_responded_at",
        "first_response_due_at",
        "due_at",
        "watchers",
        "custom_fields",
        "tags",
        "group_id",
        "requester_email",
        "requester_name",
        "room",
        "floor",
        "building",
        "location",
        "priority_rank",
        "status_category",
        "source",
        "type",
    ]:
        op.drop_column("tickets", column, schema=SCHEMA)

"""identity: tenants, users, login failure counters

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None
SCHEMA = "identity"


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("slug", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("slug", name="pk_tenants"),
        sa.CheckConstraint("slug ~ '^[a-z0-9-]{1,40}$'", name="ck_tenants_slug_format"),
        schema=SCHEMA,
    )
    op.create_table(
        "users",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("roles", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("display_name", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.ForeignKeyConstraint(["tenant_id"], [f"{SCHEMA}.tenants.slug"], name="fk_users_tenant_id_tenants"),
        sa.CheckConstraint(
            "roles <@ ARRAY['admin', 'agent', 'requester', 'service']::text[] AND cardinality(roles) > 0",
            name="ck_users_known_roles",
        ),
        schema=SCHEMA,
    )
    op.create_index("uq_users_lower_email", "users", [sa.text("lower(email)")], unique=True, schema=SCHEMA)
    op.create_index("ix_users_tenant_id", "users", ["tenant_id"], schema=SCHEMA)
    op.create_table(
        "login_failures",
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column(
            "window_started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("scope", "key", name="pk_login_failures"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("login_failures", schema=SCHEMA)
    op.drop_table("users", schema=SCHEMA)
    op.drop_table("tenants", schema=SCHEMA)

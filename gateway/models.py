"""Tables of the identity schema: tenants, users and login throttling counters."""

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from libs.common.db import make_metadata

metadata = make_metadata("identity")

tenants = Table(
    "tenants",
    metadata,
    Column("slug", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("slug ~ '^[a-z0-9-]{1,40}$'", name="slug_format"),
)

users = Table(
    "users",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", Text, ForeignKey("identity.tenants.slug"), nullable=False),
    Column("email", Text, nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("roles", ARRAY(Text), nullable=False),
    Column("display_name", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        "roles <@ ARRAY['admin', 'agent', 'requester', 'service']::text[] AND cardinality(roles) > 0",
        name="known_roles",
    ),
    # The login form has no tenant field, so an email identifies one user across all tenants.
    Index("uq_users_lower_email", text("lower(email)"), unique=True),
    Index("ix_users_tenant_id", "tenant_id"),
)

# One counter per throttled key: scope is "email" (lower-cased address) or "ip" (client address).
# Kept in Postgres so every gateway replica sees the same counts.
login_failures = Table(
    "login_failures",
    metadata,
    Column("scope", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("failures", Integer, nullable=False),
    Column("window_started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("scope", "key"),
)

"""Tables of the tickets schema (migrations 0001 + 0002 create exactly these)."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    Date,
    DateTime,
    Double,
    Index,
    Integer,
    SmallInteger,
    Table,
    Text,
    false,
    func,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR, UUID

from libs.common.consumer import dead_letter_table, inbox_table
from libs.common.db import make_metadata
from libs.common.idempotency import idempotency_table
from libs.common.outbox import outbox_table

metadata = make_metadata("tickets")


def _created_at() -> Column:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


def _newest_first(*leading: str) -> list:
    return [*leading, text("created_at DESC"), text("id DESC")]


# Tickets without a deadline sort after every deadline, in both directions of one index.
DUE_SORT_KEY = text("(COALESCE(due_at, 'infinity'::timestamp with time zone))")

TICKET_TEXT = "((subject || ' '::text) || description)"
# The tickets that duplicate hints look among: open, not deleted, not merged. Literal SQL, so a
# query containing it can use the trigram index that covers only these rows.
OPEN_TICKET = text(
    "status_category IN ('open', 'pending', 'in_progress') AND deleted_at IS NULL AND merged_into_id IS NULL"
)

tickets = Table(
    "tickets",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("number", Integer, nullable=False),  # from the tenant's own sequence (migration 0016)
    Column("subject", Text, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("status", Text, nullable=False, server_default="open"),
    # The built-in category of `status` (open, pending, in_progress, resolved, closed).
    Column("status_category", Text, nullable=False, server_default="open"),
    Column("priority", Text, nullable=False, server_default="medium"),
    # Sort key for priority (urgent first when descending); computed by the database.
    Column(
        "priority_rank",
        SmallInteger,
        Computed(
            "CASE priority WHEN 'low' THEN 1 WHEN 'medium' THEN 2 WHEN 'high' THEN 3 ELSE 4 END",
            persisted=True,
        ),
        nullable=False,
    ),
    Column("category", Text),
    Column("type", Text),
    Column("source", Text, nullable=False, server_default="portal"),
    Column("location", Text),
    Column("building", Text),
    Column("floor", Text),
    Column("room", Text),
    Column("requester_id", Text, nullable=False),
    Column("requester_name", Text),
    Column("requester_email", Text),
    Column("assignee_id", Text),
    Column("group_id", Text),
    Column("tags", ARRAY(Text), nullable=False, server_default="{}"),
    Column("custom_fields", JSONB, nullable=False, server_default="{}"),
    Column("watchers", ARRAY(Text), nullable=False, server_default="{}"),
    Column("due_at", DateTime(timezone=True)),
    Column("first_response_due_at", DateTime(timezone=True)),
    Column("first_responded_at", DateTime(timezone=True)),
    Column("resolved_at", DateTime(timezone=True)),
    Column("closed_at", DateTime(timezone=True)),
    # Set while the SLA clock is stopped (pending, when the policy says so).
    Column("sla_paused_at", DateTime(timezone=True)),
    # Business minutes the clock stood still in pauses that ended: the credit a recomputed
    # deadline keeps (migration 0008).
    Column("sla_paused_minutes", Double, nullable=False, server_default=text("0")),
    # When the scheduler announced each breach; set once, so a breach is announced once.
    Column("first_response_breached_at", DateTime(timezone=True)),
    Column("resolution_breached_at", DateTime(timezone=True)),
    Column("parent_id", UUID(as_uuid=True)),
    Column("merged_into_id", UUID(as_uuid=True)),
    Column("deleted_at", DateTime(timezone=True)),
    # Search: the Hangul bigrams of subject + description (written by the service, see
    # search.search_terms_of) and the stored vector of words + bigrams the database derives.
    Column("search_terms", Text, nullable=False, server_default=""),
    Column(
        "search_vector",
        TSVECTOR,
        Computed(
            "to_tsvector('simple'::regconfig, (subject || ' '::text) || description) "
            "|| to_tsvector('simple'::regconfig, search_terms)",
            persisted=True,
        ),
        nullable=False,
    ),
    # Latest AI summary (from summarization's summary.completed), shown with the ticket.
    Column("summary", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("version", Integer, nullable=False, server_default=text("1")),
    # The list query derives a created_at bound from `updated_to` (migration 0006).
    CheckConstraint("updated_at >= created_at", name="updated_at_not_before_created_at"),
    Index("uq_tickets_tenant_id_number", "tenant_id", "number", unique=True),
    Index("ix_tickets_tenant_id_created_at_id", *_newest_first("tenant_id")),
    Index("ix_tickets_tenant_id_requester_id_created_at_id", *_newest_first("tenant_id", "requester_id")),
    Index("ix_tickets_tenant_id_updated_at_id", "tenant_id", text("updated_at DESC"), text("id DESC")),
    Index(
        "ix_tickets_tenant_id_priority_rank_created_at_id",
        *_newest_first("tenant_id", text("priority_rank DESC")),
    ),
    Index("ix_tickets_tenant_id_due_sort_id", "tenant_id", DUE_SORT_KEY, "id"),
    Index("ix_tickets_tenant_id_status_created_at_id", *_newest_first("tenant_id", "status")),
    Index(
        "ix_tickets_tenant_id_status_category_created_at_id", *_newest_first("tenant_id", "status_category")
    ),
    Index("ix_tickets_tenant_id_priority_created_at_id", *_newest_first("tenant_id", "priority")),
    Index("ix_tickets_tenant_id_category_created_at_id", *_newest_first("tenant_id", "category")),
    Index("ix_tickets_tenant_id_assignee_id_created_at_id", *_newest_first("tenant_id", "assignee_id")),
    Index("ix_tickets_tenant_id_group_id_created_at_id", *_newest_first("tenant_id", "group_id")),
    Index("ix_tickets_tenant_id_building_floor_room", "tenant_id", "building", "floor", "room"),
    Index("ix_tickets_tenant_id_parent_id", "tenant_id", "parent_id"),
    Index(
        "ix_tickets_tenant_id_deleted_created_at_id",
        *_newest_first("tenant_id"),
        postgresql_where=text("deleted_at IS NOT NULL"),
    ),
    Index(
        "ix_tickets_tenant_id_unassigned_created_at_id",
        *_newest_first("tenant_id"),
        postgresql_where=text("assignee_id IS NULL"),
    ),
    Index("ix_tickets_tags", "tags", postgresql_using="gin"),
    Index(
        "ix_tickets_custom_fields",
        "custom_fields",
        postgresql_using="gin",
        postgresql_ops={"custom_fields": "jsonb_path_ops"},
    ),
    # Search (migrations 0003, 0005): words + Hangul bigrams per tenant.
    Index("ix_tickets_tenant_id_search_vector", "tenant_id", "search_vector", postgresql_using="gin"),
    # Duplicate hints (migration 0015): trigrams of the open tickets only, a tenth of the rows,
    # per tenant (the tenant's entries intersect the trigrams' inside the index).
    Index(
        "ix_tickets_tenant_id_open_text_trgm",
        "tenant_id",
        # The operator class goes in postgresql_ops, keyed by the expression's label: spelled
        # inside the expression, Alembic cannot compare the index with the database's.
        literal_column(TICKET_TEXT).label("open_text"),
        postgresql_using="gin",
        postgresql_ops={"open_text": "public.gin_trgm_ops"},
        postgresql_where=OPEN_TICKET,
    ),
    # SLA breach scan (migrations 0004, 0007): only tickets whose breach is still to be announced.
    Index(
        "ix_tickets_sla_first_response_scan",
        "first_response_due_at",
        "tenant_id",
        postgresql_where=text(
            "first_response_due_at IS NOT NULL AND first_responded_at IS NULL "
            "AND first_response_breached_at IS NULL AND sla_paused_at IS NULL AND deleted_at IS NULL "
            "AND status_category NOT IN ('resolved', 'closed')"
        ),
    ),
    Index(
        "ix_tickets_sla_resolution_scan",
        "due_at",
        "tenant_id",
        postgresql_where=text(
            "due_at IS NOT NULL AND resolution_breached_at IS NULL AND sla_paused_at IS NULL "
            "AND deleted_at IS NULL AND status_category NOT IN ('resolved', 'closed')"
        ),
    ),
)

comments = Table(
    "comments",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("ticket_id", UUID(as_uuid=True), nullable=False),
    Column("author_id", Text, nullable=False),
    Column("visibility", Text, nullable=False),
    Column("body", Text, nullable=False),
    _created_at(),
    Column("search_terms", Text, nullable=False, server_default=""),
    Column(
        "search_vector",
        TSVECTOR,
        Computed(
            "to_tsvector('simple'::regconfig, body) || to_tsvector('simple'::regconfig, search_terms)",
            persisted=True,
        ),
        nullable=False,
    ),
    CheckConstraint("visibility IN ('public', 'internal')", name="visibility"),
    Index("ix_comments_tenant_id_search_vector", "tenant_id", "search_vector", postgresql_using="gin"),
    Index("ix_comments_tenant_id_created_at", "tenant_id", text("created_at DESC")),
    Index("ix_comments_tenant_id_ticket_id_created_at_id", "tenant_id", "ticket_id", "created_at", "id"),
)

ticket_history = Table(
    "ticket_history",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("ticket_id", UUID(as_uuid=True), nullable=False),
    Column("actor_id", Text, nullable=False),
    Column("field", Text, nullable=False),
    Column("old_value", JSONB),
    Column("new_value", JSONB),
    _created_at(),
    Index(
        "ix_ticket_history_tenant_id_ticket_id_created_at_id", "tenant_id", "ticket_id", "created_at", "id"
    ),
)

attachments = Table(
    "attachments",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("ticket_id", UUID(as_uuid=True), nullable=False),
    Column("comment_id", UUID(as_uuid=True)),
    Column("filename", Text, nullable=False),
    Column("content_type", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("storage_key", Text, nullable=False),
    Column("uploaded_by", Text, nullable=False),
    _created_at(),
    Index("ix_attachments_tenant_id_ticket_id_created_at", "tenant_id", "ticket_id", "created_at"),
)

# Tenant-defined statuses; the five built-in ones are not stored (see workflow.py).
statuses = Table(
    "statuses",
    metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("category", Text, nullable=False),
    Column("position", Integer, nullable=False, server_default=text("0")),
    _created_at(),
)

categories = Table(
    "categories",
    metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("name", Text, nullable=False),
    _created_at(),
)

sla_policies = Table(
    "sla_policies",
    metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("priority", Text, primary_key=True),
    Column("first_response_minutes", Integer, nullable=False),
    Column("resolution_minutes", Integer, nullable=False),
    Column("business_hours_only", Boolean, nullable=False, server_default=false()),
    Column("pause_while_pending", Boolean, nullable=False, server_default=false()),
    _created_at(),
)

# The tenant's calendar for SLA business hours: {"mon": ["09:00", "18:00"], ...} in time_zone.
tenant_settings = Table(
    "tenant_settings",
    metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("time_zone", Text, nullable=False, server_default="UTC"),
    Column("business_hours", JSONB, nullable=False, server_default="{}"),
    Column("holidays", ARRAY(Date), nullable=False, server_default="{}"),
    _created_at(),
)

# An SLA change too large to apply to the open tickets inside the admin's request: the SLA
# scheduler moves them in batches, `after_id` (ticket ids ascend) marking how far it got. A
# failing batch is retried from `next_attempt_at`; a cancelled retarget is finished as well.
sla_retargets = Table(
    "sla_retargets",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("priorities", ARRAY(Text), nullable=False),
    Column("requested_by", Text, nullable=False),
    Column("open_tickets", Integer, nullable=False),  # when requested
    Column("tickets_updated", Integer, nullable=False, server_default="0"),
    Column("after_id", UUID(as_uuid=True)),
    _created_at(),
    Column("finished_at", DateTime(timezone=True)),
    Column("failures", Integer, nullable=False, server_default="0"),  # consecutive failed batches
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("cancelled_at", DateTime(timezone=True)),
    Column("cancelled_by", Text),
    Index("ix_sla_retargets_tenant", "tenant_id", "created_at"),
    Index("ix_sla_retargets_unfinished", "created_at", postgresql_where=text("finished_at IS NULL")),
)

# Slugs of tenants that have tickets, for cross-tenant jobs (readable by all, no tenant data).
# A tenant is registered when its first ticket makes its number sequence.
tenants = Table("tenants", metadata, Column("tenant_id", Text, primary_key=True), _created_at())

outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
dead_letters = dead_letter_table(metadata)
idempotency_keys = idempotency_table(metadata)

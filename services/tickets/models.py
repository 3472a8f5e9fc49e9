"""Tables of the tickets schema."""

from sqlalchemy import Column, DateTime, Index, Integer, Table, Text, func, text
from sqlalchemy.dialects.postgresql import UUID

from libs.common.consumer import dead_letter_table, inbox_table
from libs.common.db import make_metadata
from libs.common.idempotency import idempotency_table
from libs.common.outbox import outbox_table

metadata = make_metadata("tickets")

tickets = Table(
    "tickets",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("number", Integer, nullable=False),
    Column("subject", Text, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("status", Text, nullable=False, server_default="open"),
    Column("priority", Text, nullable=False, server_default="medium"),
    Column("category", Text),
    Column("requester_id", Text, nullable=False),
    Column("assignee_id", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("version", Integer, nullable=False, server_default=text("1")),
    Index("uq_tickets_tenant_id_number", "tenant_id", "number", unique=True),
    Index("ix_tickets_tenant_id_created_at_id", "tenant_id", text("created_at DESC"), text("id DESC")),
    Index(
        "ix_tickets_tenant_id_requester_id_created_at_id",
        "tenant_id",
        "requester_id",
        text("created_at DESC"),
        text("id DESC"),
    ),
)

# Per-tenant ticket numbers (#1042): one counter row per tenant, bumped in the create transaction.
ticket_numbers = Table(
    "ticket_numbers",
    metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("last_number", Integer, nullable=False),
)

outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
dead_letters = dead_letter_table(metadata)
idempotency_keys = idempotency_table(metadata)

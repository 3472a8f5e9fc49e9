"""Tables of the analytics schema: aggregates kept from events (event-carried state)."""

from sqlalchemy import Column, Date, Integer, Table, Text

from libs.common.consumer import dead_letter_table, inbox_table
from libs.common.db import make_metadata

metadata = make_metadata("analytics")

daily_ticket_counts = Table(
    "daily_ticket_counts",
    metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("tickets_created", Integer, nullable=False, server_default="0"),
)

inbox = inbox_table(metadata)
dead_letters = dead_letter_table(metadata)

"""Tables of the notifications schema."""

from libs.common.consumer import dead_letter_table, inbox_table, received_events_table
from libs.common.db import make_metadata
from libs.common.outbox import outbox_table

metadata = make_metadata("notifications")

# Until the notifications domain lands, the service keeps a journal of the ticket events it receives.
received_events = received_events_table(metadata)
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
dead_letters = dead_letter_table(metadata)

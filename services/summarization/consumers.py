"""Handlers for the events summarization consumes."""

from libs.common.consumer import Subscription, journal_handler
from services.summarization.models import received_events

record_ticket_events = journal_handler(received_events)

subscriptions = [Subscription(stream="TICKETS", batch_handlers={"ticket.created": record_ticket_events})]

"""Ticket attachments: files stored in a blob store, metadata in tickets.attachments."""

"""summarization: the outbox trigger NOTIFYs only while no relay is busy

A busy relay polls on its own and holds an advisory lock meanwhile; a commit that adds outbox
rows NOTIFYs only when it can take that lock shared. Under load a NOTIFY per commit serialised
the commits (PostgreSQL holds a database-wide lock from a notifying transaction's pre-commit to
its end) and woke every listening relay.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from libs.common.migrations import notify_on_every_commit, notify_only_idle_relays

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None
SCHEMA = "summarization"


def upgrade() -> None:
    notify_only_idle_relays(SCHEMA)


def downgrade() -> None:
    notify_on_every_commit(SCHEMA)

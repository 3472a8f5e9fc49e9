"""tickets: dead letters record when and by whom they were replayed

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-22
"""

from libs.common.migrations import add_dead_letter_replay_columns, drop_dead_letter_replay_columns

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None
SCHEMA = "tickets"


def upgrade() -> None:
    add_dead_letter_replay_columns(SCHEMA)


def downgrade() -> None:
    drop_dead_letter_replay_columns(SCHEMA)

"""summarization: dead letters record when and by whom they were replayed

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from libs.common.migrations import add_dead_letter_replay_columns, drop_dead_letter_replay_columns

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
SCHEMA = "summarization"


def upgrade() -> None:
    add_dead_letter_replay_columns(SCHEMA)


def downgrade() -> None:
    drop_dead_letter_replay_columns(SCHEMA)

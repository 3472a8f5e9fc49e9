"""tickets: tags are case-insensitive, stored in lowercase

`VIP` and `vip` were two tags, and a filter found only the one typed exactly. New tags are now
lowered (`schemas.tag_key`); existing ones are lowered here, each kept once, in order. Python
lowers them, not SQL: PostgreSQL's lower() follows the database's locale (under C only ASCII).

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None
SCHEMA = "tickets"
BATCH = 2000


def upgrade() -> None:
    from services.tickets.schemas import tag_key

    bind = op.get_bind()
    # Primary-key batches keep memory flat; only tickets with a tag to change are written.
    select = sa.text(
        f"SELECT id, tags FROM \"{SCHEMA}\".tickets WHERE id > :after AND tags <> '{{}}' "
        f"ORDER BY id LIMIT {BATCH}"
    )
    update = sa.text(f'UPDATE "{SCHEMA}".tickets SET tags = :tags WHERE id = :id')
    after = "00000000-0000-0000-0000-000000000000"
    while rows := bind.execute(select, {"after": after}).all():
        lowered = ((id_, tags, list(dict.fromkeys(tag_key(tag) for tag in tags))) for id_, tags in rows)
        changes = [{"id": id_, "tags": new} for id_, old, new in lowered if new != old]
        if changes:
            bind.execute(update, changes)
        after = rows[-1][0]


def downgrade() -> None:
    # Which tags were written in capitals is not kept; lowercase tags work as before.
    pass

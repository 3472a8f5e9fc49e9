"""tickets: text in composed Unicode (NFC); search terms with address parts and more

Text people write is now stored in Unicode's composed form (NFC): Hangul sent decomposed (macOS)
could not be found by a composed search or filter. Existing text is composed here first. Then
every ticket's and comment's search terms are recomputed, in batches, by the service's own
`search.search_terms_of`, which now also adds the parts of email addresses and host names (`acme`
in kim@acme.co.kr), the words inside angle brackets (which PostgreSQL's parser drops as a tag)
and a number with its Korean counter inside a longer word (`1층` in "B1층").

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None
SCHEMA = "tickets"
TEXT_COLUMNS = {"tickets": ["subject", "description"], "comments": ["body"]}
BATCH = 2000
# Text people write (ids and keys are kept as they are); tags are an array of it.
COMPOSED_TEXT = {
    "tickets": ["subject", "description", "type", "location", "building", "floor", "room", "requester_name"],
    "comments": ["body"],
}


def compose_text() -> None:
    for table, columns in COMPOSED_TEXT.items():
        for column in columns:
            op.execute(
                f'UPDATE "{SCHEMA}".{table} SET {column} = normalize({column}, NFC) '
                f"WHERE {column} IS NOT NFC NORMALIZED"
            )
    op.execute(
        f'UPDATE "{SCHEMA}".tickets SET tags = ARRAY(SELECT normalize(tag, NFC) FROM unnest(tags) AS tag) '
        "WHERE NOT (array_to_string(tags, ' ') IS NFC NORMALIZED)"
    )


def recompute_search_terms() -> None:
    """Every ticket's and comment's `search_terms` from `search_terms_of`, in primary-key order,
    BATCH rows per read, so memory stays flat however many rows there are; only rows whose
    terms change are written."""
    from services.tickets.search import search_terms_of

    bind = op.get_bind()
    for table, columns in TEXT_COLUMNS.items():
        # The limit is written into the SQL, so no plan of the prepared statement has to guess it.
        select = sa.text(
            f'SELECT id, search_terms, {", ".join(columns)} FROM "{SCHEMA}".{table} '
            f"WHERE id > :after ORDER BY id LIMIT {BATCH}"
        )
        update = sa.text(f'UPDATE "{SCHEMA}".{table} SET search_terms = :terms WHERE id = :id')
        after = "00000000-0000-0000-0000-000000000000"
        while rows := bind.execute(select, {"after": after}).all():
            terms = ((row[0], row[1], search_terms_of(" ".join(row[2:]))) for row in rows)
            changes = [{"id": id_, "terms": new} for id_, old, new in terms if new != old]
            if changes:
                bind.execute(update, changes)
            after = rows[-1][0]


def upgrade() -> None:
    compose_text()
    recompute_search_terms()


def downgrade() -> None:
    # Composed text is the same text; the extra terms only add matches. Both stay.
    pass

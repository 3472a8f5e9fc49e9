"""Search over tickets and their comments, in Korean and English.

Two index paths, combined: full-text (`simple` config, whole words in any language) and
trigrams (substrings, which Korean needs: 엘리베이터 must find 엘리베이터가). The expressions
below are exactly those of the indexes in migration 0003.
"""

from __future__ import annotations

import html
import re
from typing import Any

from sqlalchemy import ColumnElement, Float, Table, bindparam, func, literal_column, or_, select, union
from sqlalchemy.types import Text

from services.tickets.models import comments

MAX_QUERY_LENGTH = 200
SNIPPET_CHARS = 160

_TICKET_TEXT = literal_column("(tickets.tickets.subject || ' ' || tickets.tickets.description)", Text)
_SIMPLE = literal_column("'simple'::regconfig")


def _tsquery() -> ColumnElement:
    return func.plainto_tsquery(_SIMPLE, bindparam("q"))


def _like_pattern(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def params(q: str) -> dict[str, Any]:
    return {"q": q, "q_pattern": _like_pattern(q)}


def matches(tickets: Table, *, public_comments_only: bool) -> ColumnElement:
    """Tickets whose subject, description or a comment matches `:q` (ids from both indexes)."""
    pattern = bindparam("q_pattern")
    ticket_hits = select(tickets.c.id).where(
        tickets.c.tenant_id == bindparam("tenant_id"),
        or_(
            func.to_tsvector(_SIMPLE, _TICKET_TEXT).op("@@")(_tsquery()),
            _TICKET_TEXT.ilike(pattern),
        ),
    )
    comment_hits = select(comments.c.ticket_id).where(
        comments.c.tenant_id == bindparam("tenant_id"),
        or_(func.to_tsvector(_SIMPLE, comments.c.body).op("@@")(_tsquery()), comments.c.body.ilike(pattern)),
    )
    if public_comments_only:
        comment_hits = comment_hits.where(comments.c.visibility == "public")
    return tickets.c.id.in_(union(ticket_hits, comment_hits).scalar_subquery())


def rank() -> ColumnElement:
    """Relevance: word matches (ts_rank) plus how well the query occurs as a substring."""
    return (
        func.ts_rank(func.to_tsvector(_SIMPLE, _TICKET_TEXT), _tsquery())
        + func.public.word_similarity(bindparam("q"), _TICKET_TEXT)
    ).cast(Float)


def highlight(q: str, *texts: str) -> str | None:
    """A short snippet around the first match, HTML-escaped, matches wrapped in <mark>."""
    terms = [term for term in re.split(r"\s+", q.strip()) if term]
    if not terms:
        return None
    pattern = re.compile(
        "|".join(re.escape(term) for term in sorted(terms, key=len, reverse=True)), re.IGNORECASE
    )
    for text in texts:
        found = pattern.search(text or "")
        if not found:
            continue
        start = max(0, found.start() - SNIPPET_CHARS // 3)
        snippet = text[start : start + SNIPPET_CHARS]
        marked = pattern.sub(lambda m: f"\x00{m.group(0)}\x01", snippet)
        escaped = html.escape(marked).replace("\x00", "<mark>").replace("\x01", "</mark>")
        return ("…" if start > 0 else "") + escaped + ("…" if start + SNIPPET_CHARS < len(text) else "")
    return None

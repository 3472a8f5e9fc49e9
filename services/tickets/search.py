"""Search over tickets and their comments, in Korean and English.

Two index paths, combined: full-text (`simple` config, whole words in any language) and
trigrams (substrings, which Korean needs: 엘리베이터 must find 엘리베이터가). The expressions
below are exactly those of the indexes in migration 0003.
"""

from __future__ import annotations

import html
import re
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Select,
    Table,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    or_,
    select,
    union,
)
from sqlalchemy.dialects.postgresql import ARRAY
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
    # `id = ANY(<array of the hits>)`, not `id IN (<union>)`: the hits are computed once (an
    # InitPlan) and the tickets are then fetched by primary key. With IN, the planner joined the
    # union against a sequential scan of the tenant's tickets (850 ms at 100k tickets).
    hits = union(ticket_hits, comment_hits).subquery("search_hits")
    # The cast makes it an array expression (PostgreSQL reads `= ANY ((SELECT ...))` as a sublink).
    hit_ids = cast(select(func.array_agg(hits.c.id)).scalar_subquery(), ARRAY(tickets.c.id.type))
    return tickets.c.id == func.any(hit_ids)


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


SIMILAR_LIMIT = 10
SIMILAR_MIN_SCORE = 0.1
_OPEN_CATEGORIES = ["open", "pending", "in_progress"]


def similar_query(tickets: Table, *, same_building: bool) -> Select:
    """Open tickets of the tenant resembling `:text`, best first.

    With a building, candidates are the open tickets of that building (few; ten reports of one
    broken elevator share it) scored by trigram similarity, plus a bonus for the same floor and
    room. Without one, the trigram index finds candidates across the tenant.
    """
    text_similarity = func.public.similarity(_TICKET_TEXT, bindparam("text"))
    score = text_similarity
    where = [
        tickets.c.tenant_id == bindparam("tenant_id"),
        tickets.c.id != bindparam("ticket_id"),
        tickets.c.deleted_at.is_(None),
        tickets.c.merged_into_id.is_(None),
        tickets.c.status_category
        == func.any(bindparam("open_categories", _OPEN_CATEGORIES, type_=ARRAY(Text))),
    ]
    if same_building:
        where.append(tickets.c.building == bindparam("building"))
        same_floor = case((tickets.c.floor == bindparam("floor"), 0.2), else_=0.0)
        same_room = case((tickets.c.room == bindparam("room"), 0.2), else_=0.0)
        score = text_similarity + same_floor + same_room
    else:
        where.append(_TICKET_TEXT.op("OPERATOR(public.%)")(bindparam("text")))
    return (
        select(*[c for c in tickets.c if c.name in SIMILAR_COLUMNS], score.cast(Float).label("score"))
        .where(and_(*where), text_similarity >= SIMILAR_MIN_SCORE)
        .order_by(literal_column("score").desc(), tickets.c.created_at.desc())
        .limit(SIMILAR_LIMIT)
    )


SIMILAR_COLUMNS = (
    "id",
    "number",
    "subject",
    "status",
    "status_category",
    "priority",
    "category",
    "location",
    "building",
    "floor",
    "room",
    "requester_id",
    "assignee_id",
    "created_at",
)

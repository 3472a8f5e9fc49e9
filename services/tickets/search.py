"""Search over tickets and their comments, in Korean and English.

Search uses one stored vector per ticket and per comment (`simple` config): the words, plus the
Hangul bigrams that let a Korean term match inside a word (엘리베이터 finds 엘리베이터가); see
`search_terms_of`. Duplicate hints (`similar_query`) use trigram similarity instead. The
expressions below are exactly those of the indexes (migrations 0003, 0005).
"""

from __future__ import annotations

import html
import re
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
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
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import Text

from services.tickets.models import OPEN_TICKET, comments

MAX_QUERY_LENGTH = 200
SNIPPET_CHARS = 160

_TICKET_TEXT = literal_column("(tickets.tickets.subject || ' ' || tickets.tickets.description)", Text)
_SIMPLE = literal_column("'simple'::regconfig")


# Relevance is ranked among the newest MAX_HITS matching tickets plus the tickets of the newest
# MAX_HITS matching comments (after the other filters). For a term found in a large share of a
# tenant the planner then walks the newest rows and stops early instead of reading every match:
# at 1M tickets 9-30 ms instead of 100-170 ms for 엘리베이터/누수/printer.
MAX_HITS = 200
MIN_PREFIX_LENGTH = 3
_HANGUL_RUN = re.compile(r"[가-힣]{2,}")
_HANGUL_WORD = re.compile(r"^[가-힣]{2,}$")
_TOKEN = re.compile(r"[^\W_]+")
_DIGITS = re.compile(r"\d+")
_FLOOR_LIKE = re.compile(r"^\d+[가-힣]+$")
# A number with a Korean counter inside a word: "1층" in "B1층"; one that starts its word is
# found by the word itself.
_COUNTED_NUMBER = re.compile(r"(?<=[^\W\d_])\d+[가-힣]+")
# What PostgreSQL's parser takes for an HTML tag and drops with its contents.
_BRACKETED = re.compile(r"<([^<>]{1,200})>")
# An email address or a dotted host name (no quote can occur: the term is quoted as it is).
_ADDRESS = re.compile(r"(?:[a-z0-9._%+-]+@)?[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}")
_ADDRESS_CHARACTERS = re.compile(r"[a-z0-9._%+@-]+")


def search_terms_of(text: str) -> str:
    """Extra search terms for text, stored with each ticket and comment (`search_terms`).

    What PostgreSQL's word parser does not give on its own:
    - the overlapping two-syllable pieces of every Hangul run (엘리베이터 -> 엘리 리베 베이 이터),
      so a Korean term matches inside longer words (엘리베이터 in 엘리베이터가);
    - every run of digits, which the parser otherwise reads as part of something else (`-4242`
      in "zebra-4242", a signed number), and a number with its Korean counter inside a longer
      word (`1층` in "B1층");
    - the parts of an email address or host name (`acme` in kim@acme.co.kr), which the parser
      keeps as one word;
    - the words inside angle brackets (`<NullPointerException>`), which the parser drops as an
      HTML tag.

    Changing what this returns needs a migration recomputing the stored terms (as 0013 does).
    """
    lowered = text.lower()
    bigrams = (run[i : i + 2] for run in _HANGUL_RUN.findall(text) for i in range(len(run) - 1))
    counted = _COUNTED_NUMBER.findall(text)
    address_parts = (part for address in _addresses_in(lowered) for part in _TOKEN.findall(address))
    bracketed = (word for inner in _BRACKETED.findall(text) for word in _TOKEN.findall(inner))
    return " ".join([*bigrams, *_DIGITS.findall(text), *counted, *address_parts, *bracketed])


def _addresses_in(text: str) -> list[str]:
    """Email addresses and host names in lowercase `text`, in linear time.

    `_ADDRESS.findall` over a whole text backtracks quadratically on a long run of letters (100 kB
    of them: minutes). Runs of the characters an address is made of are found first, and only
    runs of an address's length are matched, each as a whole.
    """
    runs = (run.strip(".-") for run in _ADDRESS_CHARACTERS.findall(text))
    return [run for run in runs if "." in run and len(run) <= 320 and _ADDRESS.fullmatch(run)]


def term_queries(q: str) -> list[str]:
    """`to_tsquery('simple', ...)` text of each term of q; a ticket must match them all.

    Korean terms match anywhere in a word (the phrase of their bigrams); other words match whole,
    the last one also as a prefix (search as you type: "vpn disc" finds "VPN disconnects").

    Why not every word as a prefix, and why the extra alternative for a lone Korean term: a GIN
    index skips through the posting lists of terms every match must contain and has to read all
    of a prefix's or an alternative's. At 1M tickets `('엘리베이터':* | <bigrams>) & ('소음':* |
    '소음')` read 63 ms of index, the plain phrases 17 ms; `'vpn':* & 'disconnects':*` 26 ms,
    `'vpn' & 'disconnects':*` about 8.
    """
    # PostgreSQL's parser keeps an email address or a host name as one word, so it is searched
    # as one (kim@acme.co.kr), not as its parts, which the stored text does not hold.
    addresses = _ADDRESS.findall(q.lower())
    tokens = _TOKEN.findall(_ADDRESS.sub(" ", q.lower()))
    terms = [f"'{address}'" for address in addresses]
    for position, token in enumerate(tokens):
        if _HANGUL_WORD.match(token):
            phrase = " <-> ".join(f"'{token[i : i + 2]}'" for i in range(len(token) - 1))
            if len(tokens) == 1:
                # The word-prefix alternative adds no matches, but without it PostgreSQL
                # estimates the phrase as rare (it multiplies the bigrams' frequencies) and reads
                # every match through the GIN index (160 ms at 1M tickets) instead of walking the
                # newest rows (11 ms). With more terms the intersection is rarer and the index is
                # the right path.
                phrase = f"'{token}':* | {phrase}"
            terms.append(phrase)
        elif _FLOOR_LIKE.match(token):
            # A number with a Korean counter (3층, 2호) is mostly followed by a particle inside
            # the same word ("3층에서"): a prefix finds it, and it is specific enough to be cheap.
            terms.append(f"'{token}':*")
        elif len(token) >= MIN_PREFIX_LENGTH and position == len(tokens) - 1:
            terms.append(f"'{token}':*")
        else:  # whole words; a short prefix would expand to a large share of the vocabulary
            terms.append(f"'{token}'")
    return terms


def tsquery_text(q: str) -> str | None:
    """The whole query: every term must match. None when q has no searchable term."""
    terms = term_queries(q)
    return " & ".join(f"({term})" for term in terms) if terms else None


def params(q: str) -> dict[str, Any]:
    return {"q_tsquery": tsquery_text(q) or ""}


def split_params(q: str) -> dict[str, Any]:
    terms = term_queries(q)
    return {"q_terms": terms, "q_any": " | ".join(f"({term})" for term in terms)}


def _tsquery() -> ColumnElement:
    return func.to_tsquery(_SIMPLE, bindparam("q_tsquery"))


def matches(
    tickets: Table,
    *,
    ticket_conditions: list[ColumnElement],
    public_comments_only: bool,
    narrowed: bool,
) -> ColumnElement:
    """Tickets whose subject, description or a comment matches the query.

    Each side contributes its newest MAX_HITS matches among the tickets that pass
    `ticket_conditions`: for a rare term the GIN index finds them, for a term in a large share of
    the tenant the planner walks the newest rows instead and stops early, so neither has to read
    every match before ranking. Older matches beyond the cap are not returned: narrowing the
    search with filters (a status, a date range) reaches them.
    """
    ticket_hits = (
        select(tickets.c.id)
        .where(*ticket_conditions, tickets.c.search_vector.op("@@")(_tsquery()))
        .order_by(tickets.c.created_at.desc(), tickets.c.id.desc())
        .limit(MAX_HITS)
    )
    comment_hits = select(comments.c.ticket_id).where(
        comments.c.tenant_id == bindparam("tenant_id"), comments.c.search_vector.op("@@")(_tsquery())
    )
    if narrowed:
        # The caller sees only some tickets (its own, or filtered): a comment counts only if its
        # ticket passes the same conditions, else other tickets' comments (even ones the caller
        # cannot see) could fill the cap and hide the caller's matches. Unnarrowed, the join
        # would only cost: every ticket of the tenant qualifies (1M tickets: q=엘리베이터 p99
        # 710 ms with the join, against ~200 ms without).
        comment_hits = comment_hits.join(tickets, tickets.c.id == comments.c.ticket_id).where(
            *ticket_conditions
        )
    if public_comments_only:
        comment_hits = comment_hits.where(comments.c.visibility == "public")
    comment_hits = comment_hits.order_by(comments.c.created_at.desc()).limit(MAX_HITS)
    # `id = ANY(<array of the hits>)`, not `id IN (<union>)`: the hits are computed once (an
    # InitPlan) and the tickets are then fetched by primary key. With IN, the planner joined the
    # union against a sequential scan of the tenant's tickets (850 ms at 100k tickets).
    hits = union(ticket_hits.subquery().select(), comment_hits.subquery().select()).subquery("search_hits")
    # The cast makes it an array expression (PostgreSQL reads `= ANY ((SELECT ...))` as a sublink).
    hit_ids = cast(select(func.array_agg(hits.c.id)).scalar_subquery(), ARRAY(tickets.c.id.type))
    return tickets.c.id == func.any(hit_ids)


def split_matches(
    tickets: Table, *, ticket_conditions: list[ColumnElement], public_comments_only: bool, narrowed: bool
) -> ColumnElement:
    """Tickets where each term is in the ticket's text or in one of its comments, though no one
    place holds them all ("elevator" in the subject, "noise" in a reply).

    Such a ticket has a comment matching some term, so the candidates are the tickets of the
    newest MAX_HITS comments matching any term (among the caller's tickets), each then checked
    term by term. Run only when the full matches do not fill a page (see repository).
    """
    any_term = func.to_tsquery(_SIMPLE, bindparam("q_any"))
    candidates = select(comments.c.ticket_id).where(
        comments.c.tenant_id == bindparam("tenant_id"), comments.c.search_vector.op("@@")(any_term)
    )
    if narrowed:  # as in `matches`: only then can other tickets' comments fill the cap
        candidates = candidates.join(tickets, tickets.c.id == comments.c.ticket_id).where(*ticket_conditions)
    if public_comments_only:
        candidates = candidates.where(comments.c.visibility == "public")
    candidates = (
        candidates.order_by(comments.c.created_at.desc()).limit(MAX_HITS).subquery("split_candidates")
    )
    candidate_ids = cast(
        select(func.array_agg(candidates.c.ticket_id)).scalar_subquery(), ARRAY(tickets.c.id.type)
    )
    term = func.unnest(bindparam("q_terms", type_=ARRAY(Text))).table_valued("q").render_derived("term")
    term_query = func.to_tsquery(_SIMPLE, term.c.q)
    reply = comments.alias("term_comments")
    # Both refer to the ticket being checked, two levels up: SQLAlchemy does not infer that.
    in_a_comment = (
        select(reply.c.id)
        .where(
            reply.c.tenant_id == tickets.c.tenant_id,
            reply.c.ticket_id == tickets.c.id,
            reply.c.search_vector.op("@@")(term_query),
        )
        .correlate(tickets, term)
    )
    if public_comments_only:
        in_a_comment = in_a_comment.where(reply.c.visibility == "public")
    missing_term = (
        select(term.c.q)
        .where(~or_(tickets.c.search_vector.op("@@")(term_query), in_a_comment.exists()))
        .correlate(tickets)
    )
    return and_(tickets.c.id == func.any(candidate_ids), ~missing_term.exists())


def rank(tickets: Table) -> ColumnElement:
    """Relevance of the ticket's own text (0 when only a comment matched), from the stored vector."""
    return func.ts_rank(tickets.c.search_vector, _tsquery()).cast(Float)


class Highlighter:
    """Snippets of a result page for one query: the pattern is built once per page, not per
    ticket (it was ~0.5 ms of a 50-ticket search)."""

    def __init__(self, q: str) -> None:
        terms = sorted(set(_TOKEN.findall(q)), key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, terms)), re.IGNORECASE) if terms else None

    def snippet(self, *texts: str | None) -> str | None:
        """A short snippet around the first match, HTML-escaped, matches wrapped in <mark>."""
        if self._pattern is None:
            return None
        for text in texts:
            found = self._pattern.search(text or "")
            if not found:
                continue
            start = max(0, found.start() - SNIPPET_CHARS // 3)
            snippet = text[start : start + SNIPPET_CHARS]
            marked = self._pattern.sub(_mark, snippet)
            escaped = html.escape(marked).replace("\x00", "<mark>").replace("\x01", "</mark>")
            return ("…" if start > 0 else "") + escaped + ("…" if start + SNIPPET_CHARS < len(text) else "")
        return None


def _mark(match: re.Match) -> str:
    return f"\x00{match.group(0)}\x01"  # control characters: they cannot survive html.escape


SIMILAR_LIMIT = 10
SIMILAR_MIN_SCORE = 0.1


def similar_query(tickets: Table, *, same_building: bool) -> Select | CompoundSelect:
    """Open tickets of the tenant resembling `:text`, best first.

    Without a building, the trigram index of open tickets finds candidates across the tenant
    (trigram similarity of at least 0.3, pg_trgm's threshold). With one, the candidates are the
    open tickets of that building (few; ten reports of one broken elevator share it), scored by
    trigram similarity plus a bonus for the same floor and room, and, found the same way as
    without a building, the open tickets with no building at all: a report by e-mail or phone
    often has none, and is the same elevator all the same.
    """
    text_similarity = func.public.similarity(_TICKET_TEXT, bindparam("text"))
    columns = [c for c in tickets.c if c.name in SIMILAR_COLUMNS]
    where = [
        tickets.c.tenant_id == bindparam("tenant_id"),
        tickets.c.id != bindparam("ticket_id"),
        OPEN_TICKET,
        text_similarity >= SIMILAR_MIN_SCORE,
    ]
    similar_text = _TICKET_TEXT.op("OPERATOR(public.%)")(bindparam("text"))
    anywhere = select(*columns, text_similarity.cast(Float).label("score")).where(*where, similar_text)
    best_first = (literal_column("score").desc(), literal_column("created_at").desc())
    if not same_building:
        return anywhere.order_by(*best_first).limit(SIMILAR_LIMIT)
    same_floor = case((tickets.c.floor == bindparam("floor"), 0.2), else_=0.0)
    same_room = case((tickets.c.room == bindparam("room"), 0.2), else_=0.0)
    score = (text_similarity + same_floor + same_room).cast(Float).label("score")
    in_building = select(*columns, score).where(*where, tickets.c.building == bindparam("building"))
    unlocated = anywhere.where(tickets.c.building.is_(None))
    return union_all(in_building, unlocated).order_by(*best_first).limit(SIMILAR_LIMIT)


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

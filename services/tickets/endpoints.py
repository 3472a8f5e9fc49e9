"""Tickets HTTP API: parse, call the service, shape the response."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Header, Path, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.auth import Identity, IdentityDep, require_roles
from libs.common.db import TenantSessionDep
from libs.common.errors import ProblemError
from libs.common.idempotency import (
    REPLAYED_HEADERS,
    IdempotencyKeyHeader,
    StoredResponse,
    claim_key,
    request_fingerprint,
    store_response,
)
from libs.common.pagination import (
    CURSOR_ERRORS,
    CursorQuery,
    LimitQuery,
    Page,
    cursor_id,
    cursor_time,
    decode_cursor,
    decode_time_cursor,
    encode_cursor,
    malformed_cursor,
    time_page,
)
from libs.common.query import openapi_parameters, parse_query
from libs.common.responses import FastJSONResponse, jsonable
from services.tickets import repository, search, service
from services.tickets.models import idempotency_keys
from services.tickets.schemas import (
    BulkUpdate,
    CategoryCreate,
    CategoryRead,
    CategoryUpdate,
    CommentCreate,
    CommentRead,
    HistoryEntry,
    MergeRequest,
    Priority,
    SearchHit,
    SimilarTicket,
    StatusCreate,
    StatusRead,
    StatusUpdate,
    TicketCreate,
    TicketRead,
    TicketUpdate,
    composed,
    tag_key,
)
from services.tickets.workflow import BUILTIN_STATUSES, Status, StatusCategory

router = APIRouter(prefix="/api/v1/tickets", tags=["tickets"])
settings_router = APIRouter(prefix="/api/v1/tickets", tags=["ticket settings"])

AdminOnly = require_roles("admin")
INTERNAL_KEYS = ("priority_rank", "due_sort", "rank")
# Keys as StatusCreate/CategoryCreate accept them; anything else cannot name a stored row.
SettingKey = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")]


def _ticket_response(ticket: dict[str, Any], status_code: int = 200, **headers: str) -> FastJSONResponse:
    return FastJSONResponse(
        ticket, status_code=status_code, headers={"ETag": service.etag(ticket), **headers}
    )


# -- workflow settings (declared before /{ticket_id} so those paths are not taken for ids) -------


@settings_router.get("/statuses", response_model=Page[StatusRead])
async def list_statuses(session: TenantSessionDep, identity: IdentityDep) -> dict[str, Any]:
    """The tenant's statuses: the five built-in ones and its own, each with its category."""
    workflow = await service.load_workflow(session, identity.tenant)
    return {"items": [_status_view(s) for s in workflow.ordered()], "next_cursor": None}


def _status_view(status: Status) -> dict[str, Any]:
    return dataclasses.asdict(status)


@settings_router.post("/statuses", status_code=201, response_model=StatusRead, dependencies=[AdminOnly])
async def create_status(
    data: StatusCreate, session: TenantSessionDep, identity: IdentityDep
) -> dict[str, Any]:
    """Add a tenant status (admins), e.g. `waiting_on_vendor` in the pending category."""
    if data.key in BUILTIN_STATUSES or not await repository.insert_status(
        session, identity.tenant, data.model_dump()
    ):
        raise ProblemError(409, "Conflict", f"status {data.key!r} already exists")
    return {**data.model_dump(), "builtin": False}


@settings_router.patch("/statuses/{key}", response_model=StatusRead, dependencies=[AdminOnly])
async def update_status(
    key: SettingKey, data: StatusUpdate, session: TenantSessionDep, identity: IdentityDep
) -> dict[str, Any]:
    """Rename a status or change its place within its category (admins). A built-in status takes
    a name only, e.g. the tenant's own word for `open` (`접수`); keys and categories never change,
    so tickets, filters and events keep working."""
    updated = await service.update_status(session, identity.tenant, key, data)
    return _status_view(updated)


@settings_router.delete("/statuses/{key}", status_code=204, dependencies=[AdminOnly])
async def delete_status(key: SettingKey, session: TenantSessionDep, identity: IdentityDep) -> Response:
    """Remove a tenant status that no ticket uses (admins). Built-in statuses stay."""
    if key in BUILTIN_STATUSES:
        raise ProblemError(409, "Conflict", f"built-in status {key!r} cannot be removed")
    # Locked first, so a ticket moving into it meanwhile commits before the check below.
    if not await repository.lock_status(session, identity.tenant, key, for_removal=True):
        raise ProblemError(404, "Not Found", f"status {key!r} not found")
    if await repository.status_in_use(session, identity.tenant, key):
        raise ProblemError(409, "Conflict", f"status {key!r} is in use by tickets; move them first")
    await repository.delete_status(session, identity.tenant, key)
    return Response(status_code=204)


@settings_router.get("/categories", response_model=Page[CategoryRead])
async def list_categories(session: TenantSessionDep, identity: IdentityDep) -> dict[str, Any]:
    """The tenant's ticket categories (when the list is empty, any category key is accepted)."""
    return {"items": await repository.list_categories(session, identity.tenant), "next_cursor": None}


@settings_router.post("/categories", status_code=201, response_model=CategoryRead, dependencies=[AdminOnly])
async def create_category(
    data: CategoryCreate, session: TenantSessionDep, identity: IdentityDep
) -> dict[str, Any]:
    """Add a category (admins)."""
    if not await repository.insert_category(session, identity.tenant, data.model_dump()):
        raise ProblemError(409, "Conflict", f"category {data.key!r} already exists")
    return data.model_dump()


@settings_router.patch("/categories/{key}", response_model=CategoryRead, dependencies=[AdminOnly])
async def update_category(
    key: SettingKey, data: CategoryUpdate, session: TenantSessionDep, identity: IdentityDep
) -> dict[str, Any]:
    """Rename a category (admins); its key, which tickets carry, stays."""
    if not await repository.update_category(session, identity.tenant, key, data.model_dump()):
        raise ProblemError(404, "Not Found", f"category {key!r} not found")
    return {"key": key, **data.model_dump()}


@settings_router.delete("/categories/{key}", status_code=204, dependencies=[AdminOnly])
async def delete_category(key: SettingKey, session: TenantSessionDep, identity: IdentityDep) -> Response:
    """Remove a category (admins); tickets keep the key they have."""
    if not await repository.delete_category(session, identity.tenant, key):
        raise ProblemError(404, "Not Found", f"category {key!r} not found")
    return Response(status_code=204)


@settings_router.post("/bulk", response_model=Page[TicketRead])
async def bulk_update(data: BulkUpdate, session: TenantSessionDep, identity: IdentityDep) -> FastJSONResponse:
    """Change status, assignee, priority or tags of up to 500 tickets in one transaction (all or none)."""
    tickets = await service.bulk_update(session, identity, data)
    return FastJSONResponse({"items": tickets, "next_cursor": None})


# -- tickets -----------------------------------------------------------------------------------


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TicketRead)
async def create_ticket(
    data: TicketCreate,
    session: TenantSessionDep,
    identity: IdentityDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """Create a ticket. With `Idempotency-Key`, a retry with the same body replays the first response."""
    fingerprint = ("POST /api/v1/tickets", data)
    if stored := await _replayed(session, identity, idempotency_key, fingerprint):
        location = f"/api/v1/tickets/{stored.body['id']}"
        return _ticket_response(stored.body, stored.status_code, Location=location, **REPLAYED_HEADERS)
    ticket = await service.create_ticket(session, identity, data)
    await _store_for_replay(session, identity, idempotency_key, ticket)
    return _ticket_response(ticket, 201, Location=f"/api/v1/tickets/{ticket['id']}")


async def _replayed(
    session: AsyncSession, identity: Identity, key: str | None, request: tuple[str, BaseModel]
) -> StoredResponse | None:
    """With an `Idempotency-Key`: claim it for this request (route and body), or return the
    response of the first request that used it."""
    if not key:
        return None
    route, body = request
    fingerprint = request_fingerprint(route, identity.user_id, body.model_dump(mode="json"))
    return await claim_key(session, idempotency_keys, identity.tenant, key, fingerprint)


async def _store_for_replay(
    session: AsyncSession, identity: Identity, key: str | None, created: dict[str, Any]
) -> None:
    if key:
        await store_response(session, idempotency_keys, identity.tenant, key, 201, jsonable(created))


@router.get(
    "/{ticket_id}",
    response_model=TicketRead,
    responses={304: {"description": "Not Modified: an ETag in If-None-Match is the current one"}},
)
async def get_ticket(
    ticket_id: UUID, request: Request, session: TenantSessionDep, identity: IdentityDep
) -> Response:
    """One ticket with its latest AI summary (requesters: only their own). With `If-None-Match`
    holding its current ETag, a 304 without a body (a client's cached copy is still current)."""
    ticket = await service.get_ticket(session, identity, ticket_id)
    current = service.etag(ticket)
    if _none_match(request, current):
        return Response(status_code=304, headers={"ETag": current})
    return FastJSONResponse(ticket, headers={"ETag": current})


def _none_match(request: Request, current: str) -> bool:
    """Whether `If-None-Match` names the current ETag, or is `*` (RFC 9110: compared weakly)."""
    values = request.headers.getlist("if-none-match")
    if not values:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in ",".join(values).split(",")}
    return "*" in tags or current.removeprefix("W/") in tags


@router.get("/{ticket_id}/similar", response_model=Page[SimilarTicket])
async def similar_tickets(
    ticket_id: UUID, session: TenantSessionDep, identity: IdentityDep
) -> FastJSONResponse:
    """Possible duplicates (agents): up to ten open tickets with a similar subject/description at
    the same location (same building; same floor and room rank higher), best match first."""
    items = await service.similar_tickets(session, identity, ticket_id)
    return FastJSONResponse({"items": items, "next_cursor": None})


# The version, and the summary stamp a read's ETag may carry (not compared: see service.etag).
_ETAG = re.compile(r'\s*(?:W/)?"(\d{1,9})(?:-[0-9a-f]{8})?"\s*')
MAX_IF_MATCH_ETAGS = 20


def _parse_if_match(request: Request) -> frozenset[int]:
    """The ticket versions `If-Match` accepts: one ETag or a list (RFC 9110), on one header line
    or several. `*` is refused: it would update whatever the ticket has become meanwhile."""
    values = request.headers.getlist("if-match")
    if not values:
        raise ProblemError(
            428,
            "Precondition Required",
            "send If-Match with the ETag you read, so concurrent changes are not overwritten",
        )
    parts = ",".join(values).split(",")
    matches = [_ETAG.fullmatch(part) for part in parts[: MAX_IF_MATCH_ETAGS + 1]]
    if len(parts) > MAX_IF_MATCH_ETAGS or not all(matches):
        raise ProblemError(
            400,
            "Bad Request",
            f'malformed If-Match {", ".join(values)[:100]!r}; expected the ETag you read, like W/"3"'
            f" (or a list of at most {MAX_IF_MATCH_ETAGS}; * is not accepted)",
        )
    return frozenset(int(match.group(1)) for match in matches if match)


@router.patch("/{ticket_id}", response_model=TicketRead)
async def update_ticket(
    ticket_id: UUID,
    data: TicketUpdate,
    request: Request,
    session: TenantSessionDep,
    identity: IdentityDep,
    # Declared for the OpenAPI document and its length limit; read whole by _parse_if_match.
    if_match: Annotated[str | None, Header(alias="If-Match", max_length=200)] = None,
) -> FastJSONResponse:
    """Change a ticket. `If-Match` with the ETag you read is required; a stale one is 412.

    Status changes follow the tenant's workflow (409 lists the allowed next statuses);
    resolved/closed/first-response times and SLA deadlines are set by the workflow.
    """
    expected = _parse_if_match(request)
    return _ticket_response(await service.update_ticket(session, identity, ticket_id, data, expected))


@router.delete("/{ticket_id}", status_code=204)
async def delete_ticket(ticket_id: UUID, session: TenantSessionDep, identity: IdentityDep) -> Response:
    """Soft-delete a ticket (admins); it can be restored."""
    await service.delete_ticket(session, identity, ticket_id)
    return Response(status_code=204)


@router.post("/{ticket_id}/restore", response_model=TicketRead)
async def restore_ticket(
    ticket_id: UUID, session: TenantSessionDep, identity: IdentityDep
) -> FastJSONResponse:
    """Bring back a soft-deleted ticket (admins)."""
    return _ticket_response(await service.restore_ticket(session, identity, ticket_id))


@router.post("/{ticket_id}/merge", response_model=TicketRead)
async def merge_ticket(
    ticket_id: UUID, data: MergeRequest, session: TenantSessionDep, identity: IdentityDep
) -> FastJSONResponse:
    """Merge this ticket into another: comments and attachments move, this one closes and points there.

    If the other ticket has another requester, the moved public replies become internal notes and
    the attachments not on a comment stay here, unless `keep_public_comments` is true.
    """
    merged = await service.merge_ticket(
        session, identity, ticket_id, data.into_ticket_id, keep_public_comments=data.keep_public_comments
    )
    return _ticket_response(merged)


@router.get("/{ticket_id}/comments", response_model=Page[CommentRead])
async def list_comments(
    ticket_id: UUID,
    session: TenantSessionDep,
    identity: IdentityDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> FastJSONResponse:
    """Comments oldest first; requesters see public replies only, never internal notes."""
    after = decode_time_cursor(cursor) if cursor else None
    rows = await service.list_comments(session, identity, ticket_id, limit=limit, after=after)
    return FastJSONResponse(time_page(rows, limit))


@router.post("/{ticket_id}/comments", status_code=201, response_model=CommentRead)
async def add_comment(
    ticket_id: UUID,
    data: CommentCreate,
    session: TenantSessionDep,
    identity: IdentityDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> FastJSONResponse:
    """Reply publicly or add an internal note (agents). HTML is reduced to plain text. With
    `Idempotency-Key`, a retry with the same body replays the first response."""
    if stored := await _replayed(session, identity, idempotency_key, (f"POST comment {ticket_id}", data)):
        return FastJSONResponse(stored.body, status_code=stored.status_code, headers=REPLAYED_HEADERS)
    comment = await service.add_comment(session, identity, ticket_id, data)
    await _store_for_replay(session, identity, idempotency_key, comment)
    return FastJSONResponse(comment, status_code=201)


@router.get("/{ticket_id}/history", response_model=Page[HistoryEntry])
async def list_history(
    ticket_id: UUID,
    session: TenantSessionDep,
    identity: IdentityDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> FastJSONResponse:
    """Who changed which field from what to what, and when (agents and admins)."""
    after = decode_time_cursor(cursor) if cursor else None
    rows = await service.list_history(session, identity, ticket_id, limit=limit, after=after)
    return FastJSONResponse(time_page(rows, limit))


# -- list and search ---------------------------------------------------------------------------

# No NUL: PostgreSQL text cannot hold it, so the driver would fail on the parameter.
TextFilter = Annotated[str | None, Field(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
CUSTOM_FIELD_PREFIX = "cf."


def _utc(value: datetime | None, name: str) -> datetime | None:
    """Naive times are UTC; a time that has no UTC value in range is bad input, not a 500."""
    if value is None:
        return None
    try:
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        detail = f"{name} is out of range"
        raise ProblemError(
            422,
            "Validation Error",
            detail,
            type_="https://helpdesk.dev/problems/validation",
            errors=[{"loc": ["query", name], "field": name, "message": detail, "type": "value_error"}],
        ) from None


def _custom_field_filters(request: Request) -> dict[str, str] | None:
    pairs = {
        key[len(CUSTOM_FIELD_PREFIX) :]: value
        for key, value in request.query_params.multi_items()
        if key.startswith(CUSTOM_FIELD_PREFIX)
    }
    for key, value in pairs.items():
        if not (1 <= len(key) <= 64) or len(value) > 200 or "\x00" in key + value:
            raise ProblemError(400, "Bad Request", f"invalid custom-field filter cf.{key[:64]}")
    # Stored custom-field text is composed (NFC); so is what it is compared with.
    return {composed(key): composed(value) for key, value in pairs.items()} or None


def _no_nul(values: list[str], name: str) -> tuple[str, ...]:
    for value in values:
        if "\x00" in value or len(value) > 200:
            raise ProblemError(400, "Bad Request", f"invalid value for {name}")
    return tuple(values)


def _decode_list_cursor(cursor: str, sort: repository.Sort) -> list[Any]:
    value_names = repository.SORT_VALUE_NAMES[sort.field]
    values = decode_cursor(cursor, len(value_names) + 3)
    if values[0] != sort.field or values[1] != ("desc" if sort.descending else "asc"):
        raise ProblemError(
            400,
            "Bad Request",
            "cursor belongs to another sort order",
            type_="https://helpdesk.dev/problems/cursor",
        )
    try:
        parsed: list[Any] = []
        for name, raw in zip(value_names, values[2:-1], strict=True):
            if name in ("created_at", "updated_at", "due_sort"):
                parsed.append(cursor_time(raw) if raw != "infinity" else datetime.max.replace(tzinfo=UTC))
            elif name == "priority_rank":
                rank = int(raw)
                if not 0 <= rank <= 32767:  # a smallint column
                    raise ValueError("priority rank out of range")
                parsed.append(rank)
            else:
                parsed.append(float(raw))
        parsed.append(cursor_id(values[-1]))
    except CURSOR_ERRORS:
        raise malformed_cursor() from None
    return parsed


def _encode_list_cursor(row: dict[str, Any], sort: repository.Sort) -> str:
    values: list[Any] = [sort.field, "desc" if sort.descending else "asc"]
    for name in repository.SORT_VALUE_NAMES[sort.field]:
        value = row[name]
        values.append(value.isoformat() if isinstance(value, datetime) else value)
    values.append(str(row["id"]))
    return encode_cursor(values)


class TicketListQuery(BaseModel):
    """The list's query parameters (validated together: see libs/common/query.py)."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(50, ge=1, le=200, description="Page size (1..200)")
    cursor: str | None = Field(
        None, max_length=512, description="Opaque cursor from the previous page's next_cursor"
    )
    status_: list[str] = Field([], alias="status", max_length=50, description="Status key(s)")
    status_category: list[StatusCategory] = Field([], max_length=5)
    priority: list[Priority] = Field([], max_length=4)
    category: list[str] = Field([], max_length=50)
    assignee: TextFilter = Field(None, description="`me`, `none` or a user id")
    group: TextFilter = None
    requester: TextFilter = None
    tag: list[str] = Field(
        [],
        max_length=50,
        description="Tickets having all these tags (in any case: tags are case-insensitive)",
    )
    building: TextFilter = None
    floor: TextFilter = None
    room: TextFilter = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    updated_from: datetime | None = None
    updated_to: datetime | None = None
    overdue: bool = Field(
        False,
        description="Only tickets past their resolution deadline (`due_at`) and still open, with the"
        " SLA clock running (a ticket pending with a pausing policy is not overdue while it waits)",
    )
    due_before: datetime | None = Field(
        None, description="Only tickets whose resolution deadline is before this"
    )
    parent_id: UUID | None = None
    deleted: bool = Field(False, description="Only soft-deleted tickets (admins)")
    q: str | None = Field(
        None,
        min_length=1,
        max_length=search.MAX_QUERY_LENGTH,
        description=(
            "Search subject, description and comments: every term must match, all in the"
            " ticket's own text or all in one comment; words whole, the last one also as a prefix;"
            " Korean terms anywhere inside words; parts of email addresses and host names."
            " Ranks the newest"
            f" {search.MAX_HITS} matching tickets and the tickets of the newest {search.MAX_HITS}"
            " matching comments that pass the other filters: add filters to reach older matches"
        ),
    )
    sort: Literal["created_at", "updated_at", "priority", "due_at", "relevance"] | None = None
    order: Literal["asc", "desc"] = "desc"

    @field_validator("building", "floor", "room", "q")
    @classmethod
    def _composed(cls, value: Any) -> Any:
        """Compared with stored text, which is composed (NFC): a decomposed 세면대 finds it."""
        return composed(value) if isinstance(value, str) else value

    @field_validator("tag")
    @classmethod
    def _tag_keys(cls, value: list[str]) -> list[str]:
        """Compared with stored tags, which are composed and lowercase: `VIP` finds `vip`."""
        return [tag_key(tag) for tag in value]


@router.get(
    "",
    response_model=Page[SearchHit],
    openapi_extra={"parameters": openapi_parameters(TicketListQuery)},
)
async def list_tickets(
    request: Request, session: TenantSessionDep, identity: IdentityDep
) -> FastJSONResponse:
    """Tickets of the caller's tenant: filter, search, sort, cursor-paginate.

    Custom fields filter as `cf.<name>=<value>`. With `q`, results are ranked by relevance
    (unless another sort is asked for) and carry a highlighted snippet. When the tickets holding
    every term in their text or in one comment fit on the first page, tickets holding the terms
    only across their text and comments follow them (relevance order).
    """
    query = parse_query(request, TicketListQuery)
    q, limit, assignee = query.q, query.limit, query.assignee
    if q is not None and "\x00" in q:
        raise ProblemError(400, "Bad Request", "q must not contain NUL characters")
    if q is not None and search.tsquery_text(q) is None:
        return FastJSONResponse({"items": [], "next_cursor": None})  # nothing searchable in q
    sort_field = query.sort or ("relevance" if q else "created_at")
    if sort_field == "relevance" and not q:
        raise ProblemError(400, "Bad Request", "sort=relevance needs q")
    sort_order = repository.Sort(sort_field, query.order == "desc")
    filters = repository.TicketFilters(
        statuses=_no_nul(query.status_, "status"),
        status_categories=tuple(c.value for c in query.status_category),
        priorities=tuple(p.value for p in query.priority),
        categories=_no_nul(query.category, "category"),
        assignee_id=None
        if assignee in (None, "none")
        else (identity.user_id if assignee == "me" else assignee),
        unassigned=assignee == "none",
        group_id=query.group,
        requester_id=query.requester,
        tags=_no_nul(query.tag, "tag"),
        building=query.building,
        floor=query.floor,
        room=query.room,
        created_from=_utc(query.created_from, "created_from"),
        created_to=_utc(query.created_to, "created_to"),
        updated_from=_utc(query.updated_from, "updated_from"),
        updated_to=_utc(query.updated_to, "updated_to"),
        custom_fields=_custom_field_filters(request),
        overdue_at=datetime.now(UTC) if query.overdue else None,
        due_before=_utc(query.due_before, "due_before"),
        parent_id=str(query.parent_id) if query.parent_id else None,
        deleted=query.deleted,
        q=q,
    )
    after = _decode_list_cursor(query.cursor, sort_order) if query.cursor else None
    rows = await service.list_tickets(session, identity, filters, sort_order, limit=limit, after=after)
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = _encode_list_cursor(rows[-1], sort_order)
    elif (
        q
        and sort_field == "relevance"
        and after is None
        and len(rows) < limit
        and len(search.term_queries(q)) > 1
    ):
        # The full matches fit on this page: after them come tickets holding the terms only
        # across their text and comments, newest first, as many as fit (no further page).
        rows += await service.list_split_matches(
            session, identity, filters, limit=limit - len(rows), exclude_ids=[row["id"] for row in rows]
        )
    highlighter = search.Highlighter(q) if q is not None else None
    for row in rows:
        if highlighter is not None:
            row["highlight"] = highlighter.snippet(row["subject"], row["description"])
        for key in INTERNAL_KEYS:
            if key in row and key != "rank":
                del row[key]
    return FastJSONResponse({"items": rows, "next_cursor": next_cursor})

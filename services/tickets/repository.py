"""Every query of the tickets service. Hot read paths return rows (Core), not ORM entities."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any, TypeVar
from typing import cast as cast_type
from uuid import UUID

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    cast,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.base import Executable
from sqlalchemy.types import Text

from libs.common.db import driver_connection, fetch_all, fetch_many, rows_as_dicts
from libs.common.events import CloudEvent
from libs.common.outbox import outbox_row_cte, outbox_row_params
from services.tickets import search
from services.tickets.models import (
    attachments,
    categories,
    comments,
    outbox,
    sla_policies,
    statuses,
    tenant_settings,
    ticket_history,
    tickets,
)
from services.tickets.sla import repository as sla_repository

# The SLA bookkeeping a change needs but clients never see: breach marks and the pause credit.
SLA_STATE_COLUMNS = [
    tickets.c.first_response_breached_at,
    tickets.c.resolution_breached_at,
    tickets.c.sla_paused_minutes,
]
# Every column a client sees (TicketRead); internal ones (tenant_id, priority_rank, SLA state) stay in.
TICKET_COLUMNS = [
    column
    for column in tickets.c
    if column.name
    not in {
        "tenant_id",
        "priority_rank",
        "search_terms",
        "search_vector",
        *(column.name for column in SLA_STATE_COLUMNS),
    }
]
TICKET_COLUMN_NAMES = [column.name for column in TICKET_COLUMNS]


def client_view(row: dict[str, Any]) -> dict[str, Any]:
    """The row without internal columns (breach marks)."""
    return {name: row[name] for name in TICKET_COLUMN_NAMES if name in row}


# -- a new ticket's rules ---------------------------------------------------------------------

# A tenant that defined categories takes only those; one without a list takes any key.
_CATEGORY_IS_ALLOWED = or_(
    ~exists().where(categories.c.tenant_id == bindparam("tenant")),
    exists().where(categories.c.tenant_id == bindparam("tenant"), categories.c.key == bindparam("key")),
)


def _row_version(table: Table, *conditions: ColumnElement[bool]) -> ColumnElement[str | None]:
    """The version of the row of `table` that meets `conditions` (NULL if there is none): its
    `xmin`, the id of the transaction that wrote it, new on any change (a delete and re-create
    included). As text: a 32-bit id, more than our integer types hold."""
    return (
        select(cast(literal_column("xmin"), Text))
        .select_from(table)
        .where(*conditions)
        .correlate(None)
        .scalar_subquery()
    )


# A create computes its SLA deadlines (in Python) from the priority's policy and the tenant's
# calendar, which the service keeps between requests, checked against these versions.
_POLICY_VERSION = _row_version(
    sla_policies,
    sla_policies.c.tenant_id == bindparam("tenant"),
    sla_policies.c.priority == bindparam("priority"),
)
_CALENDAR_VERSION = _row_version(tenant_settings, tenant_settings.c.tenant_id == bindparam("tenant"))

# The rules of a new ticket: its policy and calendar (outer-joined: NULL columns when the tenant
# has none) and their versions; no row when the tenant does not allow the category.
_NEW_TICKET = select(literal_column("1").label("one")).subquery("new_ticket")
_NEW_TICKET_RULES = (
    select(
        *sla_repository.POLICY_COLUMNS,
        tenant_settings.c.tenant_id.label("calendar_tenant"),
        *sla_repository.CALENDAR_COLUMNS,
        _POLICY_VERSION.label("policy_version"),
        _CALENDAR_VERSION.label("calendar_version"),
    )
    .select_from(
        _NEW_TICKET.outerjoin(
            sla_policies,
            and_(
                sla_policies.c.tenant_id == bindparam("tenant"),
                sla_policies.c.priority == bindparam("priority"),
            ),
        ).outerjoin(tenant_settings, tenant_settings.c.tenant_id == sla_policies.c.tenant_id)
    )
    .where(or_(bindparam("key", type_=Text).is_(None), _CATEGORY_IS_ALLOWED))
)


@dataclass(frozen=True)
class NewTicketRules:
    """What a create needs before its INSERT, and the versions `insert_ticket` checks it by."""

    policy: dict[str, Any] | None
    calendar: dict[str, Any] | None
    policy_version: str | None
    calendar_version: str | None


async def new_ticket_rules(
    session: AsyncSession, tenant_id: str, category: str | None, priority: str
) -> NewTicketRules | None:
    """The SLA policy and calendar a new ticket of `priority` gets; None when the tenant does not
    allow `category`."""
    rows = await fetch_all(session, _NEW_TICKET_RULES, tenant=tenant_id, key=category, priority=priority)
    if not rows:
        return None
    row = rows[0]
    return NewTicketRules(
        *sla_repository.policy_and_calendar_of(row), row["policy_version"], row["calendar_version"]
    )


# -- create ------------------------------------------------------------------------------------

_INSERT_COLUMNS = [
    "id",
    "tenant_id",
    "subject",
    "description",
    "status",
    "status_category",
    "priority",
    "category",
    "type",
    "source",
    "location",
    "building",
    "floor",
    "room",
    "requester_id",
    "requester_name",
    "requester_email",
    "assignee_id",
    "group_id",
    "tags",
    "custom_fields",
    "watchers",
    "parent_id",
    "due_at",
    "first_response_due_at",
    "search_terms",
    "created_at",
    "updated_at",
]
# The ticket's row is written only if the rules it was computed from still hold: the category is
# allowed and the policy and calendar rows are the versions they were read at (else no row, and
# no number taken). The number comes from the tenant's sequence (made on its first ticket:
# migration 0016); nextval() holds no lock until the create commits, so creates of one tenant do
# not queue behind each other. A create that fails afterwards leaves a gap; numbers stay unique
# and increasing.
_RULES_HOLD = and_(
    or_(bindparam("key", type_=Text).is_(None), _CATEGORY_IS_ALLOWED),
    _POLICY_VERSION.is_not_distinct_from(bindparam("policy_version", type_=Text)),
    _CALENDAR_VERSION.is_not_distinct_from(bindparam("calendar_version", type_=Text)),
)
_INSERTED_TICKET = (
    insert(tickets)
    .from_select(
        [*_INSERT_COLUMNS, "number"],
        select(
            # Parameter names must not equal column names: SQLAlchemy would treat such keys as
            # extra column values for both INSERTs.
            *(cast(bindparam(f"ticket_{name}"), tickets.c[name].type) for name in _INSERT_COLUMNS),
            func.nextval(func.tickets.ticket_number_sequence(bindparam("tenant", type_=Text))),
        ).where(_RULES_HOLD),
    )
    .returning(*TICKET_COLUMNS)
    .cte("inserted_ticket")
)
_INSERT_TICKET_WITH_EVENT = select(*_INSERTED_TICKET.c).add_cte(
    outbox_row_cte(outbox, _INSERTED_TICKET, data_from_source=["number"])
)


async def insert_ticket(
    session: AsyncSession,
    values: dict[str, Any],
    rules: NewTicketRules,
    event_subject: str,
    event: CloudEvent,
) -> dict[str, Any] | None:
    """Insert a ticket (numbered here) together with the outbox row of its event, in one round
    trip, if `rules` still hold (else None, nothing written). A prepared driver-level statement:
    the hottest write, SQLAlchemy's execution layer was a fifth of its CPU."""
    params = {f"ticket_{name}": _driver_value(name, values.get(name)) for name in _INSERT_COLUMNS}
    params.update(outbox_row_params(event_subject, event))
    rows = await fetch_all(
        session,
        _INSERT_TICKET_WITH_EVENT,
        tenant=values["tenant_id"],
        key=values["category"],
        priority=values["priority"],
        policy_version=rules.policy_version,
        calendar_version=rules.calendar_version,
        **params,
    )
    return rows[0] if rows else None


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """Rows from SQLAlchemy results in the same shape fetch_all gives (ids as str)."""
    for key in ("id", "parent_id", "merged_into_id"):
        if row.get(key) is not None:
            row[key] = str(row[key])
    return row


# Same expression as the (tenant_id, due sort key, id) index: no deadline sorts after every deadline.
DUE_SORT_KEY = func.coalesce(
    tickets.c.due_at, literal_column("'infinity'::timestamptz", tickets.c.due_at.type)
)


# -- read --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TicketFilters:
    """List filters; each set field narrows the list (several values of one field: any of them)."""

    statuses: tuple[str, ...] = ()
    status_categories: tuple[str, ...] = ()
    priorities: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    assignee_id: str | None = None
    unassigned: bool = False
    group_id: str | None = None
    requester_id: str | None = None
    tags: tuple[str, ...] = ()  # all of them
    building: str | None = None
    floor: str | None = None
    room: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    updated_from: datetime | None = None
    updated_to: datetime | None = None
    custom_fields: dict[str, Any] | None = None
    overdue_at: datetime | None = None  # overdue=true, evaluated at this instant
    due_before: datetime | None = None
    parent_id: str | None = None
    deleted: bool = False  # True: only soft-deleted tickets (admins)
    q: str | None = None


@dataclass(frozen=True)
class Sort:
    field: str = "created_at"
    descending: bool = True


# Sort name -> the keyset columns after tenant_id (the matching index's columns), id last.
SORT_KEYS: dict[str, list[ColumnElement]] = {
    "created_at": [tickets.c.created_at, tickets.c.id],
    "updated_at": [tickets.c.updated_at, tickets.c.id],
    "priority": [tickets.c.priority_rank, tickets.c.created_at, tickets.c.id],
    "due_at": [DUE_SORT_KEY, tickets.c.id],
    "relevance": [search.rank(tickets), tickets.c.id],  # only with q
}
# Row keys holding each sort's keyset values (before id), for the next cursor.
SORT_VALUE_NAMES = {
    "created_at": ["created_at"],
    "updated_at": ["updated_at"],
    "priority": ["priority_rank", "created_at"],
    "due_at": ["due_sort"],
    "relevance": ["rank"],
}
CLOSED_CATEGORIES = ["resolved", "closed"]


def _conditions(filters: TicketFilters, own_only: bool) -> list[ColumnElement]:
    """WHERE clauses with named bind parameters; which ones appear depends only on the shape."""
    c = tickets.c
    where = [c.tenant_id == bindparam("tenant_id")]
    where.append(c.deleted_at.is_not(None) if filters.deleted else c.deleted_at.is_(None))
    if own_only:
        where.append(c.requester_id == bindparam("own_requester_id"))
    equal_any = {
        "statuses": c.status,
        "status_categories": c.status_category,
        "priorities": c.priority,
        "categories": c.category,
    }
    for name, column in equal_any.items():
        values = getattr(filters, name)
        if len(values) == 1:
            # Plain equality lets the (tenant_id, column, created_at) index return rows in order
            # and stop after a page; `= ANY(array)` is planned as a bitmap scan plus a sort.
            where.append(column == bindparam(f"f_{name}"))
        elif values:
            where.append(column == func.any(bindparam(f"f_{name}", type_=ARRAY(Text))))
    equal = {
        "assignee_id": c.assignee_id,
        "group_id": c.group_id,
        "requester_id": c.requester_id,
        "building": c.building,
        "floor": c.floor,
        "room": c.room,
    }
    for name, column in equal.items():
        if getattr(filters, name) is not None:
            where.append(column == bindparam(f"f_{name}"))
    if filters.parent_id is not None:
        where.append(c.parent_id == bindparam("f_parent_id", type_=tickets.c.parent_id.type))
    if filters.unassigned:
        where.append(c.assignee_id.is_(None))
    if filters.tags:
        where.append(c.tags.contains(bindparam("f_tags", type_=ARRAY(Text))))
    if filters.custom_fields:
        # A query string has only text: `cf.floor=3` matches a stored "3" or 3 (see _filter_params).
        where.append(
            or_(
                c.custom_fields.contains(bindparam("f_custom_fields", type_=JSONB)),
                c.custom_fields.contains(bindparam("f_custom_fields_typed", type_=JSONB)),
            )
        )
    ranges = [
        ("created_from", c.created_at, "ge"),
        ("created_to", c.created_at, "lt"),
        ("updated_from", c.updated_at, "ge"),
        ("updated_to", c.updated_at, "lt"),
    ]
    for name, column, op in ranges:
        if getattr(filters, name) is not None:
            parameter = bindparam(f"f_{name}", type_=column.type)
            where.append(column >= parameter if op == "ge" else column < parameter)
    # updated_at >= created_at always (a CHECK constraint), so each of these bounds implies one
    # on the other column: "updated a year ago" lets the created_at index start a year back
    # instead of skipping every newer ticket.
    if filters.updated_to is not None:
        where.append(c.created_at < bindparam("f_updated_to", type_=c.updated_at.type))
    if filters.created_from is not None:
        where.append(c.updated_at >= bindparam("f_created_from", type_=c.created_at.type))
    if filters.overdue_at is not None:
        # Expressed on the due-date sort key so the (tenant_id, due sort key, id) index serves it.
        where.append(bindparam("f_overdue_at", type_=c.due_at.type) > DUE_SORT_KEY)
        where.append(
            c.status_category
            != func.all(bindparam("closed_categories", CLOSED_CATEGORIES, type_=ARRAY(Text)))
        )
        where.append(c.sla_paused_at.is_(None))
    if filters.due_before is not None:
        where.append(bindparam("f_due_before", type_=c.due_at.type) > DUE_SORT_KEY)
    if filters.q is not None:
        # The hits carry the other conditions too, so the cap on hits applies after them. Beyond
        # the tenant and the deleted flag, the caller sees only some of the tenant's tickets.
        narrowed = _narrowed(where, filters)
        where.append(
            search.matches(
                tickets, ticket_conditions=list(where), public_comments_only=own_only, narrowed=narrowed
            )
        )
    return where


def _narrowed(where: list[ColumnElement], filters: TicketFilters) -> bool:
    """Whether the caller sees only part of the tenant's tickets: conditions beyond the tenant and
    the deleted flag (its own tickets, filters), or the deleted ones."""
    return len(where) > 2 or filters.deleted


def _keyset_condition(sort: Sort) -> ColumnElement:
    keys = SORT_KEYS[sort.field]
    values = tuple_(*[bindparam(f"after_{index}") for index in range(len(keys))])
    return tuple_(*keys) < values if sort.descending else tuple_(*keys) > values


def _is_set(value: Any) -> bool:
    return value not in (None, (), False, {})


def _arity(value: Any) -> int:
    if not _is_set(value):
        return 0
    return 2 if isinstance(value, tuple) and len(value) > 1 else 1


def _shape(filters: TicketFilters, sort: Sort, own_only: bool, after: bool) -> tuple:
    # Per filter: unset, set, or several values (one value is compared with `=`).
    present = tuple(_arity(getattr(filters, field.name)) for field in fields(filters))
    return present, sort, own_only, after


# Prepared statements per shape: lists and searches per filter set, updates per set of columns.
QueryT = TypeVar("QueryT", bound=Executable)
_QUERIES: OrderedDict[tuple, Executable] = OrderedDict()
_QUERY_CACHE_SIZE = 1024


def _list_query(filters: TicketFilters, sort: Sort, own_only: bool, after: bool) -> Select:
    """The prepared SELECT for this combination of filters and sort (cached per shape)."""
    return _cached_query(
        _shape(filters, sort, own_only, after), lambda: _build_list_query(filters, sort, own_only, after)
    )


def _cached_query(key: tuple, build: Callable[[], QueryT]) -> QueryT:
    query = _QUERIES.get(key)
    if query is not None:
        _QUERIES.move_to_end(key)
        return cast_type(QueryT, query)  # the key says which kind of statement it is
    query = _QUERIES[key] = build()
    if len(_QUERIES) > _QUERY_CACHE_SIZE:
        _QUERIES.popitem(last=False)
    return query


def _build_list_query(filters: TicketFilters, sort: Sort, own_only: bool, after: bool) -> Select:
    where = _conditions(filters, own_only)
    if after:
        where.append(_keyset_condition(sort))
    sort_keys = SORT_KEYS[sort.field]
    order = [key.desc() if sort.descending else key.asc() for key in sort_keys]
    extra = {
        "due_at": [DUE_SORT_KEY.label("due_sort")],
        "priority": [tickets.c.priority_rank],
        "relevance": [search.rank(tickets).label("rank")],
    }.get(sort.field, [])
    return select(*TICKET_COLUMNS, *extra).where(and_(*where)).order_by(*order).limit(bindparam("limit"))


def _json_scalar(text: str) -> Any:
    """`text` as the JSON number, boolean or null it spells (`1.5`, `true`), else the text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, (dict, list, str)) or (isinstance(value, float) and not math.isfinite(value)):
        return text
    return value


def _filter_params(filters: TicketFilters) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for field in fields(filters):
        value = getattr(filters, field.name)
        if not _is_set(value):
            continue
        if field.name in ("statuses", "status_categories", "priorities", "categories"):
            value = value[0] if len(value) == 1 else list(value)
        if field.name == "tags":
            value = list(value)
        if field.name == "custom_fields":
            # fetch_all hands parameters to asyncpg as they are: JSON text
            params["f_custom_fields_typed"] = json.dumps({k: _json_scalar(v) for k, v in value.items()})
            value = json.dumps(value)
        if field.name == "q":
            params.update(search.params(value))
            continue
        params[f"f_{field.name}"] = value
    return params


async def list_tickets(
    session: AsyncSession,
    tenant_id: str,
    filters: TicketFilters,
    sort: Sort,
    *,
    limit: int,
    after: list[Any] | None = None,
    own_requester_id: str | None = None,
) -> list[dict[str, Any]]:
    """One page in sort order, keyset-paginated; fetches limit + 1 rows to tell if there is more."""
    query = _list_query(filters, sort, own_requester_id is not None, after is not None)
    params = _filter_params(filters)
    params.update(tenant_id=tenant_id, own_requester_id=own_requester_id, limit=limit + 1)
    for index, value in enumerate(after or []):
        params[f"after_{index}"] = value
    if filters.q is not None:
        # A search's best plan depends on how common its terms are (walk the newest rows, or
        # read the matches from the GIN index). A prepared statement's generic plan cannot know,
        # and after five runs PostgreSQL would use it for every term (seconds for a rare one).
        await (await driver_connection(session)).execute(_CUSTOM_PLANS)
    return await fetch_all(session, query, **params)


_CUSTOM_PLANS = "SET LOCAL plan_cache_mode = force_custom_plan"


def _build_split_query(unsearched: TicketFilters, own_only: bool) -> Select:
    where = _conditions(unsearched, own_only)
    narrowed = _narrowed(where, unsearched)
    where.append(
        search.split_matches(
            tickets, ticket_conditions=list(where), public_comments_only=own_only, narrowed=narrowed
        )
    )
    where.append(tickets.c.id != func.all(bindparam("exclude_ids", type_=ARRAY(tickets.c.id.type))))
    return (
        select(*TICKET_COLUMNS, search.rank(tickets).label("rank"))
        .where(and_(*where))
        .order_by(tickets.c.created_at.desc(), tickets.c.id.desc())
        .limit(bindparam("limit"))
    )


async def list_split_matches(
    session: AsyncSession,
    tenant_id: str,
    filters: TicketFilters,
    *,
    limit: int,
    exclude_ids: list[str],
    own_requester_id: str | None = None,
) -> list[dict[str, Any]]:
    """Tickets matching the search only across their text and comments (`search.split_matches`),
    newest first, leaving out `exclude_ids` (the full matches already shown). For a search with
    several terms; `_CUSTOM_PLANS` is already set by the `list_tickets` before it."""
    unsearched = replace(filters, q=None)
    own_only = own_requester_id is not None
    key = ("split", _shape(unsearched, Sort(), own_only, False))
    query = _cached_query(key, lambda: _build_split_query(unsearched, own_only))
    params = _filter_params(unsearched)
    params.update(search.params(filters.q or ""), **search.split_params(filters.q or ""))
    params.update(
        tenant_id=tenant_id, own_requester_id=own_requester_id, limit=limit, exclude_ids=exclude_ids
    )
    return await fetch_all(session, query, **params)


_GET_TICKET = select(*TICKET_COLUMNS).where(
    tickets.c.tenant_id == bindparam("tenant_id"), tickets.c.id == bindparam("ticket_id")
)


async def get_ticket(session: AsyncSession, tenant_id: str, ticket_id: UUID | str) -> dict[str, Any] | None:
    rows = await fetch_all(session, _GET_TICKET, tenant_id=tenant_id, ticket_id=UUID(str(ticket_id)))
    return rows[0] if rows else None


async def lock_tickets(session: AsyncSession, tenant_id: str, ticket_ids: list[UUID]) -> list[dict[str, Any]]:
    """Rows locked for update (in id order, so concurrent bulk updates cannot deadlock).

    They include the SLA state (not shown to clients) so a change can clear breach marks and
    keep the pause credit.
    """
    query = (
        select(*TICKET_COLUMNS, *SLA_STATE_COLUMNS)
        .where(tickets.c.tenant_id == tenant_id, tickets.c.id.in_(ticket_ids))
        .order_by(tickets.c.id)
        .with_for_update()
    )
    return [_plain(row) for row in rows_as_dicts(await session.execute(query))]


def _open_tickets_of(tenant_id: str, priorities: list[str]) -> ColumnElement[bool]:
    """The tenant's open (not resolved, closed or deleted) tickets of `priorities`."""
    return and_(
        tickets.c.tenant_id == tenant_id,
        tickets.c.priority.in_(priorities),
        tickets.c.status_category.not_in(["resolved", "closed"]),
        tickets.c.deleted_at.is_(None),
    )


async def count_open_tickets(session: AsyncSession, tenant_id: str, priorities: list[str]) -> int:
    query = select(func.count()).select_from(tickets).where(_open_tickets_of(tenant_id, priorities))
    return (await session.execute(query)).scalar_one()


async def lock_open_tickets(
    session: AsyncSession,
    tenant_id: str,
    priorities: list[str],
    *,
    after_id: UUID | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Those tickets (with ids after `after_id`, at most `limit`) locked for update in id order,
    with their SLA state."""
    condition = _open_tickets_of(tenant_id, priorities)
    if after_id is not None:
        condition = and_(condition, tickets.c.id > after_id)
    query = (
        select(*TICKET_COLUMNS, *SLA_STATE_COLUMNS)
        .where(condition)
        .order_by(tickets.c.id)
        .limit(limit)
        .with_for_update()
    )
    return [_plain(row) for row in rows_as_dicts(await session.execute(query))]


async def update_ticket(
    session: AsyncSession, tenant_id: str, ticket_id: str, values: dict[str, Any]
) -> dict[str, Any]:
    """Write changed columns and bump the version (the row is already locked by the caller)."""
    return (await update_tickets(session, tenant_id, [(ticket_id, values)]))[0]


async def update_tickets(
    session: AsyncSession, tenant_id: str, writes: list[tuple[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Write each ticket's changed columns and bump its version (the rows are already locked by
    the caller); the updated rows, in the order of `writes`.

    One round trip per set of changed columns, however many tickets (one per ticket made a bulk
    update of 500 tickets take ~1.6 s).
    """
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for ticket_id, values in writes:
        params = {f"new_{name}": _driver_value(name, value) for name, value in values.items()}
        params.update(tenant=tenant_id, ticket_id=ticket_id)
        by_columns.setdefault(tuple(sorted(values)), []).append(params)
    updated: dict[str, dict[str, Any]] = {}
    for names, param_rows in by_columns.items():
        rows = await fetch_many(session, _update_statement(names), param_rows)
        updated.update((row["id"], row) for row in rows)
    return [updated[str(ticket_id)] for ticket_id, _ in writes]


_JSONB_COLUMNS = frozenset(column.name for column in tickets.c if isinstance(column.type, JSONB))


def _driver_value(name: str, value: Any) -> Any:
    """A column value as asyncpg takes it: JSONB as JSON text."""
    if name in _JSONB_COLUMNS and value is not None:
        return json.dumps(value, ensure_ascii=False)
    return value


def _update_statement(names: tuple[str, ...]) -> Update:
    """The prepared UPDATE of these columns (cached per set of columns)."""
    return _cached_query(("update", names), lambda: _build_update(names))


def _build_update(names: tuple[str, ...]) -> Update:
    return (
        update(tickets)
        .where(tickets.c.tenant_id == bindparam("tenant"), tickets.c.id == bindparam("ticket_id"))
        .values({name: bindparam(f"new_{name}", type_=tickets.c[name].type) for name in names})
        .values(version=tickets.c.version + 1)
        .returning(*TICKET_COLUMNS)
    )


_SIMILAR_QUERIES = {same: search.similar_query(tickets, same_building=same) for same in (False, True)}


async def similar_tickets(
    session: AsyncSession, tenant_id: str, ticket: dict[str, Any]
) -> list[dict[str, Any]]:
    """Open tickets that look like duplicates of `ticket` (same tenant; same building when it has one)."""
    same_building = ticket["building"] is not None
    return await fetch_all(
        session,
        _SIMILAR_QUERIES[same_building],
        tenant_id=tenant_id,
        ticket_id=UUID(ticket["id"]),
        text=f"{ticket['subject']} {ticket['description']}",
        building=ticket["building"],
        floor=ticket["floor"],
        room=ticket["room"],
    )


# -- comments and history ----------------------------------------------------------------------

COMMENT_COLUMNS = [
    comments.c.id,
    comments.c.ticket_id,
    comments.c.author_id,
    comments.c.visibility,
    comments.c.body,
    comments.c.created_at,
]


async def insert_comment(session: AsyncSession, values: dict[str, Any]) -> dict[str, Any]:
    result = await session.execute(insert(comments).values(**values).returning(*COMMENT_COLUMNS))
    row = rows_as_dicts(result)[0]
    row["id"], row["ticket_id"] = str(row["id"]), str(row["ticket_id"])
    return row


def _comments_query(public_only: bool, after: bool) -> Select:
    where = [comments.c.tenant_id == bindparam("tenant_id"), comments.c.ticket_id == bindparam("ticket_id")]
    if public_only:
        where.append(comments.c.visibility == "public")
    if after:
        where.append(
            tuple_(comments.c.created_at, comments.c.id)
            > tuple_(bindparam("after_created_at"), bindparam("after_id"))
        )
    return (
        select(*COMMENT_COLUMNS)
        .where(*where)
        .order_by(comments.c.created_at, comments.c.id)
        .limit(bindparam("limit"))
    )


_COMMENT_QUERIES = {
    (public, after): _comments_query(public, after) for public in (False, True) for after in (False, True)
}


async def list_comments(
    session: AsyncSession,
    tenant_id: str,
    ticket_id: str,
    *,
    public_only: bool,
    limit: int,
    after: tuple[datetime, UUID] | None,
) -> list[dict[str, Any]]:
    query = _COMMENT_QUERIES[(public_only, after is not None)]
    after_created_at, after_id = after or (None, None)
    return await fetch_all(
        session,
        query,
        tenant_id=tenant_id,
        ticket_id=UUID(ticket_id),
        limit=limit + 1,
        after_created_at=after_created_at,
        after_id=after_id,
    )


async def move_comments(session: AsyncSession, tenant_id: str, from_ticket: str, to_ticket: str) -> int:
    result = await session.execute(
        update(comments)
        .where(comments.c.tenant_id == tenant_id, comments.c.ticket_id == UUID(from_ticket))
        .values(ticket_id=UUID(to_ticket))
    )
    return result.rowcount


async def make_comments_internal(session: AsyncSession, tenant_id: str, ticket_id: str) -> int:
    result = await session.execute(
        update(comments)
        .where(
            comments.c.tenant_id == tenant_id,
            comments.c.ticket_id == UUID(ticket_id),
            comments.c.visibility == "public",
        )
        .values(visibility="internal")
    )
    return result.rowcount


async def move_attachments(
    session: AsyncSession, tenant_id: str, from_ticket: str, to_ticket: str, *, only_on_comments: bool = False
) -> int:
    """Attachments follow their ticket; `only_on_comments` leaves those not on a comment behind."""
    where = [attachments.c.tenant_id == tenant_id, attachments.c.ticket_id == UUID(from_ticket)]
    if only_on_comments:
        where.append(attachments.c.comment_id.is_not(None))
    result = await session.execute(update(attachments).where(*where).values(ticket_id=UUID(to_ticket)))
    return result.rowcount


async def merged_into(session: AsyncSession, tenant_id: str, ticket_id: str) -> list[int]:
    """Numbers of the tickets (not deleted) that were merged into this one."""
    query = (
        select(tickets.c.number)
        .where(
            tickets.c.tenant_id == tenant_id,
            tickets.c.merged_into_id == UUID(ticket_id),
            tickets.c.deleted_at.is_(None),
        )
        .order_by(tickets.c.number)
    )
    return list((await session.execute(query)).scalars())


async def insert_history(session: AsyncSession, entries: list[dict[str, Any]]) -> None:
    if entries:
        await session.execute(insert(ticket_history), entries)


HISTORY_COLUMNS = [
    ticket_history.c[name]
    for name in ("id", "ticket_id", "actor_id", "field", "old_value", "new_value", "created_at")
]


async def list_history(
    session: AsyncSession, tenant_id: str, ticket_id: str, *, limit: int, after: tuple[datetime, UUID] | None
) -> list[dict[str, Any]]:
    query = select(*HISTORY_COLUMNS).where(
        ticket_history.c.tenant_id == tenant_id, ticket_history.c.ticket_id == UUID(ticket_id)
    )
    if after is not None:
        query = query.where(tuple_(ticket_history.c.created_at, ticket_history.c.id) > tuple_(*after))
    query = query.order_by(ticket_history.c.created_at, ticket_history.c.id).limit(limit + 1)
    rows = rows_as_dicts(await session.execute(query))
    for row in rows:
        row["id"], row["ticket_id"] = str(row["id"]), str(row["ticket_id"])
    return rows


# -- workflow settings -------------------------------------------------------------------------


async def list_statuses(session: AsyncSession, tenant_id: str) -> list[dict[str, Any]]:
    query = select(statuses.c.key, statuses.c.name, statuses.c.category, statuses.c.position).where(
        statuses.c.tenant_id == tenant_id
    )
    return rows_as_dicts(await session.execute(query))


async def insert_status(session: AsyncSession, tenant_id: str, values: dict[str, Any]) -> bool:
    result = await session.execute(
        pg_insert(statuses)
        .values(tenant_id=tenant_id, **values)
        .on_conflict_do_nothing()
        .returning(statuses.c.key)
    )
    return result.first() is not None


async def _update_setting(
    session: AsyncSession, table: Table, tenant_id: str, key: str, values: dict[str, Any]
) -> bool:
    """Change a status or category row; False when the tenant has none with `key`."""
    result = await session.execute(
        table.update()
        .where(table.c.tenant_id == tenant_id, table.c.key == key)
        .values(**values)
        .returning(table.c.key)
    )
    return result.first() is not None


async def update_status(session: AsyncSession, tenant_id: str, key: str, values: dict[str, Any]) -> bool:
    return await _update_setting(session, statuses, tenant_id, key, values)


async def name_builtin_status(session: AsyncSession, tenant_id: str, values: dict[str, Any]) -> None:
    """The tenant's name for a built-in status: a row of its own, made on first use."""
    statement = pg_insert(statuses).values(tenant_id=tenant_id, **values)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[statuses.c.tenant_id, statuses.c.key], set_={"name": statement.excluded.name}
        )
    )


async def lock_status(session: AsyncSession, tenant_id: str, key: str, *, for_removal: bool = False) -> bool:
    """Lock a tenant status until commit; False when there is none (a removal committed first).

    A ticket moving into the status holds it FOR KEY SHARE (renames still pass); its removal
    locks it FOR UPDATE before checking that no ticket uses it, so it waits for those moves.
    """
    query = (
        select(statuses.c.key)
        .where(statuses.c.tenant_id == tenant_id, statuses.c.key == key)
        .with_for_update(key_share=not for_removal)
    )
    return (await session.execute(query)).first() is not None


async def delete_status(session: AsyncSession, tenant_id: str, key: str) -> bool:
    result = await session.execute(
        statuses.delete().where(statuses.c.tenant_id == tenant_id, statuses.c.key == key)
    )
    return result.rowcount > 0


async def serialize_parent_changes(session: AsyncSession, tenant_id: str) -> None:
    """A transaction lock per tenant for changes of parent links (released at commit)."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended('tickets.parent_links:' || :tenant, 0))"),
        {"tenant": tenant_id},
    )


async def status_in_use(session: AsyncSession, tenant_id: str, key: str) -> bool:
    query = select(tickets.c.id).where(tickets.c.tenant_id == tenant_id, tickets.c.status == key).limit(1)
    return (await session.execute(query)).first() is not None


_CATEGORY_ALLOWED = select(_CATEGORY_IS_ALLOWED.label("allowed"))


async def category_allowed(session: AsyncSession, tenant_id: str, key: str) -> bool:
    """One prepared statement (every create asks; listing the categories cost a tenth of one)."""
    return (await fetch_all(session, _CATEGORY_ALLOWED, tenant=tenant_id, key=key))[0]["allowed"]


async def list_categories(session: AsyncSession, tenant_id: str) -> list[dict[str, Any]]:
    query = (
        select(categories.c.key, categories.c.name)
        .where(categories.c.tenant_id == tenant_id)
        .order_by(categories.c.key)
    )
    return rows_as_dicts(await session.execute(query))


async def insert_category(session: AsyncSession, tenant_id: str, values: dict[str, Any]) -> bool:
    result = await session.execute(
        pg_insert(categories)
        .values(tenant_id=tenant_id, **values)
        .on_conflict_do_nothing()
        .returning(categories.c.key)
    )
    return result.first() is not None


async def update_category(session: AsyncSession, tenant_id: str, key: str, values: dict[str, Any]) -> bool:
    return await _update_setting(session, categories, tenant_id, key, values)


async def delete_category(session: AsyncSession, tenant_id: str, key: str) -> bool:
    result = await session.execute(
        categories.delete().where(categories.c.tenant_id == tenant_id, categories.c.key == key)
    )
    return result.rowcount > 0

"""Bulk seeder for the tickets schema: realistic Korean and English facility/IT tickets at scale.

`seed()` writes N tickets and (by default) 2·N comments over a set of tenants, as the admin
(superuser, so row-level security does not apply), the fast way: the non-primary-key indexes of
`tickets.tickets` and `tickets.comments` are dropped, the rows are generated in Python and
streamed with binary COPY, then the indexes are rebuilt from their saved definitions (two
connections at once, large `maintenance_work_mem`) and both tables are vacuumed and analyzed.
The index definitions are read from the catalog, so whatever the migrations created comes back.

Rows are generated in global `created_at` order over ~3 years (more tickets recently), tenants
interleaved, so the heap is in time order and ticket numbers grow with `created_at` per tenant,
as in a real deployment. Deterministic for a given `rng_seed` (ids include the seed's draws).

`python -m bench.seed_tickets DATABASE_URL --tickets N` seeds an existing, migrated database.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import math
import random
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.tickets.search import search_terms_of

SCHEMA = "tickets"
DEFAULT_TENANT_COUNT = 10
YEARS = 3
COPY_CHUNK = 5_000
# Both tables are written by COPY, rebuilt, vacuumed: generous memory for the index builds.
MAINTENANCE_WORK_MEM = "1GB"

# -- vocabulary -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issue:
    """One kind of problem: its category and type, subjects and details in both languages, tags."""

    category: str
    type: str
    ko: tuple[str, ...]
    en: tuple[str, ...]
    ko_detail: tuple[str, ...]
    en_detail: tuple[str, ...]
    tags: tuple[str, ...]
    weight: int


ISSUES: tuple[Issue, ...] = (
    Issue(
        "elevator",
        "incident",
        (
            "엘리베이터가 {floor}층에서 멈췄습니다",
            "엘리베이터 문이 닫히지 않습니다",
            "엘리베이터 소음이 심합니다",
            "화물용 엘리베이터 고장",
        ),
        (
            "Elevator stuck on floor {floor}",
            "Elevator door does not close",
            "Elevator making grinding noise",
            "Freight elevator out of service",
        ),
        (
            "엘리베이터 안에 사람이 갇혀 있다는 신고가 있었습니다.",
            "버튼을 눌러도 반응이 없습니다.",
            "운행 중 덜컹거리는 소리가 납니다.",
        ),
        (
            "Someone reported being trapped inside the car.",
            "The call buttons do not respond.",
            "The car jerks when it stops at a floor.",
        ),
        ("elevator", "safety", "vendor"),
        9,
    ),
    Issue(
        "plumbing",
        "incident",
        ("{room}호 천장 누수", "화장실 누수 발생", "배수구가 막혔습니다", "정수기 물이 새요"),
        (
            "Water leak from ceiling in room {room}",
            "Leaking pipe in the restroom",
            "Clogged drain",
            "Water dispenser is leaking",
        ),
        (
            "천장 타일에 물 자국이 번지고 있습니다.",
            "바닥에 물이 고여 미끄럽습니다.",
            "누수로 인해 전기 설비가 걱정됩니다.",
        ),
        (
            "A water stain is spreading across the ceiling tiles.",
            "There is standing water on the floor.",
            "The leak is close to electrical equipment.",
        ),
        ("leak", "water", "urgent-fix"),
        9,
    ),
    Issue(
        "hvac",
        "incident",
        (
            "에어컨이 작동하지 않습니다",
            "난방이 너무 약합니다",
            "환기구 소음",
            "{floor}층 사무실이 너무 덥습니다",
        ),
        ("HVAC not cooling", "Heating is too weak", "Noisy air vent", "Office on floor {floor} is too hot"),
        (
            "실내 온도가 30도 가까이 올라갔습니다.",
            "송풍은 되는데 찬바람이 나오지 않습니다.",
            "아침마다 너무 춥습니다.",
        ),
        (
            "The room temperature is close to 30 degrees.",
            "Air blows but it is not cold.",
            "It is freezing every morning.",
        ),
        ("hvac", "comfort"),
        10,
    ),
    Issue(
        "electrical",
        "incident",
        ("조명이 깜빡입니다", "전등이 나갔습니다", "콘센트에 전원이 들어오지 않습니다", "비상등 점검 요청"),
        ("Lights flickering", "Light bulb out", "No power at the outlet", "Emergency light check"),
        ("복도 전체 조명이 깜빡거립니다.", "형광등 교체가 필요합니다.", "차단기가 자꾸 내려갑니다."),
        (
            "The whole corridor flickers.",
            "The fluorescent tube needs replacing.",
            "The breaker keeps tripping.",
        ),
        ("lights", "electrical"),
        8,
    ),
    Issue(
        "access",
        "request",
        (
            "출입카드가 인식되지 않습니다",
            "출입 카드 재발급 요청",
            "방문자 출입 등록",
            "주차장 출입 카드 문제",
        ),
        (
            "Access card not working",
            "Replacement access card",
            "Register a visitor",
            "Badge reader broken at entrance",
        ),
        ("게이트에서 빨간 불이 켜집니다.", "카드를 분실했습니다.", "다음 주 방문 예정인 고객입니다."),
        ("The gate shows a red light.", "I lost my card.", "The visitor arrives next week."),
        ("access-card", "security"),
        7,
    ),
    Issue(
        "it",
        "incident",
        (
            "프린터 용지 걸림",
            "프린터 토너 교체 요청",
            "와이파이 연결이 안 됩니다",
            "모니터가 켜지지 않습니다",
            "VPN 접속 오류",
        ),
        (
            "Printer jam on floor {floor}",
            "Printer out of toner",
            "Cannot connect to Wi-Fi",
            "Monitor does not turn on",
            "VPN disconnects every hour",
        ),
        (
            "회의 전에 급하게 출력해야 합니다.",
            "다른 사람들도 같은 문제를 겪고 있습니다.",
            "재부팅해도 해결되지 않습니다.",
        ),
        (
            "I need to print before the meeting.",
            "Others on the floor have the same problem.",
            "Restarting did not help.",
        ),
        ("printer", "network", "it"),
        10,
    ),
    Issue(
        "cleaning",
        "request",
        ("회의실 청소 요청", "로비에 음료가 쏟아졌습니다", "쓰레기통이 넘칩니다"),
        ("Meeting room needs cleaning", "Spill in the lobby", "Trash bins overflowing"),
        ("오후 2시 회의 전에 부탁드립니다.", "냄새가 심합니다."),
        ("Please before the 2 pm meeting.", "It smells bad."),
        ("cleaning",),
        5,
    ),
    Issue(
        "security",
        "incident",
        ("CCTV가 작동하지 않습니다", "비상구 문이 잠기지 않습니다", "화재 경보 오작동"),
        ("CCTV camera offline", "Emergency exit door does not lock", "Fire alarm false trigger"),
        ("야간 경비 보고서에 기록되었습니다.", "보안 점검이 필요합니다."),
        ("It was noted in the night guard's report.", "A security inspection is needed."),
        ("security", "safety"),
        4,
    ),
    Issue(
        "parking",
        "incident",
        ("주차 차단기가 올라가지 않습니다", "주차 등록 요청", "지하주차장 조명 고장"),
        ("Parking gate stuck", "Register my car for parking", "Garage lights out"),
        ("출근 시간에 차량이 밀리고 있습니다.", "차량 번호를 등록해 주세요."),
        ("Cars are queuing at rush hour.", "Please register my plate number."),
        ("parking",),
        4,
    ),
    Issue(
        "furniture",
        "request",
        ("의자가 파손되었습니다", "책상 높이 조절 요청", "회의실 테이블 교체"),
        ("Broken office chair", "Adjust desk height", "Replace meeting room table"),
        ("바퀴가 빠졌습니다.", "새로 입사한 직원용입니다."),
        ("A wheel came off.", "It is for a new hire."),
        ("furniture",),
        3,
    ),
)
ISSUE_CUM_WEIGHTS = list(itertools.accumulate(issue.weight for issue in ISSUES))
CATEGORY_NAMES = {
    "elevator": "엘리베이터",
    "plumbing": "배관/누수",
    "hvac": "냉난방",
    "electrical": "전기/조명",
    "access": "출입 관리",
    "it": "IT",
    "cleaning": "청소",
    "security": "보안",
    "parking": "주차",
    "furniture": "가구",
}
KO_OPENINGS = ("안녕하세요.", "급합니다.", "확인 부탁드립니다.", "")
KO_CLOSINGS = ("빠른 조치 부탁드립니다.", "감사합니다.", "오늘 중으로 확인해 주세요.")
EN_OPENINGS = ("Hi team,", "Urgent:", "Hello,", "")
EN_CLOSINGS = ("Please fix it soon.", "Thanks.", "Could someone look at it today?")
EXTRA_TAGS = (
    "vip",
    "recurring",
    "after-hours",
    "tenant-request",
    "inspection",
    "warranty",
    "빠른처리",
    "재발",
)
BUILDINGS = ("본관", "별관", "A동", "B동", "Tower 1", "Tower 2", "Annex", "R&D Center")
FLOORS = ("B2", "B1", *(str(n) for n in range(1, 21)))
VENDORS = ("오티스", "현대엘리베이터", "Carrier", "삼성전자서비스", "KT", "Schindler")
IMPACTS = ("single_user", "team", "floor", "building")

# (status, category) with weights for tickets still being worked on, and for finished ones.
ACTIVE_STATUSES = (
    (("open", "open"), 40),
    (("in_progress", "in_progress"), 25),
    (("pending", "pending"), 15),
    (("waiting_on_vendor", "pending"), 10),
    (("scheduled", "in_progress"), 10),
)
DONE_STATUSES = ((("resolved", "resolved"), 25), (("closed", "closed"), 75))
CUSTOM_STATUSES = (
    ("waiting_on_vendor", "Waiting on vendor", "pending", 10),
    ("scheduled", "Scheduled visit", "in_progress", 11),
)
PRIORITIES = ("low", "medium", "high", "urgent")
PRIORITY_CUM = (25, 70, 92, 100)
# Resolution deadline per priority, hours after creation (the seeded SLA policy).
DUE_HOURS = {"low": 24 * 7, "medium": 72, "high": 24, "urgent": 4}
SOURCES = ("portal", "email", "phone", "chat", "api")
SOURCE_CUM = (45, 75, 88, 97, 100)
TYPES_OVERRIDE = ("question", "problem")  # some tickets are neither incidents nor requests

TICKET_COLUMNS = (
    "id", "tenant_id", "number", "subject", "description", "status", "status_category", "priority",
    "category", "type", "source", "location", "building", "floor", "room", "requester_id", "requester_name",
    "requester_email", "assignee_id", "group_id", "tags", "custom_fields", "watchers", "due_at",
    "first_response_due_at", "first_responded_at", "resolved_at", "closed_at", "parent_id", "deleted_at",
    "created_at", "updated_at", "version", "search_terms", "first_response_breached_at",
    "resolution_breached_at",
)  # fmt: skip
COMMENT_COLUMNS = (
    "id",
    "tenant_id",
    "ticket_id",
    "author_id",
    "visibility",
    "body",
    "created_at",
    "search_terms",
)
KO_COMMENTS = (
    "확인했습니다. 담당 기사님을 배정하겠습니다.",
    "현장 점검 결과 부품 교체가 필요합니다.",
    "오늘 오후에 방문 예정입니다.",
    "아직도 같은 문제가 발생합니다.",
    "조치 완료되었습니다. 확인 부탁드립니다.",
    "해결되었습니다. 감사합니다!",
    "누수 부위를 임시로 막아 두었습니다.",
    "엘리베이터 업체에 연락했습니다.",
)
EN_COMMENTS = (
    "Thanks, a technician has been assigned.",
    "On-site check done: a part needs replacing.",
    "We will visit this afternoon.",
    "Still happening this morning.",
    "Fixed, please confirm.",
    "All good now, thank you!",
    "Parts ordered from the vendor, ETA two days.",
    "Could you send a photo of the problem?",
)
INTERNAL_COMMENTS = (
    "업체 견적 요청함 (vendor quote requested)",
    "Vendor ticket opened, waiting for their engineer.",
    "재발 건: 지난달에도 같은 위치에서 접수됨",
    "Escalated to the facilities manager.",
    "Budget approval needed before the repair.",
)
# Comment bodies repeat, so their search bigrams are computed once.
search_terms_of_comment = {
    body: search_terms_of(body) for body in (*KO_COMMENTS, *EN_COMMENTS, *INTERNAL_COMMENTS)
}


# -- people and places per tenant ----------------------------------------------------------------


@dataclass
class TenantPeople:
    tenant: str
    index: int
    agents: list[str]
    groups: list[str]
    requesters: list[tuple[str, str, str]]  # (id, name, email)
    next_number: int = 1


KO_SURNAMES = "김이박최정강조윤장임한오서신권황안송류홍"
KO_GIVEN = ("민준", "서연", "지호", "하은", "도윤", "지우", "예준", "수아", "시우", "지민", "현우", "서윤")
EN_FIRST = ("Alex", "Sam", "Jordan", "Taylor", "Morgan", "Chris", "Jamie", "Casey", "Robin", "Dana")
EN_LAST = ("Kim", "Lee", "Park", "Smith", "Brown", "Garcia", "Nguyen", "Jones", "Miller", "Chen")
GROUPS = (
    "facilities",
    "it-support",
    "security",
    "cleaning",
    "elevator-vendor",
    "hvac-team",
    "front-desk",
    "parking",
)
CATEGORY_GROUP = {
    "elevator": "elevator-vendor",
    "plumbing": "facilities",
    "hvac": "hvac-team",
    "electrical": "facilities",
    "access": "security",
    "it": "it-support",
    "cleaning": "cleaning",
    "security": "security",
    "parking": "parking",
    "furniture": "facilities",
}


def tenant_people(tenant: str, index: int, requesters: int, agents: int, rng: random.Random) -> TenantPeople:
    """Users of one tenant: ids are stable strings (`req-<tenant>-<n>`, `agent-<tenant>-<n>`)."""
    people = []
    for n in range(requesters):
        if rng.random() < 0.7:
            name = rng.choice(KO_SURNAMES) + rng.choice(KO_GIVEN)
        else:
            name = f"{rng.choice(EN_FIRST)} {rng.choice(EN_LAST)}"
        people.append((f"req-{tenant}-{n}", name, f"user{n}@{tenant}.example"))
    return TenantPeople(
        tenant=tenant,
        index=index,
        agents=[f"agent-{tenant}-{n}" for n in range(agents)],
        groups=list(GROUPS),
        requesters=people,
    )


def default_tenants(count: int = DEFAULT_TENANT_COUNT, prefix: str = "scale") -> list[str]:
    return [f"{prefix}-{n:02d}" for n in range(count)]


# -- row generation ---------------------------------------------------------------------------------


def uuid7_hex(ms: int, rng: random.Random) -> str:
    """A UUIDv7 (time-ordered, as the service's `new_id()` makes) as 32 hex digits."""
    value = (ms << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64) | (0b10 << 62) | rng.getrandbits(62)
    return f"{value:032x}"


def created_times(count: int, start: float, end: float, rng: random.Random) -> list[float]:
    """`count` epoch seconds in [start, end), sorted; density grows linearly (business grows)."""
    span = end - start
    # Inverse CDF of the density 1 + 2x on [0, 1]: more tickets in recent months.
    times = [start + span * ((-1 + math.sqrt(1 + 8 * rng.random())) / 2) for _ in range(count)]
    times.sort()
    return times


@dataclass
class TicketIndex:
    """What comment generation needs to know about each ticket (in generation order)."""

    ids: list[str] = field(default_factory=list)
    tenants: list[int] = field(default_factory=list)
    created: list[float] = field(default_factory=list)
    updated: list[float] = field(default_factory=list)
    requesters: list[str] = field(default_factory=list)
    assignees: list[str | None] = field(default_factory=list)


def _weighted(options: Sequence[tuple[Any, int]], draw: float) -> Any:
    """The option a uniform `draw` in [0, 1) lands on, by weight."""
    draw *= sum(weight for _, weight in options)
    for option, weight in options:
        draw -= weight
        if draw < 0:
            return option
    return options[-1][0]


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def generate_tickets(
    count: int, people: Sequence[TenantPeople], now: float, rng: random.Random, index: TicketIndex
) -> Iterator[tuple]:
    """Ticket records in COPY column order (TICKET_COLUMNS); fills `index` as it goes."""
    start = now - YEARS * 365 * 86400
    random_ = rng.random
    choice = rng.choice
    randrange = rng.randrange
    recent_parents: list[list[str]] = [[] for _ in people]
    for created in created_times(count, start, now, rng):
        tenant_index = randrange(len(people))
        tenant = people[tenant_index]
        number = tenant.next_number
        tenant.next_number += 1
        ticket_id = uuid7_hex(int(created * 1000), rng)
        issue = ISSUES[bisect.bisect_left(ISSUE_CUM_WEIGHTS, random_() * ISSUE_CUM_WEIGHTS[-1] + 1e-9)]
        building = choice(BUILDINGS)
        floor = choice(FLOORS)
        room = f"{floor.lstrip('B')}{randrange(1, 30):02d}"
        korean = random_() < 0.6
        if korean:
            subject = choice(issue.ko).format(floor=floor, room=room)
            description = (
                f"{choice(KO_OPENINGS)} {building} {floor}층 {room}호입니다. {choice(issue.ko_detail)} "
                f"{choice(KO_CLOSINGS)}"
            ).strip()
            location = f"{building} {floor}층 {room}호"
        else:
            subject = choice(issue.en).format(floor=floor, room=room)
            description = (
                f"{choice(EN_OPENINGS)} {building}, floor {floor}, room {room}. {choice(issue.en_detail)} "
                f"{choice(EN_CLOSINGS)}"
            ).strip()
            location = f"{building}, floor {floor}, room {room}"
        pri_draw = random_() * 100
        priority = PRIORITIES[bisect.bisect_right(PRIORITY_CUM, pri_draw)]
        source = SOURCES[bisect.bisect_right(SOURCE_CUM, random_() * 100)]
        ticket_type = issue.type if random_() < 0.9 else choice(TYPES_OVERRIDE)
        age_days = (now - created) / 86400
        # Old tickets are mostly finished; the last weeks hold the open work.
        done_probability = 0.97 if age_days > 60 else (0.75 if age_days > 14 else 0.35)
        statuses = DONE_STATUSES if random_() < done_probability else ACTIVE_STATUSES
        status, status_category = _weighted(statuses, random_())
        requester_id, requester_name, requester_email = choice(tenant.requesters)
        assigned = status_category != "open" or random_() < 0.5
        assignee = choice(tenant.agents) if assigned else None
        group = CATEGORY_GROUP[issue.category] if random_() < 0.85 else choice(tenant.groups)
        tags = [tag for tag in issue.tags if random_() < 0.6]
        if random_() < 0.2:
            tags.append(choice(EXTRA_TAGS))
        custom: dict[str, Any] = {}
        if random_() < 0.5:
            custom["asset_tag"] = f"{issue.category[:2].upper()}-{randrange(1, 500):04d}"
        if random_() < 0.3:
            custom["vendor"] = choice(VENDORS)
        if random_() < 0.4:
            custom["impact"] = choice(IMPACTS)
        if random_() < 0.2:
            custom["cost_center"] = f"CC-{randrange(100, 140)}"
        watchers = [choice(tenant.agents)] if random_() < 0.1 else []
        first_response_due = created + 3600 * (1 if priority in ("high", "urgent") else 8)
        due = created + 3600 * DUE_HOURS[priority] if random_() < 0.7 else None
        responded = created + random_() * 4 * 3600 if status_category != "open" else None
        finished = status_category in ("resolved", "closed")
        resolved_at = created + random_() * min(now - created, 20 * 86400) if finished else None
        closed_at = None
        if status_category == "closed":
            closed_at = min(now, resolved_at + 3 * 86400)
        updated = max(filter(None, (created, responded, resolved_at, closed_at)))
        if not finished:
            updated = min(now, created + random_() * min(now - created, 5 * 86400))
        parent_id = None
        parents = recent_parents[tenant_index]
        if parents and random_() < 0.02:
            parent_id = choice(parents)
        if len(parents) < 50:
            parents.append(ticket_id)
        elif random_() < 0.01:
            parents[randrange(50)] = ticket_id
        deleted_at = _dt(updated + 60) if random_() < 0.005 else None

        index.ids.append(ticket_id)
        index.tenants.append(tenant_index)
        index.created.append(created)
        index.updated.append(updated)
        index.requesters.append(requester_id)
        index.assignees.append(assignee)
        yield (
            ticket_id, tenant.tenant, number, subject, description, status, status_category, priority,
            issue.category, ticket_type, source, location, building, floor, room, requester_id,
            requester_name,
            requester_email, assignee, group, tags, json.dumps(custom, ensure_ascii=False), watchers,
            _dt(due) if due else None, _dt(first_response_due), _dt(responded) if responded else None,
            _dt(resolved_at) if resolved_at else None, _dt(closed_at) if closed_at else None, parent_id,
            deleted_at, _dt(created), _dt(updated), 1 + (status_category != "open") + finished,
            search_terms_of(f"{subject} {description}"),
            # History arrives with its breaches already announced (as an import would), so the
            # SLA scheduler does not replay years of them while the benchmark runs.
            _dt(first_response_due) if now > first_response_due < (responded or now) else None,
            _dt(due) if due and now > due < (resolved_at or now) else None,
        )  # fmt: skip


def generate_comments(
    count: int, people: Sequence[TenantPeople], now: float, rng: random.Random, index: TicketIndex
) -> Iterator[tuple]:
    """`count` comments over the indexed tickets (Poisson-like, average count/tickets each)."""
    total = len(index.ids)
    if not total:
        return
    random_ = rng.random
    choice = rng.choice
    positions = sorted(rng.randrange(total) for _ in range(count))
    for position in positions:
        created = index.created[position]
        # Between the ticket's creation and its last update (a few days at most for open ones).
        span = max(60.0, index.updated[position] - created)
        at = min(now, created + 60 + random_() * span)
        tenant = people[index.tenants[position]]
        internal = random_() < 0.3
        if internal:
            author = index.assignees[position] or choice(tenant.agents)
            body = choice(INTERNAL_COMMENTS)
        else:
            korean = random_() < 0.6
            body = choice(KO_COMMENTS if korean else EN_COMMENTS)
            if random_() < 0.4:
                author = index.requesters[position]
            else:
                author = index.assignees[position] or choice(tenant.agents)
        yield (
            uuid7_hex(int(at * 1000), rng),
            tenant.tenant,
            index.ids[position],
            author,
            "internal" if internal else "public",
            body,
            _dt(at),
            search_terms_of_comment[body],
        )


async def _chunks(records: Iterator[tuple], size: int = COPY_CHUNK) -> AsyncIterator[tuple]:
    """Async iteration for COPY that yields to the event loop between chunks."""
    while True:
        chunk = list(itertools.islice(records, size))
        if not chunk:
            return
        for record in chunk:
            yield record
        await asyncio.sleep(0)


# -- indexes ----------------------------------------------------------------------------------------

_INDEXES = """
SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition,
       pg_relation_size(i.indexrelid) AS size, am.amname AS method
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_am am ON am.oid = c.relam
WHERE i.indrelid = $1::regclass AND NOT i.indisprimary
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
"""


async def secondary_indexes(conn: asyncpg.Connection, table: str) -> list[tuple[str, str, str]]:
    """(name, CREATE INDEX statement, access method) of `table`'s indexes that back no constraint."""
    rows = await conn.fetch(_INDEXES, table)
    return [(row["name"], row["definition"], row["method"]) for row in rows]


def _build_cost(table: str, method: str, definition: str) -> int:
    """Rough order for rebuilding: slow ones (trigram GIN on the big table) first."""
    weight = {"gin": 10}.get(method, 1) * (2 if "comments" in table else 1)
    return weight * (3 if "trgm" in definition else 1)


async def rebuild_indexes(
    admin_url: str, definitions: list[tuple[str, str, str, str]], connections: int = 2, log: Callable = print
) -> None:
    """Run the CREATE INDEX statements on `connections` connections at once, slowest first."""
    queue: asyncio.Queue[tuple[str, str, str, str]] = asyncio.Queue()
    for item in sorted(definitions, key=lambda d: -_build_cost(d[0], d[2], d[3])):
        queue.put_nowait(item)

    async def builder() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f"SET maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'")
            # One builder per core: parallel workers inside a build would only oversubscribe.
            await conn.execute("SET max_parallel_maintenance_workers = 0")
            while not queue.empty():
                table, name, _method, definition = queue.get_nowait()
                started = time.perf_counter()
                await conn.execute(definition)
                log(f"  index {name} on {table}: {time.perf_counter() - started:.1f} s")
        finally:
            await conn.close()

    await asyncio.gather(*(builder() for _ in range(max(1, connections))))


# -- seeding ----------------------------------------------------------------------------------------


@dataclass
class SeedResult:
    tickets: int
    comments: int
    tenants: list[str]
    seconds: float
    phases: dict[str, float]
    numbers: dict[str, int]  # tenant -> last ticket number


async def _prepare_tenants(conn: asyncpg.Connection, tenants: Sequence[str]) -> dict[str, int]:
    """Custom statuses, categories and SLA policies per tenant; returns each tenant's last number."""
    for tenant in tenants:
        await conn.executemany(
            f"INSERT INTO {SCHEMA}.statuses (tenant_id, key, name, category, position)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            [(tenant, *status) for status in CUSTOM_STATUSES],
        )
        await conn.executemany(
            f"INSERT INTO {SCHEMA}.categories (tenant_id, key, name) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            [(tenant, key, name) for key, name in CATEGORY_NAMES.items()],
        )
        await conn.executemany(
            f"INSERT INTO {SCHEMA}.sla_policies"
            " (tenant_id, priority, first_response_minutes, resolution_minutes)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            [
                (tenant, priority, 60 if priority in ("high", "urgent") else 480, hours * 60)
                for priority, hours in DUE_HOURS.items()
            ],
        )
    # Each tenant's number sequence (made here if it has none yet) and the last number it gave.
    rows = await conn.fetch(
        f"SELECT tenant, pg_sequence_last_value({SCHEMA}.ticket_number_sequence(tenant)) AS last_number"
        " FROM unnest($1::text[]) AS tenant",
        list(tenants),
    )
    return {row["tenant"]: row["last_number"] or 0 for row in rows}


async def seed(
    admin_url: str,
    *,
    tickets: int,
    comments: int | None = None,
    tenants: Sequence[str] | None = None,
    requesters_per_tenant: int = 5_000,
    agents_per_tenant: int = 40,
    rng_seed: int = 20261122,
    rebuild: bool = True,
    now: datetime | None = None,
    log: Callable[[str], None] = print,
) -> SeedResult:
    """Seed `tickets` tickets and `comments` (default 2·tickets) comments; see the module docstring.

    `admin_url` must be a superuser (row-level security is bypassed, indexes are dropped).
    With `rebuild=False` the rows go in with the indexes in place (for small additions).
    Tenants that already have tickets continue their numbering.
    """
    started = time.perf_counter()
    phases: dict[str, float] = {}
    tenants = list(tenants or default_tenants())
    comments = 2 * tickets if comments is None else comments
    now_ts = (now or datetime.now(UTC)).timestamp()
    rng = random.Random(rng_seed)
    dsn = admin_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        last_numbers = await _prepare_tenants(conn, tenants)
        people = [
            tenant_people(tenant, n, requesters_per_tenant, agents_per_tenant, rng)
            for n, tenant in enumerate(tenants)
        ]
        for person in people:
            person.next_number = last_numbers.get(person.tenant, 0) + 1

        dropped: list[tuple[str, str, str, str]] = []
        if rebuild:
            for table in (f"{SCHEMA}.tickets", f"{SCHEMA}.comments"):
                for name, definition, method in await secondary_indexes(conn, table):
                    dropped.append((table, name, method, definition))
            for _table, name, _method, _definition in dropped:
                await conn.execute(f"DROP INDEX {name}")
        mark = time.perf_counter()

        index = TicketIndex()
        await conn.copy_records_to_table(
            "tickets",
            schema_name=SCHEMA,
            columns=list(TICKET_COLUMNS),
            records=_chunks(generate_tickets(tickets, people, now_ts, rng, index)),
        )
        phases["copy_tickets_s"] = round(time.perf_counter() - mark, 1)
        log(f"  copied {tickets} tickets in {phases['copy_tickets_s']} s")
        mark = time.perf_counter()
        await conn.copy_records_to_table(
            "comments",
            schema_name=SCHEMA,
            columns=list(COMMENT_COLUMNS),
            records=_chunks(generate_comments(comments, people, now_ts, rng, index)),
        )
        phases["copy_comments_s"] = round(time.perf_counter() - mark, 1)
        log(f"  copied {comments} comments in {phases['copy_comments_s']} s")

        numbers = {person.tenant: person.next_number - 1 for person in people if person.next_number > 1}
        await conn.executemany(
            f"SELECT setval({SCHEMA}.ticket_number_sequence($1), $2)", list(numbers.items())
        )
        await conn.executemany(
            f"INSERT INTO {SCHEMA}.tenants (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING",
            [(tenant,) for tenant in numbers],
        )
    finally:
        await conn.close()
    del index  # the per-ticket lists are large at full scale

    if dropped:
        mark = time.perf_counter()
        await rebuild_indexes(dsn, dropped, log=log)
        phases["indexes_s"] = round(time.perf_counter() - mark, 1)
        log(f"  rebuilt {len(dropped)} indexes in {phases['indexes_s']} s")
    mark = time.perf_counter()

    async def vacuum(table: str) -> None:
        # Sets hint bits and the visibility map now, so the benchmark's first reads do not.
        vacuum_conn = await asyncpg.connect(dsn)
        try:
            await vacuum_conn.execute(f"SET maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'")
            await vacuum_conn.execute(f"VACUUM (ANALYZE) {SCHEMA}.{table}")
        finally:
            await vacuum_conn.close()

    await asyncio.gather(vacuum("tickets"), vacuum("comments"))
    phases["vacuum_analyze_s"] = round(time.perf_counter() - mark, 1)
    log(f"  vacuum + analyze in {phases['vacuum_analyze_s']} s")
    mark = time.perf_counter()
    # Write the loaded pages out now, or the checkpointer flushes gigabytes of them while the
    # benchmark's first phases run (part of seeding, so counted in its time).
    checkpoint_conn = await asyncpg.connect(dsn)
    try:
        await checkpoint_conn.execute("CHECKPOINT")
    finally:
        await checkpoint_conn.close()
    phases["checkpoint_s"] = round(time.perf_counter() - mark, 1)
    log(f"  checkpoint in {phases['checkpoint_s']} s")
    return SeedResult(
        tickets=tickets,
        comments=comments,
        tenants=tenants,
        seconds=round(time.perf_counter() - started, 1),
        phases=phases,
        numbers=numbers,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.seed_tickets", description=__doc__.split("\n")[0])
    parser.add_argument("database_url", help="superuser URL of a migrated database")
    parser.add_argument("--tickets", type=int, default=1_000_000)
    parser.add_argument("--comments", type=int, default=None, help="default: 2 x tickets")
    parser.add_argument("--tenants", type=int, default=DEFAULT_TENANT_COUNT)
    parser.add_argument("--tenant-prefix", default="scale")
    args = parser.parse_args(argv)
    result = asyncio.run(
        seed(
            args.database_url,
            tickets=args.tickets,
            comments=args.comments,
            tenants=default_tenants(args.tenants, args.tenant_prefix),
        )
    )
    print(
        f"seeded {result.tickets} tickets, {result.comments} comments in {result.seconds} s {result.phases}"
    )
    print(json.dumps({"seed_s": result.seconds, **result.phases}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Search (Korean substrings and English words, comments included) and duplicate hints."""

import time
import unicodedata

import pytest

from services.tickets.search import MAX_HITS
from tests.conftest import auth_headers, unique_tenant
from tests.tickets.helpers import TICKETS, add_comment, create_ticket, patch_ticket


@pytest.fixture(scope="module")
async def corpus(tickets, infra):
    tenant = unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    requester = auth_headers(infra, tenant, ["requester"], "req-1")
    made = {
        "elevator_ko": await create_ticket(
            tickets,
            requester,
            subject="3층 엘리베이터가 멈췄습니다",
            description="문이 열리지 않아요",
            priority="urgent",
        ),
        "leak_ko": await create_ticket(
            tickets, agent, subject="화장실 천장 누수", description="물이 뚝뚝 떨어집니다"
        ),
        "elevator_en": await create_ticket(
            tickets,
            agent,
            subject="Elevator stuck on floor 3",
            description="Doors will not open",
            priority="high",
        ),
        "printer": await create_ticket(
            tickets, agent, subject="Printer jam", description="Paper stuck in tray 2"
        ),
        "hvac": await create_ticket(
            tickets, requester, subject="Air conditioning broken", description="Too hot"
        ),
    }
    # Only a comment mentions the leak here; an internal note mentions a secret word.
    await tickets.post(
        f"/api/v1/tickets/{made['hvac']['id']}/comments",
        json={"body": "기술자가 확인해 보니 배관 누수였습니다"},
        headers=agent,
    )
    await tickets.post(
        f"/api/v1/tickets/{made['hvac']['id']}/comments",
        json={"body": "vendor invoice overdue xyzzy", "visibility": "internal"},
        headers=agent,
    )
    return tenant, agent, requester, made


async def search(tickets, headers, q, **params):
    response = await tickets.get("/api/v1/tickets", params={"q": q, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def names(items, made):
    by_id = {ticket["id"]: name for name, ticket in made.items()}
    return {by_id[item["id"]] for item in items}


async def test_korean_substring_matches_inside_words(tickets, corpus):
    _, agent, _, made = corpus
    # "엘리베이터" is only part of the word "엘리베이터가": full-text alone would miss it.
    assert names(await search(tickets, agent, "엘리베이터"), made) == {"elevator_ko"}
    assert names(await search(tickets, agent, "누수"), made) == {"leak_ko", "hvac"}  # hvac via its comment


async def test_english_words_match_any_case(tickets, corpus):
    _, agent, _, made = corpus
    assert names(await search(tickets, agent, "ELEVATOR"), made) == {"elevator_en"}
    assert names(await search(tickets, agent, "stuck"), made) == {"elevator_en", "printer"}


async def test_results_carry_a_highlighted_snippet_and_a_rank(tickets, corpus):
    _, agent, _, made = corpus
    items = await search(tickets, agent, "누수")
    leak = next(item for item in items if item["id"] == made["leak_ko"]["id"])
    assert leak["highlight"] == "화장실 천장 <mark>누수</mark>"
    assert all(isinstance(item["rank"], float) for item in items)
    # The subject match ranks above the ticket that only matches in a comment.
    assert items[0]["id"] == made["leak_ko"]["id"]


async def test_highlight_escapes_html_in_the_ticket_text(tickets, infra):
    agent = auth_headers(infra, unique_tenant(), ["agent"], "a")
    await create_ticket(tickets, agent, subject="<b>boiler</b> & pump")
    items = await search(tickets, agent, "boiler")
    assert items[0]["highlight"] == "&lt;b&gt;<mark>boiler</mark>&lt;/b&gt; &amp; pump"


async def test_search_combines_with_filters_and_sorts(tickets, corpus):
    _, agent, _, made = corpus
    assert names(await search(tickets, agent, "stuck", priority="high"), made) == {"elevator_en"}
    by_date = await search(tickets, agent, "stuck", sort="created_at", order="asc")
    assert [item["id"] for item in by_date] == [made["elevator_en"]["id"], made["printer"]["id"]]


async def test_search_pages_by_relevance(tickets, corpus):
    _, agent, _, made = corpus
    first = (await tickets.get("/api/v1/tickets", params={"q": "누수", "limit": 1}, headers=agent)).json()
    second = (
        await tickets.get(
            "/api/v1/tickets", params={"q": "누수", "limit": 1, "cursor": first["next_cursor"]}, headers=agent
        )
    ).json()
    assert [first["items"][0]["id"], second["items"][0]["id"]] == [made["leak_ko"]["id"], made["hvac"]["id"]]
    assert second["next_cursor"] is None


async def test_requesters_search_only_their_tickets_and_never_internal_notes(tickets, corpus):
    _, agent, requester, made = corpus
    assert names(await search(tickets, agent, "xyzzy"), made) == {"hvac"}
    assert await search(tickets, requester, "xyzzy") == []
    assert names(await search(tickets, requester, "누수"), made) == {"hvac"}  # own ticket, public comment


async def test_other_tickets_comments_never_crowd_out_the_callers_matches(tickets, infra):
    # More matching comments on someone else's ticket than the search ranks (MAX_HITS): the
    # requester's own match must still be found, and nothing of the other ticket shown.
    tenant = unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    requester = auth_headers(infra, tenant, ["requester"], "req-1")
    own = await create_ticket(tickets, requester, subject="door code")
    await tickets.post(
        f"{TICKETS}/{own['id']}/comments", json={"body": "the code is zeppelin"}, headers=requester
    )
    busy = await create_ticket(tickets, agent, subject="vendor thread")
    for n in range(MAX_HITS + 5):
        body = {"body": f"zeppelin part {n}", "visibility": "internal" if n % 2 else "public"}
        assert (
            await tickets.post(f"{TICKETS}/{busy['id']}/comments", json=body, headers=agent)
        ).status_code == 201
    found = (await tickets.get(TICKETS, params={"q": "zeppelin"}, headers=requester)).json()["items"]
    assert [ticket["id"] for ticket in found] == [own["id"]]
    # An agent narrows with a filter, which the cap then counts within, too.
    narrowed = await tickets.get(TICKETS, params={"q": "zeppelin", "requester": "req-1"}, headers=agent)
    assert [ticket["id"] for ticket in narrowed.json()["items"]] == [own["id"]]


async def test_search_special_characters_are_literal(tickets, corpus):
    _, agent, _, _ = corpus
    assert await search(tickets, agent, "100%") == []
    assert await search(tickets, agent, "_") == []
    assert await search(tickets, agent, "'; DROP TABLE tickets; --") == []


async def test_similar_finds_reports_of_the_same_broken_elevator(tickets, infra):
    tenant = unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    reports = [
        await create_ticket(
            tickets, agent, subject=subject, description="엘리베이터 고장", building="본관", floor=floor
        )
        for subject, floor in [
            ("본관 엘리베이터 고장", "3"),
            ("엘리베이터 멈춤 3층", "3"),
            ("엘리베이터가 고장났어요", "1"),
            ("본관 엘리베이터 안 움직임", "5"),
        ]
    ]
    elsewhere = await create_ticket(
        tickets, agent, subject="별관 엘리베이터 고장", building="별관", floor="3"
    )
    unrelated = await create_ticket(tickets, agent, subject="프린터 용지 걸림", building="본관", floor="3")
    closed = await create_ticket(tickets, agent, subject="본관 엘리베이터 고장", building="본관", floor="3")
    await patch_ticket(tickets, agent, closed, status="closed")

    response = await tickets.get(f"/api/v1/tickets/{reports[0]['id']}/similar", headers=agent)
    assert response.status_code == 200, response.text
    found = [item["id"] for item in response.json()["items"]]
    assert set(found) == {r["id"] for r in reports[1:]}
    assert found[0] == reports[1]["id"]  # same floor ranks first
    assert elsewhere["id"] not in found and unrelated["id"] not in found and closed["id"] not in found

    requester = auth_headers(infra, tenant, ["requester"], "req-1")
    assert (
        await tickets.get(f"/api/v1/tickets/{reports[0]['id']}/similar", headers=requester)
    ).status_code == 403


async def test_similar_finds_reports_of_the_same_elevator_with_no_location(tickets, infra):
    """A report by phone or e-mail often has no building: it is found from a located report of
    the same breakdown (by text alone, so it must be closer than the building's own tickets need
    to be), and finds that report in turn."""
    agent = auth_headers(infra, unique_tenant(), ["agent"], "agent-1")
    report = {"subject": "본관 엘리베이터 고장", "description": "엘리베이터가 멈췄어요"}
    located = {**report, "subject": "본관 3층 엘리베이터 고장", "building": "본관"}
    located = await create_ticket(tickets, agent, **located)
    phoned = await create_ticket(tickets, agent, **report)
    loosely = await create_ticket(tickets, agent, subject="엘리베이터 점검 일정 문의")  # shares a word only
    unrelated = await create_ticket(tickets, agent, subject="프린터 용지 걸림")
    solved = await create_ticket(tickets, agent, **report)
    await patch_ticket(tickets, agent, solved, status="resolved")
    elsewhere = await create_ticket(tickets, agent, **report, building="별관")

    found = (await tickets.get(f"/api/v1/tickets/{located['id']}/similar", headers=agent)).json()["items"]
    assert [item["id"] for item in found] == [phoned["id"]]
    assert {loosely["id"], unrelated["id"], solved["id"], elsewhere["id"]}.isdisjoint(i["id"] for i in found)
    back = (await tickets.get(f"/api/v1/tickets/{phoned['id']}/similar", headers=agent)).json()["items"]
    assert {located["id"], elsewhere["id"]} <= {item["id"] for item in back}


async def test_similar_without_a_building_uses_text_similarity(tickets, infra):
    agent = auth_headers(infra, unique_tenant(), ["agent"], "agent-1")
    first = await create_ticket(tickets, agent, subject="VPN connection drops every hour")
    second = await create_ticket(tickets, agent, subject="VPN connection drops every few minutes")
    await create_ticket(tickets, agent, subject="Coffee machine empty")
    found = (await tickets.get(f"/api/v1/tickets/{first['id']}/similar", headers=agent)).json()["items"]
    assert [item["id"] for item in found] == [second["id"]]


def test_search_terms_are_hangul_bigrams_digit_runs_and_what_the_parser_misses():
    from services.tickets.search import search_terms_of

    assert (
        search_terms_of("3층 엘리베이터가 멈춤, Elevator zebra-4242")
        == "엘리 리베 베이 이터 터가 멈춤 3 4242"
    )
    assert search_terms_of("물 샘") == ""  # one-syllable words are found as words, not bigrams
    assert search_terms_of("B1층 누수") == "누수 1 1층"  # the counted number inside the word
    assert search_terms_of("Mail Kim@Acme.co.kr") == "kim acme co kr"  # the address's parts
    assert search_terms_of("Crash: <NullPointerException>") == "NullPointerException"


@pytest.mark.parametrize("text", ["a" * 100_000, "a." * 50_000, "x-" * 50_000, ("a" * 300 + ".") * 300])
def test_search_terms_take_linear_time_on_long_runs_of_address_characters(text):
    # Matching addresses over the whole text backtracked quadratically: ~200 s for 100 kB of
    # letters, a description any client may send. Linear, it takes milliseconds; 5 s is a wide margin.
    from services.tickets.search import search_terms_of

    started = time.perf_counter()
    search_terms_of(text)
    assert time.perf_counter() - started < 5


def test_query_terms_become_words_a_last_prefix_and_korean_phrases():
    from services.tickets.search import tsquery_text

    assert tsquery_text("Elev 누수 Wi-Fi") == "('elev') & ('누수') & ('wi') & ('fi')"
    assert tsquery_text("VPN disconn") == "('vpn') & ('disconn':*)"
    assert tsquery_text("printer") == "('printer':*)"
    assert tsquery_text("엘리베이터 소음") == "('엘리' <-> '리베' <-> '베이' <-> '이터') & ('소음')"
    assert tsquery_text("엘리베이터") == "('엘리베이터':* | '엘리' <-> '리베' <-> '베이' <-> '이터')"
    assert tsquery_text("3층 누수") == "('3층':*) & ('누수')"  # "3층에서" is one word
    assert tsquery_text("KIM@acme.co.kr badge") == "('kim@acme.co.kr') & ('badge':*)"
    assert tsquery_text("%_'") is None


async def test_a_floor_number_matches_with_the_particle_that_follows_it(tickets, infra):
    agent = auth_headers(infra, unique_tenant(), ["agent"], "agent-1")
    stuck = await create_ticket(tickets, agent, subject="엘리베이터가 3층에서 멈췄어요")
    await create_ticket(tickets, agent, subject="13층 복도 조명", description="30층 아님")
    found = (await tickets.get(TICKETS, params={"q": "3층"}, headers=agent)).json()["items"]
    assert [ticket["id"] for ticket in found] == [stuck["id"]]


async def test_an_email_address_or_host_name_is_searched_as_one_word(tickets, infra):
    agent = auth_headers(infra, unique_tenant(), ["agent"], "agent-1")
    badge = await create_ticket(
        tickets,
        agent,
        subject="Badge for kim@acme.co.kr does not open the lobby",
        description="Steps on https://portal.acme.co.kr/help; node.js service logs attached",
    )
    await create_ticket(tickets, agent, subject="Badge for lee@acme.co.kr", description="acme portal")
    for q in ["kim@acme.co.kr", "KIM@ACME.CO.KR lobby", "portal.acme.co.kr", "node.js"]:
        found = (await tickets.get(TICKETS, params={"q": q}, headers=agent)).json()["items"]
        assert [ticket["id"] for ticket in found] == [badge["id"]], q


async def test_parts_of_addresses_bracketed_words_and_basement_floors_are_found(tickets, infra):
    agent = auth_headers(infra, unique_tenant(), ["agent"], "agent-1")
    badge = await create_ticket(tickets, agent, subject="Badge for kim@acme.co.kr", description="-")
    crash = await create_ticket(tickets, agent, subject="App crash", description="<NullPointerException>")
    basement = await create_ticket(tickets, agent, subject="B1층 주차장 누수", description="-")
    await create_ticket(tickets, agent, subject="Printer", description="acne and B11층 and 21층")
    for q, expected in [("acme", badge), ("kim", badge), ("NullPointerException", crash), ("1층", basement)]:
        found = (await tickets.get(TICKETS, params={"q": q}, headers=agent)).json()["items"]
        assert [ticket["id"] for ticket in found] == [expected["id"]], q


async def test_korean_terms_match_inside_longer_words_and_english_prefixes(tickets, corpus):
    _, agent, _, made = corpus
    assert names(await search(tickets, agent, "리베이"), made) == {"elevator_ko"}  # middle of 엘리베이터가
    assert names(await search(tickets, agent, "터가"), made) == {"elevator_ko"}
    assert names(await search(tickets, agent, "elev"), made) == {"elevator_en"}
    # Earlier words are whole words, the last one may be partial (search as you type).
    assert names(await search(tickets, agent, "elevator stu"), made) == {"elevator_en"}
    assert await search(tickets, agent, "elev stuck") == []
    assert names(await search(tickets, agent, "엘리베이터 문이"), made) == {"elevator_ko"}  # all terms
    assert await search(tickets, agent, "엘리베이터 printer") == []


async def test_search_and_containment_operators_may_run_before_the_tenant_policy(infra):
    """LEAKPROOF lets PostgreSQL use the GIN indexes under row-level security (migration 0005)."""
    from tests.tickets.helpers import admin_fetch

    rows = await admin_fetch(
        infra,
        "SELECT proname FROM pg_proc WHERE proleakproof AND proname = ANY($1::text[])",
        ["ts_match_vq", "jsonb_contains"],
    )
    assert sorted(row["proname"] for row in rows) == ["jsonb_contains", "ts_match_vq"]


async def test_decomposed_hangul_is_stored_composed_and_found_either_way(tickets, infra):
    # macOS sends Hangul decomposed (NFD); stored as sent, a composed query never found it.
    agent = auth_headers(infra, unique_tenant(), ["agent"], "agent-1")
    nfd = unicodedata.normalize("NFD", "세면대 누수")
    sink = await create_ticket(
        tickets, agent, subject=nfd, tags=[unicodedata.normalize("NFD", "세면")], building=nfd[:7]
    )
    assert sink["subject"] == "세면대 누수" and sink["tags"] == ["세면"] and sink["building"] == "세면대"
    await create_ticket(tickets, agent, subject="Printer", tags=["printer"], building="본관")
    for params in [
        {"q": "세면대"},
        {"q": "면대"},
        {"q": unicodedata.normalize("NFD", "면대")},
        {"tag": unicodedata.normalize("NFD", "세면")},
        {"building": unicodedata.normalize("NFD", "세면대")},
    ]:
        found = (await tickets.get(TICKETS, params=params, headers=agent)).json()["items"]
        assert [ticket["id"] for ticket in found] == [sink["id"]], params


async def test_terms_split_between_a_ticket_and_its_comments_match_after_the_full_matches(tickets, infra):
    tenant = unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    alice = auth_headers(infra, tenant, ["requester"], "alice")
    full = await create_ticket(tickets, agent, subject="Elevator noise on floor 2", description="grinding")
    split = await create_ticket(
        tickets, alice, subject="Elevator 3 stopped", description="stuck between floors"
    )
    await add_comment(tickets, agent, split["id"], "the technician heard a loud noise in the shaft")
    noted = await create_ticket(tickets, alice, subject="Elevator 4 is slow", description="takes minutes")
    await add_comment(tickets, agent, noted["id"], "noise complaint from the landlord", "internal")
    await create_ticket(tickets, agent, subject="Printer noise", description="rattles")
    # "elevator" in a reply makes it a candidate, but "noise" is only in other tickets' replies.
    lamp = await create_ticket(tickets, agent, subject="Elevator 6 lights", description="dim")
    await add_comment(tickets, agent, lamp["id"], "elevator lamp replaced")
    await create_ticket(tickets, agent, subject="Elevator 5 inspection due", description="yearly")

    def ids(items):
        return [item["id"] for item in items]

    # Full matches first, then the split ones, newest first.
    assert ids(await search(tickets, agent, "elevator noise")) == [full["id"], noted["id"], split["id"]]
    assert ids(await search(tickets, agent, "엘리베이터 noise")) == []
    # A requester's split match counts only her own tickets and public replies.
    assert ids(await search(tickets, alice, "elevator noise")) == [split["id"]]
    # A full page, another sort or a later page: full matches only.
    assert ids(await search(tickets, agent, "elevator noise", limit=1)) == [full["id"]]
    assert ids(await search(tickets, agent, "elevator noise", sort="created_at")) == [full["id"]]
    # Filters narrow the split matches as they do the full ones.
    assert ids(await search(tickets, agent, "elevator noise", requester="alice")) == [
        noted["id"],
        split["id"],
    ]
    assert ids(await search(tickets, agent, "technician shaft")) == [split["id"]]  # one comment: a full match

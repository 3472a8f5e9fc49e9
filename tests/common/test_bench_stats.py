"""Statistics and load loop of the tickets API benchmark (bench/tickets_api.py)."""

import asyncio
import json
import statistics

import pytest
from aiohttp import web

from bench.tickets_api import BenchError, compare, drive_load, load_stack, percentile, summarize, ticket_body
from tests.conftest import local_aiohttp_server


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([1, 2, 3, 4, 5], 50, 3.0),
        ([1, 2, 3, 4, 5], 25, 2.0),
        ([1, 2, 3, 4, 5], 90, 4.6),
        ([1, 2, 3, 4, 5], 0, 1.0),
        ([1, 2, 3, 4, 5], 100, 5.0),
        ([10, 20], 50, 15.0),
        ([10, 20], 95, 19.5),
        ([7], 99, 7.0),
        ([5, 1, 4, 2, 3], 50, 3.0),  # unsorted input
        (list(range(1, 101)), 50, 50.5),
        (list(range(1, 101)), 95, 95.05),
        (list(range(1, 101)), 99, 99.01),
    ],
)
def test_percentile_interpolates_linearly_between_closest_ranks(values, pct, expected):
    assert percentile(values, pct) == pytest.approx(expected)


def test_percentile_matches_stdlib_inclusive_quantiles():
    values = [((i * 7919) % 1000) / 10 for i in range(1, 538)]  # 537 scattered latencies with ties
    cut_points = statistics.quantiles(values, n=100, method="inclusive")
    for pct in range(1, 100):
        assert percentile(values, pct) == pytest.approx(cut_points[pct - 1])


def test_percentile_is_not_fooled_by_one_outlier_at_p50():
    assert percentile([10.0] * 99 + [10_000.0], 50) == 10.0
    assert percentile([10.0] * 99 + [10_000.0], 100) == 10_000.0


@pytest.mark.parametrize(("values", "pct"), [([], 50), ([1.0], -1), ([1.0], 100.5)])
def test_percentile_rejects_empty_input_and_out_of_range_pct(values, pct):
    with pytest.raises(ValueError):
        percentile(values, pct)


def test_summarize_counts_errors_in_latency_but_not_in_rps():
    latencies = [float(ms) for ms in range(1, 101)]  # 100 requests in 2 s, 10 of them failed
    assert summarize(latencies, errors=10, seconds=2.0) == {
        "rps": 45.0,
        "p50_ms": 50.5,
        "p95_ms": 95.05,
        "p99_ms": 99.01,
        "errors": 10,
        "count": 100,
    }


def test_summarize_without_completed_requests_reports_no_percentiles():
    assert summarize([], errors=0, seconds=5.0) == {
        "rps": 0.0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "errors": 0, "count": 0,
    }  # fmt: skip


def test_compare_gives_overhead_and_throughput_ratio_and_is_json():
    gateway = {"rps": 700.0, "p50_ms": 30.0, "p95_ms": 60.0, "p99_ms": 90.0, "errors": 0, "count": 14000}
    direct = {"rps": 1000.0, "p50_ms": 20.5, "p95_ms": 40.0, "p99_ms": 70.0, "errors": 0, "count": 20000}
    result = compare(gateway, direct, concurrency=32, seconds=20.0)
    assert result["overhead_p50_ms"] == 9.5
    assert result["ratio_rps"] == 0.7
    assert (result["concurrency"], result["seconds"]) == (32, 20.0)
    assert json.loads(json.dumps(result)) == result


def test_compare_without_direct_throughput_has_no_ratio():
    empty = summarize([], errors=0, seconds=1.0)
    result = compare(empty, empty, concurrency=1, seconds=1.0)
    assert result["ratio_rps"] is None
    assert result["overhead_p50_ms"] is None


def test_ticket_body_sends_korean_as_utf8_not_escapes():
    korean, english = json.loads(ticket_body("x", 0)), json.loads(ticket_body("x", 1))
    assert "엘리베이터" in korean["subject"]
    assert english["subject"].isascii()
    assert "엘리베이터".encode() in ticket_body("x", 0)


def test_load_stack_prefers_the_environment_password(tmp_path, monkeypatch):
    stack_file = tmp_path / "stack.json"
    agent = {"email": "agent@demo.test", "password": "from-file"}
    stack_file.write_text(
        json.dumps(
            {
                "gateway": "http://127.0.0.1:8080",
                "services": {"tickets": "http://127.0.0.1:8101"},
                "demo": {"tenant": "demo", "users": {"agent": agent}},
            }
        )
    )
    monkeypatch.delenv("HELPDESK_DEMO_PASSWORD", raising=False)
    assert load_stack(stack_file) == (
        "http://127.0.0.1:8080",
        "http://127.0.0.1:8101",
        "agent@demo.test",
        "from-file",
    )
    monkeypatch.setenv("HELPDESK_DEMO_PASSWORD", "from-env")
    assert load_stack(stack_file)[3] == "from-env"


def test_load_stack_logs_in_as_the_bench_tenants_agent_when_the_stack_has_one(tmp_path, monkeypatch):
    stack_file = tmp_path / "stack.json"
    users = {
        "demo": {"tenant": "demo", "users": {"agent": {"email": "agent@demo.test", "password": "d"}}},
        "bench": {"tenant": "bench", "users": {"agent": {"email": "agent@bench.test", "password": "b"}}},
    }
    stack = {"gateway": "http://127.0.0.1:8080", "services": {"tickets": "http://127.0.0.1:8101"}, **users}
    stack_file.write_text(json.dumps(stack))
    monkeypatch.delenv("HELPDESK_DEMO_PASSWORD", raising=False)
    assert load_stack(stack_file)[2:] == ("agent@bench.test", "b")


def test_load_stack_without_stack_file_says_to_start_the_stack(tmp_path):
    with pytest.raises(BenchError, match="make up"):
        load_stack(tmp_path / "stack.json")


async def test_the_load_mix_is_reported_per_request_kind():
    """drive_load against a real local server whose creates are slower than its lists."""
    seen_auth = set()

    async def list_tickets(request: web.Request) -> web.Response:
        seen_auth.add(request.headers["Authorization"])
        return web.json_response({"items": []})

    async def create_ticket(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.02)
        return web.json_response({"id": "x"}, status=201)

    app = web.Application()
    app.router.add_get("/api/v1/tickets", list_tickets)
    app.router.add_post("/api/v1/tickets", create_ticket)
    async with local_aiohttp_server(app) as url:
        stats = await drive_load(url, "tok", seconds=0.6, concurrency=5, warmup=0.1)
    lists, creates = stats["by_request"]["list"], stats["by_request"]["create"]
    assert stats["errors"] == 0 and seen_auth == {"Bearer tok"}
    assert lists["count"] + creates["count"] == stats["count"]
    assert 2 * creates["count"] < lists["count"]  # one request in five is a create
    assert creates["p50_ms"] >= 20 > lists["p50_ms"]

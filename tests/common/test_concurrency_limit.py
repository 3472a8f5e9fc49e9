"""The per-process concurrency limit: at most N requests run, the rest wait their turn."""

import asyncio
import time

import pytest
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from libs.common.metrics import HTTP_WAITING
from libs.common.service_app import ServiceDefinition, create_service_app
from libs.common.settings import CommonSettings
from tests.conftest import app_client, settings_for, wait_until

LIMIT = 2
router = APIRouter()


class Probe:
    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.release = asyncio.Event()
        self.finished: dict[str, float] = {}

    async def run(self, name: str, seconds: float = 0.0) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if seconds:
                await asyncio.sleep(seconds)
            else:
                await self.release.wait()
        finally:
            self.running -= 1
            self.finished[name] = time.monotonic()


probe = Probe()


@router.get("/work/{name}")
async def work(name: str, seconds: float = 0.0) -> dict:
    await probe.run(name, seconds)
    return {"name": name}


@router.post("/upload")
async def upload(request: Request) -> dict:
    size = len(await request.body())
    probe.finished["upload"] = time.monotonic()
    return {"bytes": size}


@router.get("/stream")
async def stream() -> StreamingResponse:
    async def chunks():
        for part in (b"one ", b"two ", b"three"):
            yield part
            await asyncio.sleep(0.3)
        probe.finished["stream"] = time.monotonic()

    return StreamingResponse(chunks(), media_type="text/plain")


@pytest.fixture
async def client(infra):
    global probe
    probe = Probe()
    settings = settings_for(infra, CommonSettings, "analytics", max_concurrent_requests=LIMIT)
    app = create_service_app(ServiceDefinition(name="limited", settings=settings, routers=[router]))
    async with app_client(app) as client:
        yield client


async def test_at_most_the_limit_runs_at_once_and_every_request_is_answered(client):
    responses = await asyncio.gather(*(client.get(f"/work/r{i}?seconds=0.15") for i in range(7)))
    assert [r.status_code for r in responses] == [200] * 7
    assert probe.most == LIMIT


async def test_waiting_requests_are_counted_and_probes_never_wait(client):
    held = [asyncio.create_task(client.get(f"/work/held{i}")) for i in range(LIMIT + 3)]
    try:
        await wait_until(_waiting_is(3), timeout=5, interval=0.01)
        assert probe.running == LIMIT
        for path in ("/healthz", "/metrics"):
            response = await asyncio.wait_for(client.get(path), timeout=2)
            assert response.status_code == 200, path
        assert "helpdesk_http_requests_waiting" in response.text
    finally:
        probe.release.set()
    assert [r.status_code for r in await asyncio.gather(*held)] == [200] * (LIMIT + 3)
    assert probe.most == LIMIT
    assert HTTP_WAITING.labels("limited")._value.get() == 0


def _waiting_is(count: int):
    async def check() -> bool:
        return HTTP_WAITING.labels("limited")._value.get() == count

    return check


async def test_a_slow_client_body_holds_no_place(client):
    """A small body is read before its request takes a place: clients that send slowly cannot
    occupy the process's places."""

    async def slowly():
        for _ in range(3):
            yield b"x" * 100
            await asyncio.sleep(0.3)

    uploads = [
        asyncio.create_task(client.post("/upload", content=slowly(), headers={"Content-Length": "300"}))
        for _ in range(LIMIT)
    ]
    await asyncio.sleep(0.1)
    quick = await client.get("/work/quick?seconds=0.01")
    assert quick.status_code == 200
    assert [r.json() for r in await asyncio.gather(*uploads)] == [{"bytes": 300}] * LIMIT
    assert probe.finished["quick"] < probe.finished["upload"]


async def test_a_streaming_response_gives_its_place_back_when_it_starts(client):
    streams = [asyncio.create_task(client.get("/stream")) for _ in range(LIMIT)]
    await asyncio.sleep(0.1)
    quick = await client.get("/work/quick?seconds=0.01")
    assert quick.status_code == 200
    assert [r.text for r in await asyncio.gather(*streams)] == ["one two three"] * LIMIT
    assert probe.finished["quick"] < probe.finished["stream"]

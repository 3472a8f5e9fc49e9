"""The benchmarks' keep-alive HTTP client (bench/load_client.py), against a real local server."""

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bench.load_client import Connection, encode_request
from tests.conftest import local_aiohttp_server


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[tuple[str, int]]]]:
    """A local server; yields its URL and the (path, client port) of every request it served."""
    served: list[tuple[str, int]] = []
    release_slow = asyncio.Event()

    async def echo(request: web.Request) -> web.Response:
        served.append((request.path, request.transport.get_extra_info("peername")[1]))
        body = await request.read()
        answer = {"method": request.method, "query": request.query_string, "body": body.decode()}
        answer["type"] = request.headers.get("Content-Type")
        return web.json_response(answer, status=201 if request.method == "POST" else 200)

    async def chunked(request: web.Request) -> web.StreamResponse:
        served.append((request.path, request.transport.get_extra_info("peername")[1]))
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"first,", b"second,", b"third"):
            await response.write(part)
        await response.write_eof()
        return response

    async def closing(request: web.Request) -> web.Response:
        served.append((request.path, request.transport.get_extra_info("peername")[1]))
        response = web.Response(text="bye", status=503)
        response.force_close()
        return response

    async def slow(request: web.Request) -> web.Response:
        served.append((request.path, request.transport.get_extra_info("peername")[1]))
        await release_slow.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/closing", closing)
    app.router.add_get("/slow", slow)
    async with local_aiohttp_server(app) as url:
        try:
            yield url, served
        finally:
            release_slow.set()  # before the server's cleanup, which waits for its handlers


async def test_requests_share_one_connection_and_bodies_arrive_whole(server):
    url, served = server
    connection = Connection(url, timeout_s=5)
    try:
        body = json.dumps({"subject": "엘리베이터 고장"}, ensure_ascii=False).encode()
        post = encode_request("POST", f"{url}/echo", {"Content-Type": "application/json"}, body)
        created = await connection.send(post)
        listed = await connection.send(encode_request("GET", f"{url}/echo?status=open&limit=5"))
        streamed = await connection.send(encode_request("GET", f"{url}/chunked"))
    finally:
        connection.close()
    assert created.status == 201
    assert json.loads(created.body) == {
        "method": "POST",
        "query": "",
        "body": '{"subject": "엘리베이터 고장"}',
        "type": "application/json",
    }
    assert listed.status == 200 and json.loads(listed.body)["query"] == "status=open&limit=5"
    assert streamed.status == 200 and streamed.body == b"first,second,third"
    assert len({port for _, port in served}) == 1  # keep-alive: one connection for all three


async def test_a_connection_the_server_closes_is_reopened_for_the_next_request(server):
    url, served = server
    connection = Connection(url, timeout_s=5)
    try:
        closed = await connection.send(encode_request("GET", f"{url}/closing"))
        after = await connection.send(encode_request("GET", f"{url}/echo"))
    finally:
        connection.close()
    assert (closed.status, closed.body) == (503, b"bye")
    assert after.status == 200
    assert served[0][1] != served[1][1]


async def test_a_timed_out_request_does_not_hand_its_late_response_to_the_next_one(server):
    url, served = server
    connection = Connection(url, timeout_s=0.2)
    try:
        with pytest.raises(TimeoutError):
            await connection.send(encode_request("GET", f"{url}/slow"))
        after = await connection.send(encode_request("GET", f"{url}/echo?n=2"))
    finally:
        connection.close()
    assert json.loads(after.body)["query"] == "n=2"
    assert served[0][1] != served[1][1]


async def test_a_failed_request_is_named_by_its_kind_with_the_first_detail(server):
    url, _ = server
    connection = Connection(url, timeout_s=5)
    details: dict[str, str] = {}
    try:
        ok, closing = encode_request("GET", f"{url}/echo"), encode_request("GET", f"{url}/closing")
        assert await connection.error_of(ok, "list", details) is None
        assert await connection.error_of(closing, "list", details) == "list 503"
    finally:
        connection.close()
    nowhere = Connection("http://127.0.0.1:1", timeout_s=2)
    refused = await nowhere.error_of(b"GET / HTTP/1.1\r\n\r\n", "read", details)
    assert refused == "read ConnectionRefusedError"
    assert details["list 503"] == "bye" and details["read ConnectionRefusedError"]


async def test_a_refused_connection_is_an_os_error():
    with pytest.raises(OSError):
        await Connection("http://127.0.0.1:1", timeout_s=2).send(b"GET / HTTP/1.1\r\n\r\n")


def test_only_plain_http_urls_are_accepted():
    with pytest.raises(ValueError, match="only http"):
        Connection("https://example.test", timeout_s=1)


def test_a_request_is_encoded_once_with_its_length():
    raw = encode_request("POST", "http://h:8/api?x=1", {"Authorization": "Bearer t"}, "한".encode())
    head = b"POST /api?x=1 HTTP/1.1\r\nHost: h:8\r\nAuthorization: Bearer t\r\nContent-Length: 3\r\n\r\n"
    assert raw == head + "한".encode()
    assert encode_request("GET", "http://h/") == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"

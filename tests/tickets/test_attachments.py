"""Attachments API: streamed upload and download, limits, permissions, no partial writes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import unicodedata
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

from libs.common.db import create_engine, create_session_factory, plain_dsn
from services.tickets.app import create_app
from services.tickets.attachments.blobstore import LocalBlobStore
from services.tickets.attachments.service import normalize_content_type, sanitize_filename
from services.tickets.attachments.sweeper import SWEEP_LOCK_KEY, sweep_if_first, sweep_orphans
from services.tickets.settings import Settings
from tests.conftest import app_client, auth_headers, settings_for, unique_tenant, wait_until
from tests.tickets.helpers import add_comment, admin_fetch
from tests.tickets.helpers import create_ticket as api_create_ticket
from tests.tickets.test_blobstore import object_keys, pending_uploads, run_s3_server

MAX_BYTES = 200_000
PDF = "application/pdf"


@pytest.fixture(scope="module")
def blob_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("blobs")


@pytest.fixture(scope="module")
async def client(infra, blob_dir):
    settings = settings_for(
        infra, Settings, "tickets", blob_local_dir=str(blob_dir), attachments_max_bytes=MAX_BYTES
    )
    async with app_client(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
async def admin_db(infra):
    conn = await asyncpg.connect(plain_dsn(infra.admin_url))
    yield conn
    await conn.close()


_numbers = iter(range(1, 1_000_000))


async def create_ticket(db, tenant: str, requester_id: str = "req-1", *, deleted: bool = False) -> str:
    """A ticket row written directly (superuser, so row-level security does not apply)."""
    ticket_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO tickets.tickets (id, tenant_id, number, subject, requester_id, deleted_at) "
        "VALUES ($1, $2, $3, $4, $5, CASE WHEN $6 THEN now() END)",
        ticket_id,
        tenant,
        next(_numbers),
        "3층 엘리베이터 고장",
        requester_id,
        deleted,
    )
    return str(ticket_id)


async def create_comment(db, tenant: str, ticket_id: str, visibility: str) -> str:
    comment_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO tickets.comments (id, tenant_id, ticket_id, author_id, visibility, body) "
        "VALUES ($1, $2, $3, 'agent-1', $4, 'note')",
        comment_id,
        tenant,
        uuid.UUID(ticket_id),
        visibility,
    )
    return str(comment_id)


async def attachment_rows(db, tenant: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT * FROM tickets.attachments WHERE tenant_id = $1 ORDER BY created_at", tenant
    )


def stored_files(blob_dir: Path, tenant: str) -> list[Path]:
    """Every file (also temporary ones) under the tenant's part of the blob directory."""
    return [path for path in (blob_dir / tenant).rglob("*") if path.is_file()]


def url(ticket_id: str, suffix: str = "") -> str:
    return f"/api/v1/tickets/{ticket_id}/attachments{suffix}"


async def upload(
    client, ticket_id, headers, content: bytes, filename="report.pdf", content_type=PDF, data=None
):
    files = {"file": (filename, content, content_type)}
    return await client.post(url(ticket_id), files=files, data=data or {}, headers=headers)


async def test_upload_then_download_binary_file_with_korean_name(client, infra, admin_db, blob_dir):
    tenant = unique_tenant()
    ticket_id = await create_ticket(admin_db, tenant)
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    content = bytes(range(256)) * 300 + b"\x00\r\n--boundary-like--\r\n" + os.urandom(1000)
    # macOS sends Hangul decomposed (NFD); the stored name is composed (NFC).
    name = "엘리베이터 점검 보고서.pdf"

    response = await upload(client, ticket_id, agent, content, unicodedata.normalize("NFD", name))

    assert response.status_code == 201, response.text
    attachment = response.json()
    assert attachment["filename"] == name
    assert attachment["size_bytes"] == len(content)
    assert attachment["sha256"] == hashlib.sha256(content).hexdigest()
    assert attachment["content_type"] == PDF
    assert attachment["ticket_id"] == ticket_id and attachment["comment_id"] is None
    assert attachment["uploaded_by"] == "agent-1"
    assert response.headers["location"] == url(ticket_id, f"/{attachment['id']}")
    assert uuid.UUID(attachment["id"]).version == 7

    metadata = await client.get(response.headers["location"], headers=agent)
    assert metadata.status_code == 200 and metadata.json() == attachment

    download = await client.get(url(ticket_id, f"/{attachment['id']}/content"), headers=agent)
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["content-type"] == PDF
    assert download.headers["content-length"] == str(len(content))
    assert download.headers["x-content-type-options"] == "nosniff"
    disposition = download.headers["content-disposition"]
    assert disposition.startswith("attachment;")
    assert f"filename*=UTF-8''{quote(name, safe='')}" in disposition
    assert disposition.isascii()

    [row] = await attachment_rows(admin_db, tenant)
    assert row["storage_key"] == f"{tenant}/{ticket_id}/{attachment['id']}"
    assert (blob_dir / row["storage_key"]).read_bytes() == content


async def test_idempotency_key_keeps_one_upload_of_a_retried_file(client, infra, admin_db, blob_dir):
    tenant = unique_tenant()
    ticket_id = await create_ticket(admin_db, tenant)
    retry = auth_headers(infra, tenant, ["agent"]) | {"Idempotency-Key": "upload-1"}
    first = await upload(client, ticket_id, retry, b"%PDF-1.7 invoice")
    again = await upload(client, ticket_id, retry, b"%PDF-1.7 invoice")
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert len(await attachment_rows(admin_db, tenant)) == 1
    assert len(stored_files(blob_dir, tenant)) == 1  # the retry's copy was removed
    # The key names one request: other bytes (or another name) are refused, and leave nothing.
    other = await upload(client, ticket_id, retry, b"%PDF-1.7 another invoice")
    assert other.status_code == 422 and other.json()["type"].endswith("idempotency-key-reused")
    assert len(await attachment_rows(admin_db, tenant)) == 1
    assert len(stored_files(blob_dir, tenant)) == 1


async def test_list_shows_attachments_in_upload_order_and_pages(client, infra, admin_db):
    tenant = unique_tenant()
    ticket_id = await create_ticket(admin_db, tenant, "alice")
    alice = auth_headers(infra, tenant, ["requester"], "alice")
    names = ["사진1.png", "log.txt", "견적서.xlsx"]
    types = ["image/png", "text/plain", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"]
    for name, content_type in zip(names, types, strict=True):
        response = await upload(client, ticket_id, alice, b"data " + name.encode(), name, content_type)
        assert response.status_code == 201, response.text

    listing = await client.get(url(ticket_id), headers=alice)
    assert listing.status_code == 200
    assert [item["filename"] for item in listing.json()["items"]] == names
    assert listing.json()["next_cursor"] is None

    first = await client.get(url(ticket_id), params={"limit": 2}, headers=alice)
    second = await client.get(
        url(ticket_id), params={"limit": 2, "cursor": first.json()["next_cursor"]}, headers=alice
    )
    paged = [item["filename"] for item in first.json()["items"] + second.json()["items"]]
    assert paged == names and second.json()["next_cursor"] is None


async def test_requester_cannot_touch_someone_elses_ticket(client, infra, admin_db, blob_dir):
    tenant = unique_tenant()
    ticket_id = await create_ticket(admin_db, tenant, "alice")
    alice = auth_headers(infra, tenant, ["requester"], "alice")
    bob = auth_headers(infra, tenant, ["requester"], "bob")
    created = (await upload(client, ticket_id, alice, b"alice's file")).json()

    assert (await upload(client, ticket_id, bob, b"bob's file")).status_code == 404
    for path in ["", f"/{created['id']}", f"/{created['id']}/content"]:
        response = await client.get(url(ticket_id, path), headers=bob)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
    assert (await client.delete(url(ticket_id, f"/{created['id']}"), headers=bob)).status_code == 404
    assert len(await attachment_rows(admin_db, tenant)) == 1
    assert len(stored_files(blob_dir, tenant)) == 1


async def test_other_tenant_and_deleted_tickets_are_404(client, infra, admin_db, blob_dir):
    owner, other = unique_tenant(), unique_tenant()
    ticket_id = await create_ticket(admin_db, owner)
    created = (await upload(client, ticket_id, auth_headers(infra, owner, ["agent"]), b"secret")).json()
    stranger = auth_headers(infra, other, ["admin"])
    assert (await upload(client, ticket_id, stranger, b"intrusion")).status_code == 404
    for path in ["", f"/{created['id']}", f"/{created['id']}/content"]:
        assert (await client.get(url(ticket_id, path), headers=stranger)).status_code == 404
    assert (await client.delete(url(ticket_id, f"/{created['id']}"), headers=stranger)).status_code == 404
    assert await attachment_rows(admin_db, other) == []
    assert stored_files(blob_dir, other) == []

    deleted_ticket = await create_ticket(admin_db, owner, deleted=True)
    agent = auth_headers(infra, owner, ["agent"])
    assert (await upload(client, deleted_ticket, agent, b"late")).status_code == 404
    assert (await client.get(url(deleted_ticket), headers=agent)).status_code == 404


async def test_admins_read_but_never_change_the_attachments_of_a_deleted_ticket(client, infra, admin_db):
    tenant = unique_tenant()
    ticket_id = await create_ticket(admin_db, tenant)
    agent, admin = auth_headers(infra, tenant, ["agent"]), auth_headers(infra, tenant, ["admin"])
    created = (await upload(client, ticket_id, agent, b"invoice")).json()
    await admin_db.execute(
        "UPDATE tickets.tickets SET deleted_at = now() WHERE id = $1", uuid.UUID(ticket_id)
    )
    # As the ticket itself and its comments: an admin reads them, to restore or audit.
    listed = await client.get(url(ticket_id), headers=admin)
    assert [item["id"] for item in listed.json()["items"]] == [created["id"]]
    assert (
        await client.get(url(ticket_id, f"/{created['id']}/content"), headers=admin)
    ).content == b"invoice"
    for headers in (agent, admin):
        assert (await client.delete(url(ticket_id, f"/{created['id']}"), headers=headers)).status_code == 404
        assert (await upload(client, ticket_id, headers, b"late")).status_code == 404
    assert (await client.get(url(ticket_id), headers=agent)).status_code == 404


async def test_oversized_upload_is_413_and_leaves_nothing(client, infra, admin_db, blob_dir):
    tenant = unique_tenant()
    ticket_id = await create_ticket(admin_db, tenant)
    agent = auth_headers(infra, tenant, ["agent"])

    # Honest client: Content-Length already says too much.
    response = await upload(client, ticket_id, agent, b"x" * (MAX_BYTES + 70_000))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["max_bytes"] == MAX_BYTES

    # Just over the limit: passes the Content-Length check, stopped while streaming.
    response = await upload(client, ticket_id, agent, b"x" * (MAX_BYTES + 1))
    assert response.status_code == 413, response.text

    # Exactly the limit is fine.
    assert (await upload(client, ticket_id, agent, b"x" * MAX_BYTES)).status_code == 201
    rows = await attachment_rows(admin_db, tenant)
    assert [row["size_bytes"] for row in rows] == [MAX_BYTES]
    assert [path.name for path in stored_files(blob_dir, tenant)] == [str(rows[0]["id"])]


async def lying_body(boundary: str, size: int) -> AsyncIterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.pdf"\r\n'
        f"Content-Type: application/pdf\r\n\r\n"
    ).encode()
    for _ in range(size // 65536 + 1):
        yield b"y" * 65536
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize("claimed_length", [None, "1000"])
async def test_client_lying_about_its_size_is_stopped_while_streaming(
    client, infra, admin_db, blob_dir, claimed_length
):
    tenant = unique_tenant()
    ticket_id = await create_ticket(admin_db, tenant)
    headers = auth_headers(infra, tenant, ["agent"])
    headers["Content-Type"] = "multipart/form-data; boundary=lying"
    if claimed_length:
        headers["Content-Length"] = claimed_length
    response = await client.post(url(ticket_id), content=lying_body("lying", 5 * MAX_BYTES), headers=headers)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert await attachment_rows(admin_db, tenant) == []
    assert stored_files(blob_dir, tenant) == []


async def test_disallowed_type_is_415_naming_the_allowed_ones(client, infra, admin_db, blob_dir):
    tenant = unique_tenant()
    ticket_id = await create_ticket(admin_db, tenant)
    agent = auth_headers(infra, tenant, ["agent"])
    response = await upload(client, ticket_id, agent, b"<script>alert(1)</script>", "page.html", "text/html")
    assert response.status_code == 415
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert "text/html" in problem["detail"] and "application/pdf" in problem["detail"]
    assert problem["content_type"] == "text/html"
    assert "image/png" in problem["allowed_types"]
    # Unknown bytes labelled octet-stream: the extension decides (.exe is not allowed).
    response = await upload(client, ticket_id, agent, b"MZ", "setup.exe", "application/octet-stream")
    assert response.status_code == 415
    assert await attachment_rows(admin_db, tenant) == []
    assert stored_files(blob_dir, tenant) == []


async def test_malformed_requests_are_4xx_problems(client, infra, admin_db, blob_dir):
    tenant = unique_tenant()
    ticket_id = await create_ticket(admin_db, tenant)
    agent = auth_headers(infra, tenant, ["agent"])

    not_multipart = await client.post(url(ticket_id), json={"file": "abc"}, headers=agent)
    assert not_multipart.status_code == 415
    no_file = await client.post(
        url(ticket_id), data={"comment_id": ""}, files={"other": ("a.pdf", b"1")}, headers=agent
    )
    assert no_file.status_code == 422
    only_fields = await client.post(
        url(ticket_id),
        content=b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--b--\r\n',
        headers={**agent, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert only_fields.status_code == 422
    truncated = await client.post(
        url(ticket_id),
        content=b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.pdf"\r\n\r\npartial',
        headers={**agent, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert truncated.status_code == 400
    no_boundary = await client.post(
        url(ticket_id), content=b"x", headers={**agent, "Content-Type": "multipart/form-data"}
    )
    assert no_boundary.status_code == 400
    empty = await upload(client, ticket_id, agent, b"")
    assert empty.status_code == 422
    bad_comment = await upload(client, ticket_id, agent, b"abc", data={"comment_id": "not-a-uuid"})
    assert bad_comment.status_code == 422
    for response in (not_multipart, no_file, only_fields, truncated, no_boundary, empty, bad_comment):
        assert response.headers["content-type"] == "application/problem+json"
    assert await attachment_rows(admin_db, tenant) == []
    assert stored_files(blob_dir, tenant) == []


async def test_comment_attachments_and_internal_notes(client, infra, admin_db, blob_dir):
    tenant = unique_tenant()
    ticket_id = await create_ticket(admin_db, tenant, "alice")
    other_ticket = await create_ticket(admin_db, tenant, "alice")
    public = await create_comment(admin_db, tenant, ticket_id, "public")
    internal = await create_comment(admin_db, tenant, ticket_id, "internal")
    foreign = await create_comment(admin_db, tenant, other_ticket, "public")
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    alice = auth_headers(infra, tenant, ["requester"], "alice")

    on_public = await upload(client, ticket_id, agent, b"pub", data={"comment_id": public})
    assert on_public.status_code == 201 and on_public.json()["comment_id"] == public
    on_internal = await upload(client, ticket_id, agent, b"int", data={"comment_id": internal})
    assert on_internal.status_code == 201

    # The file is stored before a comment_id sent after it is checked: the blob must go again.
    wrong_ticket = await upload(client, ticket_id, agent, b"zzz", data={"comment_id": foreign})
    assert wrong_ticket.status_code == 422
    requester_on_internal = await upload(client, ticket_id, alice, b"a", data={"comment_id": internal})
    assert requester_on_internal.status_code == 422
    assert len(await attachment_rows(admin_db, tenant)) == 2
    assert len(stored_files(blob_dir, tenant)) == 2

    seen_by_alice = (await client.get(url(ticket_id), headers=alice)).json()["items"]
    assert [item["id"] for item in seen_by_alice] == [on_public.json()["id"]]
    hidden = on_internal.json()["id"]
    assert (await client.get(url(ticket_id, f"/{hidden}/content"), headers=alice)).status_code == 404
    assert len((await client.get(url(ticket_id), headers=agent)).json()["items"]) == 2


async def test_delete_by_uploader_agent_or_admin(client, infra, admin_db, blob_dir):
    tenant = unique_tenant()
    ticket_id = await create_ticket(admin_db, tenant, "alice")
    alice = auth_headers(infra, tenant, ["requester"], "alice")
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    by_alice = (await upload(client, ticket_id, alice, b"mine")).json()
    by_agent = (await upload(client, ticket_id, agent, b"agent's")).json()

    # Alice sees the agent's file on her ticket but may not delete it.
    forbidden = await client.delete(url(ticket_id, f"/{by_agent['id']}"), headers=alice)
    assert forbidden.status_code == 403
    assert (await client.delete(url(ticket_id, f"/{by_alice['id']}"), headers=alice)).status_code == 204
    assert (await client.delete(url(ticket_id, f"/{by_agent['id']}"), headers=agent)).status_code == 204

    assert (await client.get(url(ticket_id, f"/{by_alice['id']}"), headers=alice)).status_code == 404
    assert (await client.delete(url(ticket_id, f"/{by_alice['id']}"), headers=alice)).status_code == 404
    assert await attachment_rows(admin_db, tenant) == []
    assert stored_files(blob_dir, tenant) == []


async def test_missing_blob_is_a_problem_not_a_broken_stream(client, infra, admin_db, blob_dir):
    tenant = unique_tenant()
    ticket_id = await create_ticket(admin_db, tenant)
    agent = auth_headers(infra, tenant, ["agent"])
    created = (await upload(client, ticket_id, agent, b"soon gone")).json()
    for path in stored_files(blob_dir, tenant):
        path.unlink()
    response = await client.get(url(ticket_id, f"/{created['id']}/content"), headers=agent)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_round_trip_through_an_s3_blob_store(infra, admin_db):
    with run_s3_server() as s3:
        settings = settings_for(
            infra,
            Settings,
            "tickets",
            blob_store="s3",
            s3_endpoint_url=s3.url,
            s3_bucket=s3.bucket,
            s3_access_key_id=s3.access_key_id,
            s3_secret_access_key=s3.secret_access_key,
            s3_prefix="attachments/",
        )
        tenant = unique_tenant()
        ticket_id = await create_ticket(admin_db, tenant)
        agent = auth_headers(infra, tenant, ["agent"])
        content = os.urandom(50_000)
        async with app_client(create_app(settings)) as s3_client:
            created = await upload(s3_client, ticket_id, agent, content, "현장 사진.png", "image/png")
            assert created.status_code == 201, created.text
            attachment_id = created.json()["id"]
            key = f"attachments/{tenant}/{ticket_id}/{attachment_id}"
            assert s3.boto().get_object(Bucket=s3.bucket, Key=key)["Body"].read() == content
            download = await s3_client.get(url(ticket_id, f"/{attachment_id}/content"), headers=agent)
            assert download.content == content
            assert (
                await s3_client.delete(url(ticket_id, f"/{attachment_id}"), headers=agent)
            ).status_code == 204
            assert s3.boto().list_objects_v2(Bucket=s3.bucket).get("KeyCount", 0) == 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\김철수\\Desktop\\견적서.xlsx", "견적서.xlsx"),
        ("report\r\nX-Evil: 1.pdf", "reportX-Evil: 1.pdf"),
        ("invoice\u202egpj.exe", "invoicegpj.exe"),
        (unicodedata.normalize("NFD", "한글.txt"), "한글.txt"),
        ("  ..  ", "attachment"),
        ("", "attachment"),
        ("a" * 300 + ".pdf", "a" * 251 + ".pdf"),
    ],
)
def test_filenames_are_sanitised_but_keep_unicode(raw, expected):
    assert sanitize_filename(raw) == expected


def test_content_type_keeps_only_the_charset_and_guesses_octet_stream():
    assert normalize_content_type("Text/Plain; charset=UTF-8; x=1", "a.txt") == (
        "text/plain; charset=utf-8",
        "text/plain",
    )
    assert normalize_content_type("application/octet-stream", "scan.pdf") == (PDF, PDF)
    assert normalize_content_type(None, "noext")[1] == "application/octet-stream"


async def test_a_slow_upload_holds_no_database_connection(infra, admin_db, blob_dir):
    """While a file streams in, the service's one pooled connection stays free for others."""
    settings = settings_for(
        infra, Settings, "tickets", blob_local_dir=str(blob_dir), db_pool_size=1, db_max_overflow=0
    )
    tenant = unique_tenant()
    ticket_id = await create_ticket(admin_db, tenant)
    headers = auth_headers(infra, tenant, ["agent"])
    streaming, finish = asyncio.Event(), asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield (
            b'--slow\r\nContent-Disposition: form-data; name="file"; filename="scan.pdf"\r\n'
            b"Content-Type: application/pdf\r\n\r\n"
        )
        yield b"%PDF-1.7 first half "
        streaming.set()
        await finish.wait()  # the client is slow: the rest comes later
        yield b"second half"
        yield b"\r\n--slow--\r\n"

    async with app_client(create_app(settings)) as client:
        uploading = asyncio.create_task(
            client.post(
                url(ticket_id),
                content=slow_body(),
                headers={**headers, "Content-Type": "multipart/form-data; boundary=slow"},
            )
        )
        await asyncio.wait_for(streaming.wait(), 10)
        # Served while the upload waits for its client (a held connection would block it).
        other = await asyncio.wait_for(client.get(url(ticket_id), headers=headers), 5)
        assert other.status_code == 200, other.text
        finish.set()
        response = await asyncio.wait_for(uploading, 10)
    assert response.status_code == 201, response.text
    rows = await attachment_rows(admin_db, tenant)
    assert [row["size_bytes"] for row in rows] == [len(b"%PDF-1.7 first half second half")]


async def _sweep(infra, store, *, now: datetime) -> list[str]:
    engine = create_engine(settings_for(infra, Settings, "tickets"))
    try:
        return await sweep_orphans(create_session_factory(engine), store, grace=timedelta(days=1), now=now)
    finally:
        await engine.dispose()


async def test_sweep_deletes_old_orphaned_blobs_only(client, infra, admin_db, blob_dir):
    """A file whose row never committed goes after the grace period; nothing else is touched."""
    tenant = unique_tenant()
    ticket_id = await create_ticket(admin_db, tenant)
    created = await upload(client, ticket_id, auth_headers(infra, tenant, ["agent"]), b"%PDF kept")
    assert created.status_code == 201, created.text
    kept = blob_dir / tenant / ticket_id / created.json()["id"]
    old_orphan = blob_dir / tenant / ticket_id / str(uuid.uuid4())
    young_orphan = blob_dir / tenant / ticket_id / str(uuid.uuid4())
    foreign = blob_dir / tenant / "notes.txt"  # not a key of ours: never deleted
    killed_upload = blob_dir / tenant / ticket_id / ".upload-abc123.part"  # kill -9 mid-write
    young_upload = blob_dir / tenant / ticket_id / ".upload-def456.part"  # still being written
    for path in (old_orphan, young_orphan, foreign, killed_upload, young_upload):
        path.write_bytes(b"x")
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).timestamp()
    for path in (kept, old_orphan, foreign, killed_upload):
        os.utime(path, (two_days_ago, two_days_ago))

    deleted = await _sweep(infra, LocalBlobStore(blob_dir), now=datetime.now(UTC))

    assert deleted == [f"{tenant}/{ticket_id}/{old_orphan.name}"]
    assert sorted(path.name for path in stored_files(blob_dir, tenant)) == sorted(
        [kept.name, young_orphan.name, foreign.name, young_upload.name]
    )


async def test_sweep_pages_through_an_s3_bucket(infra, admin_db):
    with run_s3_server() as s3:
        store = s3.store(prefix="attachments/")
        tenant = unique_tenant()
        ticket_id = await create_ticket(admin_db, tenant)
        kept_id, orphan_ids = uuid.uuid4(), [uuid.uuid4() for _ in range(3)]
        for attachment_id in (kept_id, *orphan_ids):
            await store.put(f"{tenant}/{ticket_id}/{attachment_id}", _chunks(b"bytes"))
        await admin_db.execute(
            "INSERT INTO tickets.attachments (id, tenant_id, ticket_id, filename, content_type,"
            " size_bytes, sha256, storage_key, uploaded_by)"
            " VALUES ($1, $2, $3::uuid, 'a.pdf', 'application/pdf', 5, 'x', $4, 'agent-1')",
            kept_id,
            tenant,
            ticket_id,
            f"{tenant}/{ticket_id}/{kept_id}",
        )
        listed = [key async for key, _ in store.list_keys(page_size=1)]  # one key per page
        assert len(listed) == 4
        # A day and more later, everything counts as old.
        deleted = await _sweep(infra, store, now=datetime.now(UTC) + timedelta(days=2))
        await store.close()
        assert sorted(deleted) == sorted(f"{tenant}/{ticket_id}/{i}" for i in orphan_ids)
        assert object_keys(s3) == [f"attachments/{tenant}/{ticket_id}/{kept_id}"]


async def test_sweep_aborts_s3_uploads_whose_process_died(infra, admin_db):
    with run_s3_server() as s3:
        store = s3.store(prefix="attachments/")
        tenant = unique_tenant()
        ticket_id = await create_ticket(admin_db, tenant)
        # What a process killed mid-upload leaves: started multipart uploads, never completed.
        ours = [f"attachments/{tenant}/{ticket_id}/{uuid.uuid4()}" for _ in range(3)]
        foreign = "attachments/backup.tar"  # not a key of ours: never touched
        for key in (*ours, foreign):
            s3.boto().create_multipart_upload(Bucket=s3.bucket, Key=key)
        await store.put(f"{tenant}/{ticket_id}/{uuid.uuid4()}", _chunks(b"complete"))

        # Started after the cutoff, an upload may still be running: kept. (moto reports every
        # upload as started 2010-11-10T20:48:33Z.)
        def anything(key: str) -> bool:
            return True

        before_them = datetime(2010, 1, 1, tzinfo=UTC)
        assert await store.remove_stale_partial_uploads(before_them, is_ours=anything) == 0
        assert sorted(pending_uploads(s3)) == sorted([*ours, foreign])

        # The sweep aborts the stale ones of attachment keys, listing them page by page.
        await _sweep(infra, store, now=datetime.now(UTC))
        assert pending_uploads(s3) == [foreign]
        s3.boto().create_multipart_upload(Bucket=s3.bucket, Key=ours[0])
        after_them = datetime.now(UTC)
        assert await store.remove_stale_partial_uploads(after_them, is_ours=anything, page_size=1) == 2
        await store.close()
        assert pending_uploads(s3) == []
        assert len(object_keys(s3)) == 1  # stored objects are not touched by it


async def _orphaned_file(admin_db, directory: Path) -> tuple[str, str, Path]:
    """(tenant, ticket id, path) of a stored file whose attachment row never committed."""
    tenant = unique_tenant()
    ticket_id = await create_ticket(admin_db, tenant)
    orphan = directory / tenant / ticket_id / str(uuid.uuid4())
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left behind by a crash")
    return tenant, ticket_id, orphan


async def test_one_process_sweeps_at_a_time(infra, admin_db, tmp_path):
    tenant, ticket_id, orphan = await _orphaned_file(admin_db, tmp_path)
    engine = create_engine(settings_for(infra, Settings, "tickets"))
    later = datetime.now(UTC) + timedelta(days=2)
    try:
        sweep = partial(
            sweep_if_first,
            engine,
            create_session_factory(engine),
            LocalBlobStore(tmp_path),
            grace=timedelta(days=1),
        )
        await admin_db.execute("SELECT pg_advisory_lock($1)", SWEEP_LOCK_KEY)  # another process sweeping
        try:
            assert await sweep(now=later) is None
            assert orphan.exists()
        finally:
            await admin_db.execute("SELECT pg_advisory_unlock($1)", SWEEP_LOCK_KEY)
        assert await sweep(now=later) == [f"{tenant}/{ticket_id}/{orphan.name}"]
        assert await admin_db.fetchval("SELECT pg_try_advisory_lock($1)", SWEEP_LOCK_KEY)  # given back
        await admin_db.execute("SELECT pg_advisory_unlock($1)", SWEEP_LOCK_KEY)
    finally:
        await engine.dispose()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_the_service_sweeps_on_its_own(infra, admin_db, tmp_path):
    _, _, orphan = await _orphaned_file(admin_db, tmp_path)
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).timestamp()
    os.utime(orphan, (two_days_ago, two_days_ago))
    settings = settings_for(
        infra, Settings, "tickets", blob_local_dir=str(tmp_path), blob_sweep_interval_s=0.2
    )
    async with app_client(create_app(settings)):

        async def swept() -> bool:
            return not orphan.exists()

        await wait_until(swept, timeout=15)


def requesters_and_agent(infra) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Headers of alice and bob (requesters) and an agent, in a new tenant."""
    tenant = unique_tenant()
    people = [(["requester"], "alice"), (["requester"], "bob"), (["agent"], "agent-1")]
    alice, bob, agent = (auth_headers(infra, tenant, roles, user) for roles, user in people)
    return alice, bob, agent


async def attachment_ids(client, ticket_id: str, headers: dict[str, str]) -> list[str]:
    return [a["id"] for a in (await client.get(url(ticket_id), headers=headers)).json()["items"]]


async def test_a_merge_across_requesters_keeps_their_replies_and_files_private(client, infra):
    """Merging alice's ticket into bob's must not show bob alice's conversation: the public replies
    become internal notes and her loose files stay on her (merged) ticket, where agents find them."""
    alice, bob, agent = requesters_and_agent(infra)
    alices = await api_create_ticket(client, alice, subject="water dripping from the ceiling in 301")
    bobs = await api_create_ticket(client, bob, subject="ceiling leak on the 3rd floor")
    reply = await add_comment(client, agent, alices["id"], "Alice, the plumber comes to unit 301 at 3pm")
    invoice = (await upload(client, alices["id"], agent, b"invoice", data={"comment_id": reply["id"]})).json()
    photo = (await upload(client, alices["id"], alice, b"photo of alice's ceiling")).json()

    merged = await client.post(
        f"/api/v1/tickets/{alices['id']}/merge", json={"into_ticket_id": bobs["id"]}, headers=agent
    )
    assert merged.status_code == 200, merged.text

    comments_url = f"/api/v1/tickets/{bobs['id']}/comments"
    assert (await client.get(comments_url, headers=bob)).json()["items"] == []
    as_agent = (await client.get(comments_url, headers=agent)).json()["items"]
    assert [(c["body"], c["visibility"]) for c in as_agent] == [(reply["body"], "internal")]
    assert (await client.get(url(bobs["id"]), headers=bob)).json()["items"] == []
    assert await attachment_ids(client, bobs["id"], agent) == [invoice["id"]]
    assert await attachment_ids(client, alices["id"], agent) == [photo["id"]]
    searched = await client.get("/api/v1/tickets", params={"q": "plumber"}, headers=bob)
    assert searched.json()["items"] == []
    events = await admin_fetch(
        infra,
        "SELECT (payload->'data'->>'moved_comments')::int AS moved,"
        " (payload->'data'->>'made_internal')::int AS made_internal FROM tickets.outbox"
        " WHERE aggregate_id = $1 "
        "AND payload->>'type' = 'helpdesk.tickets.ticket.merged.v1'",
        alices["id"],
    )
    assert [(e["moved"], e["made_internal"]) for e in events] == [(1, 1)]


async def test_a_merge_across_requesters_may_keep_the_replies_public(client, infra):
    alice, bob, agent = requesters_and_agent(infra)
    alices = await api_create_ticket(client, alice, subject="lobby lights flicker")
    bobs = await api_create_ticket(client, bob, subject="lobby lights off")
    reply = await add_comment(client, agent, alices["id"], "The electrician checks the whole lobby today")
    note = await add_comment(client, agent, alices["id"], "breaker 4 again", "internal")
    photo = (await upload(client, alices["id"], alice, b"photo of the lobby")).json()

    merged = await client.post(
        f"/api/v1/tickets/{alices['id']}/merge",
        json={"into_ticket_id": bobs["id"], "keep_public_comments": True},
        headers=agent,
    )
    assert merged.status_code == 200, merged.text
    as_bob = (await client.get(f"/api/v1/tickets/{bobs['id']}/comments", headers=bob)).json()["items"]
    assert [c["id"] for c in as_bob] == [reply["id"]]  # the internal note stays internal
    assert note["id"] not in [c["id"] for c in as_bob]
    assert [a["id"] for a in (await client.get(url(bobs["id"]), headers=bob)).json()["items"]] == [
        photo["id"]
    ]

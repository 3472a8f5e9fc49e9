"""Blob stores: the local directory, and S3 against a real S3-compatible server (moto's).

The S3 server checks every request's SigV4 signature (moto's IAM auth, which signs with
botocore), so a wrong signature fails here as it would on AWS.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest

from services.tickets.attachments.blobstore import (
    BlobNotFoundError,
    BlobStoreError,
    LocalBlobStore,
    S3BlobStore,
    sign_request_v4,
)

MiB = 1024 * 1024


async def stream(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def failing_stream(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    raise RuntimeError("client went away")


async def read_all(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


# -- local -------------------------------------------------------------------------------------


async def test_local_store_round_trip_counts_size_and_sha256(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    data = os.urandom(3 * MiB + 17)
    pieces = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    stored = await store.put("acme/t1/a1", stream(*pieces))
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert await read_all(store.open("acme/t1/a1")) == data
    assert (tmp_path / "blobs" / "acme" / "t1" / "a1").read_bytes() == data


async def test_local_store_failed_put_leaves_no_file_and_no_temp_file(tmp_path):
    store = LocalBlobStore(tmp_path)
    with pytest.raises(RuntimeError):
        await store.put("acme/t1/a1", failing_stream(b"x" * (2 * MiB)))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


async def test_local_store_failed_overwrite_keeps_the_old_content(tmp_path):
    store = LocalBlobStore(tmp_path)
    await store.put("acme/t1/a1", stream(b"old"))
    with pytest.raises(RuntimeError):
        await store.put("acme/t1/a1", failing_stream(b"new"))
    assert await read_all(store.open("acme/t1/a1")) == b"old"


@pytest.mark.parametrize(
    "key", ["../escape", "/etc/passwd", "a/../../b", "a/./b", ".hidden", "a\\b", "", "a//b"]
)
async def test_local_store_keys_cannot_escape_the_directory(tmp_path, key):
    store = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(ValueError):
        await store.put(key, stream(b"x"))
    with pytest.raises(ValueError):
        await store.delete(key)
    assert not (tmp_path / "escape").exists()


async def test_local_store_symlink_out_of_the_directory_is_refused(tmp_path):
    root, outside = tmp_path / "blobs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "acme").symlink_to(outside)
    store = LocalBlobStore(root)
    with pytest.raises(ValueError):
        await store.put("acme/x", stream(b"x"))
    assert list(outside.iterdir()) == []


async def test_local_store_missing_key_and_idempotent_delete(tmp_path):
    store = LocalBlobStore(tmp_path)
    with pytest.raises(BlobNotFoundError):
        await read_all(store.open("acme/none"))
    await store.put("acme/a", stream(b"1"))
    await store.delete("acme/a")
    await store.delete("acme/a")
    with pytest.raises(BlobNotFoundError):
        await read_all(store.open("acme/a"))


# -- SigV4 -------------------------------------------------------------------------------------


def test_sigv4_matches_the_aws_documentation_example():
    # "Example: GET Object" from the S3 docs (Signature V4, Authorization header).
    request = httpx.Request(
        "GET", "https://examplebucket.s3.amazonaws.com/test.txt", headers={"Range": "bytes=0-9"}
    )
    sign_request_v4(
        request,
        access_key_id="AKIAIOSFODNN7EXAMPLE",
        secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        region="us-east-1",
        payload_sha256=hashlib.sha256(b"").hexdigest(),
        now=datetime(2013, 5, 24, tzinfo=UTC),
    )
    assert request.headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


# -- S3 against a real server ------------------------------------------------------------------


@dataclass
class S3Server:
    url: str
    access_key_id: str
    secret_access_key: str
    bucket: str

    def boto(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name="us-east-1",
        )

    def store(self, **overrides) -> S3BlobStore:
        options = {
            "bucket": self.bucket,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "endpoint_url": self.url,
            "part_size": 5 * MiB,
        }
        options.update(overrides)
        return S3BlobStore(**options)


@contextlib.contextmanager
def run_s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, with signature checking switched on."""
    import boto3
    from moto import settings as moto_settings
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    saved = moto_settings.INITIAL_NO_AUTH_ACTION_COUNT
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        # While auth is off: a user with S3 rights and its key, and the bucket.
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
        iam = boto3.client(
            "iam", endpoint_url=url, aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1"
        )
        # moto keeps its state per process, shared by every server started in it: fresh names.
        user = f"helpdesk-{uuid.uuid4().hex[:12]}"
        iam.create_user(UserName=user)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        s3 = S3Server(url, key["AccessKeyId"], key["SecretAccessKey"], f"attachments-{user}")
        s3.boto().create_bucket(Bucket=s3.bucket)
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
        yield s3
    finally:
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = saved
        server.stop()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with run_s3_server() as server:
        yield server


def object_keys(s3: S3Server) -> list[str]:
    return [item["Key"] for item in s3.boto().list_objects_v2(Bucket=s3.bucket).get("Contents", [])]


def pending_uploads(s3: S3Server) -> list[str]:
    return [item["Key"] for item in s3.boto().list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])]


async def test_s3_small_file_is_one_put_and_streams_back(s3_server):
    store = s3_server.store(prefix="att/")
    try:
        data = bytes(range(256)) * 40
        stored = await store.put("acme/t1/small", stream(data[:1000], data[1000:]))
        assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert "att/acme/t1/small" in object_keys(s3_server)
        assert await read_all(store.open("acme/t1/small")) == data
    finally:
        await store.close()


async def test_s3_large_file_goes_up_in_parts(s3_server):
    store = s3_server.store()
    try:
        data = os.urandom(11 * MiB + 5)  # 5 MiB + 5 MiB + a short last part
        pieces = [data[i : i + 256 * 1024] for i in range(0, len(data), 256 * 1024)]
        stored = await store.put("acme/t1/large", stream(*pieces))
        assert stored.sha256 == hashlib.sha256(data).hexdigest()
        head = s3_server.boto().head_object(Bucket=s3_server.bucket, Key="acme/t1/large")
        assert head["ContentLength"] == len(data)
        assert head["ETag"].strip('"').endswith("-3")  # a multipart object of three parts
        assert await read_all(store.open("acme/t1/large")) == data
    finally:
        await store.close()


async def test_s3_failed_multipart_upload_is_aborted_and_leaves_no_object(s3_server):
    store = s3_server.store()
    try:
        with pytest.raises(RuntimeError):
            await store.put("acme/t1/broken", failing_stream(b"x" * (6 * MiB)))
        assert "acme/t1/broken" not in object_keys(s3_server)
        assert "acme/t1/broken" not in pending_uploads(s3_server)
        with pytest.raises(RuntimeError):
            await store.put("acme/t1/broken-small", failing_stream(b"x" * 100))
        assert "acme/t1/broken-small" not in object_keys(s3_server)
    finally:
        await store.close()


async def test_s3_missing_object_delete_and_wrong_secret(s3_server):
    store = s3_server.store()
    wrong = s3_server.store(secret_access_key="not-the-secret")
    try:
        with pytest.raises(BlobNotFoundError):
            await read_all(store.open("acme/none"))
        await store.put("acme/t1/gone", stream(b"bye"))
        await store.delete("acme/t1/gone")
        await store.delete("acme/t1/gone")  # deleting twice is fine
        assert "acme/t1/gone" not in object_keys(s3_server)
        with pytest.raises(BlobStoreError, match="403"):
            await wrong.put("acme/t1/forged", stream(b"x"))
        assert "acme/t1/forged" not in object_keys(s3_server)
    finally:
        await store.close()
        await wrong.close()


async def test_s3_unreachable_server_is_a_blob_store_error():
    store = S3BlobStore(
        bucket="b", access_key_id="a", secret_access_key="s", endpoint_url="http://127.0.0.1:9", timeout_s=2
    )
    try:
        with pytest.raises(BlobStoreError):
            await store.put("acme/x", stream(b"x"))
        with pytest.raises(BlobStoreError):
            await read_all(store.open("acme/x"))
    finally:
        await store.close()

"""The object-store contract, run against memory://, file:// and s3:// (moto), plus wrappers."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import obstore
import pytest
from obstore.exceptions import GenericError
from obstore.store import LocalStore, MemoryStore, S3Store

from tidelog.objectstore.base import (
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
)
from tidelog.objectstore.faulty import FaultyObjectStore
from tidelog.objectstore.obstore_store import ObstoreObjectStore
from tidelog.objectstore.uri import open_object_store

MiB = 1024 * 1024
BACKENDS = ["memory", "file", "s3"]


def s3_uri(moto: dict[str, Any], prefix: str) -> str:
    return str(moto["uri"]).replace("?", f"/{prefix}?", 1)


def open_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if kind == "memory":
        return open_object_store("memory://")
    if kind == "file":
        return open_object_store(f"file://{tmp_path}/objects")
    moto = request.getfixturevalue("moto_s3")  # started only when an s3 case runs
    return open_object_store(s3_uri(moto, f"t-{uuid.uuid4().hex}"))


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    s = open_backend(request.param, request, tmp_path)
    yield s
    await s.close()


# --- contract ---------------------------------------------------------------------------


async def test_put_get_roundtrip(store: ObjectStore) -> None:
    await store.put("a/b/obj", b"hello world")
    assert await store.get("a/b/obj") == b"hello world"
    await store.put("mv", memoryview(b"0123456789")[2:6])
    assert await store.get("mv") == b"2345"


async def test_put_overwrites(store: ObjectStore) -> None:
    await store.put("k", b"first")
    await store.put("k", b"second")
    assert await store.get("k") == b"second"


async def test_put_sequence_of_buffers(store: ObjectStore) -> None:
    await store.put("seq", [b"abc", memoryview(b"xdefx")[1:4], bytes(0), b"ghi"])
    assert await store.get("seq") == b"abcdefghi"
    await store.put("one", [memoryview(b"solo")])
    assert await store.get("one") == b"solo"
    await store.put("ba", bytearray(b"mutable"))  # a bytearray is one buffer, not a sequence
    assert await store.get("ba") == b"mutable"


async def test_empty_object(store: ObjectStore) -> None:
    await store.put("empty", b"")
    assert await store.get("empty") == b""
    assert await store.size("empty") == 0


async def test_get_range(store: ObjectStore) -> None:
    data = bytes(range(256)) * 4
    await store.put("r", data)
    assert await store.get_range("r", 0, 10) == data[:10]
    assert await store.get_range("r", 100, 612) == data[100:612]
    assert await store.get_range("r", 1000, 1024) == data[1000:]
    assert await store.get_range("r", 1000, 5000) == data[1000:]  # clamped to the end
    assert await store.get_range("r", 7, 7) == b""
    with pytest.raises(ValueError):
        await store.get_range("r", 10, 5)
    with pytest.raises(ValueError):
        await store.get_range("r", -1, 5)


async def test_size(store: ObjectStore) -> None:
    await store.put("s", b"x" * 12345)
    assert await store.size("s") == 12345


async def test_put_if_absent(store: ObjectStore) -> None:
    await store.put_if_absent("fence", b"epoch-1")
    with pytest.raises(ObjectExistsError):
        await store.put_if_absent("fence", b"epoch-2")
    assert await store.get("fence") == b"epoch-1"
    await store.put_if_absent("fence2", memoryview(b"mv"))
    assert await store.get("fence2") == b"mv"


async def test_missing_key(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        await store.get("nope")
    with pytest.raises(ObjectNotFoundError):
        await store.get_range("nope", 0, 10)
    with pytest.raises(ObjectNotFoundError):
        await store.size("dir/nope")


async def test_delete_is_idempotent(store: ObjectStore) -> None:
    await store.put("d/k", b"x")
    await store.delete("d/k")
    with pytest.raises(ObjectNotFoundError):
        await store.get("d/k")
    await store.delete("d/k")
    await store.delete("never/existed")


async def test_list_by_prefix(store: ObjectStore) -> None:
    for key in ["a/b/1", "a/b/2", "a/bc/3", "a/b/deep/4", "ab", "x"]:
        await store.put(key, b"v")
    assert await store.list() == ["a/b/1", "a/b/2", "a/b/deep/4", "a/bc/3", "ab", "x"]
    assert await store.list("a/b/") == ["a/b/1", "a/b/2", "a/b/deep/4"]
    assert await store.list("a/b") == ["a/b/1", "a/b/2", "a/b/deep/4", "a/bc/3"]
    assert await store.list("a") == ["a/b/1", "a/b/2", "a/b/deep/4", "a/bc/3", "ab"]
    assert await store.list("a/b/1") == ["a/b/1"]
    assert await store.list("zz/") == []
    assert await store.list("a/b/d") == ["a/b/deep/4"]


async def test_invalid_key_is_a_store_error(store: ObjectStore) -> None:
    with pytest.raises(ObjectStoreError):
        await store.put("a//b", b"x")
    with pytest.raises(ObjectStoreError):
        await store.get("../escape")


# --- key prefixes -----------------------------------------------------------------------


async def test_s3_prefix_isolation(moto_s3: dict[str, Any]) -> None:
    base = f"iso-{uuid.uuid4().hex}"
    one = open_object_store(s3_uri(moto_s3, f"{base}/one"))
    two = open_object_store(s3_uri(moto_s3, f"{base}/two"))
    root = open_object_store(s3_uri(moto_s3, base))
    await one.put("k", b"1")
    await two.put("k", b"2")
    assert await one.get("k") == b"1"
    assert await two.get("k") == b"2"
    assert await one.list() == ["k"]
    assert await root.list() == ["one/k", "two/k"]
    await one.delete("k")
    assert await two.get("k") == b"2"


async def test_file_prefix_isolation(tmp_path: Path) -> None:
    one = open_object_store(f"file://{tmp_path}/one")
    root = open_object_store(f"file://{tmp_path}")
    await one.put("a/k", b"1")
    assert (tmp_path / "one" / "a" / "k").read_bytes() == b"1"
    assert await root.list() == ["one/a/k"]
    assert await one.list() == ["a/k"]


# --- large and multipart puts -----------------------------------------------------------


@pytest.mark.parametrize("kind", BACKENDS)
async def test_multipart_put(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    backend: Any
    if kind == "memory":
        backend = MemoryStore()
    elif kind == "file":
        backend = LocalStore(tmp_path)
    else:
        moto = request.getfixturevalue("moto_s3")
        backend = S3Store(
            moto["bucket"],
            prefix=f"mp-{uuid.uuid4().hex}",
            endpoint=moto["endpoint"],
            region=moto["region"],
            access_key_id=moto["access_key_id"],
            secret_access_key=moto["secret_access_key"],
            client_options={"allow_http": True},
        )
    store = ObstoreObjectStore(backend, multipart_threshold=6 * MiB, part_size=5 * MiB)
    parts = [bytes([i]) * MiB for i in range(11)]  # 11 MiB: three 5 MiB-or-less parts
    await store.put("big", [memoryview(p) for p in parts])
    assert await store.get("big") == b"".join(parts)
    await store.put("big1", parts[0] * 7)  # one buffer over the threshold
    assert await store.size("big1") == 7 * MiB


# --- retries ----------------------------------------------------------------------------


def flaky(
    real: Callable[..., Awaitable[Any]], failures: int, *, land: bool = False
) -> tuple[Callable[..., Awaitable[Any]], list[int]]:
    """Wrap an obstore call so its first `failures` calls raise a transient error.

    With `land`, the failing calls still reach the store first (a lost response).
    """
    calls = [0]

    async def call(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] <= failures:
            if land:
                await real(*args, **kwargs)
            raise GenericError("transient: connection reset")
        return await real(*args, **kwargs)

    return call, calls


async def test_transient_errors_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ObstoreObjectStore(MemoryStore(), attempts=3, backoff=0.001)
    put, calls = flaky(obstore.put_async, 2)
    monkeypatch.setattr(obstore, "put_async", put)
    await store.put("k", b"v")
    assert calls[0] == 3
    assert await store.get("k") == b"v"


async def test_retries_give_up_with_store_error(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ObstoreObjectStore(MemoryStore(), attempts=2, backoff=0.001)
    get, calls = flaky(obstore.get_async, 5)
    monkeypatch.setattr(obstore, "get_async", get)
    with pytest.raises(ObjectStoreError, match="2 attempts") as info:
        await store.get("k")
    assert calls[0] == 2
    assert isinstance(info.value.__cause__, GenericError)


async def test_not_found_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ObstoreObjectStore(MemoryStore(), attempts=5, backoff=0.001)
    head, calls = flaky(obstore.head_async, 0)
    monkeypatch.setattr(obstore, "head_async", head)
    with pytest.raises(ObjectNotFoundError):
        await store.size("missing")
    assert calls[0] == 1


async def test_put_if_absent_retry_after_lost_response(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ObstoreObjectStore(MemoryStore(), attempts=3, backoff=0.001)
    put, calls = flaky(obstore.put_async, 1, land=True)
    monkeypatch.setattr(obstore, "put_async", put)
    await store.put_if_absent("fence", b"mine")  # 2nd attempt finds its own bytes
    assert calls[0] == 2
    put, calls = flaky(obstore.put_async, 1, land=False)
    monkeypatch.setattr(obstore, "put_async", put)
    with pytest.raises(ObjectExistsError):
        await store.put_if_absent("fence", b"other")  # someone else's bytes: a real conflict


async def test_unreachable_endpoint_fails_with_store_error() -> None:
    store = open_object_store(
        "s3://bucket/p",
        endpoint="http://127.0.0.1:9",
        access_key_id="x",
        secret_access_key="y",
        attempts="2",
        max_retries="0",
    )
    start = time.monotonic()
    with pytest.raises(ObjectStoreError, match="2 attempts"):
        await store.get("k")
    assert time.monotonic() - start < 5


# --- URIs -------------------------------------------------------------------------------


async def test_relative_file_uri_is_created_under_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_object_store("file://./data/objects")
    assert (tmp_path / "data" / "objects").is_dir()
    await store.put("k", b"v")
    assert (tmp_path / "data" / "objects" / "k").read_bytes() == b"v"


async def test_absolute_file_uri(tmp_path: Path) -> None:
    store = open_object_store(f"file://{tmp_path}/deep/er")
    await store.put("k", b"v")
    assert (tmp_path / "deep" / "er" / "k").read_bytes() == b"v"


async def test_s3_options_from_kwargs_override_query(moto_s3: dict[str, Any]) -> None:
    uri = f"s3://{moto_s3['bucket']}/kw-{uuid.uuid4().hex}?endpoint=http://127.0.0.1:9"
    store = open_object_store(uri, **moto_s3["options"])
    await store.put("k", b"v")
    assert await store.get("k") == b"v"


async def test_s3_options_from_environment(
    moto_s3: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3["endpoint"])
    monkeypatch.setenv("AWS_REGION", moto_s3["region"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3["access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3["secret_access_key"])
    store = open_object_store(f"s3://{moto_s3['bucket']}/env-{uuid.uuid4().hex}")
    await store.put("k", b"v")
    assert await store.list() == ["k"]


def test_cloud_uris_build_without_network() -> None:
    assert "gs://bucket/p" in repr(open_object_store("gs://bucket/p"))
    store = open_object_store("az://container/p", account_name="acct")
    assert "az://container/p" in repr(store)


@pytest.mark.parametrize(
    ("uri", "options"),
    [
        ("ftp://host/x", {}),
        ("memory://name", {}),
        ("memory://", {"endpoint": "x"}),
        ("file:///tmp/x?bogus=1", {}),
        ("s3://", {}),
        ("s3://bucket", {"bogus_option": "1"}),
        ("s3://bucket", {"timeout": "not-a-duration"}),
        ("s3://bucket", {"attempts": "many"}),
        ("s3://bucket", {"attempts": "0"}),
        ("az://container", {}),
    ],
)
def test_bad_uris_raise_value_error(uri: str, options: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        open_object_store(uri, **options)


def test_repr_hides_secrets() -> None:
    uri = "s3://b/p?access_key_id=me&secret_access_key=hunter2&endpoint=https://s3.example"
    store = open_object_store(uri)
    assert "hunter2" not in repr(store)


# --- fault injection --------------------------------------------------------------------


@pytest.fixture
def faulty() -> FaultyObjectStore:
    return FaultyObjectStore(open_object_store("memory://"))


async def test_faulty_counts_requests_and_bytes(faulty: FaultyObjectStore) -> None:
    await faulty.put("a", [b"12", b"345"])
    await faulty.put_if_absent("b", b"6")
    await faulty.get("a")
    await faulty.get_range("a", 1, 3)
    await faulty.size("a")
    await faulty.list()
    await faulty.delete("a")
    assert faulty.requests == {
        "put": 2,
        "get": 1,
        "get_range": 1,
        "head": 1,
        "list": 1,
        "delete": 1,
    }
    assert faulty.bytes_put == 6
    assert faulty.bytes_got == 7


async def test_faulty_fails_next_n(faulty: FaultyObjectStore) -> None:
    faulty.fail_next("put", 2)
    for _ in range(2):
        with pytest.raises(ObjectStoreError, match="injected put"):
            await faulty.put("k", b"v")
    assert await faulty.list() == []  # failed before reaching the store
    await faulty.put("k", b"v")
    assert faulty.requests["put"] == 3
    faulty.fail_next(["get", "get_range"])
    with pytest.raises(ObjectStoreError):
        await faulty.get("k")
    with pytest.raises(ObjectStoreError):
        await faulty.get_range("k", 0, 1)
    assert await faulty.get("k") == b"v"


async def test_faulty_after_fault_lands_the_write(faulty: FaultyObjectStore) -> None:
    faulty.fail_next("put", after=True)
    with pytest.raises(ObjectStoreError, match="after"):
        await faulty.put_if_absent("k", b"v")
    assert await faulty.get("k") == b"v"


async def test_faulty_custom_error_and_clear(faulty: FaultyObjectStore) -> None:
    faulty.fail_next("delete", error=ObjectNotFoundError("gone"))
    faulty.fail_next("list", 3)
    assert faulty.pending_faults("list") == 3
    with pytest.raises(ObjectNotFoundError, match="gone"):
        await faulty.delete("k")
    faulty.clear_faults()
    assert await faulty.list() == []
    with pytest.raises(ValueError):
        faulty.fail_next("rename")


async def test_faulty_latency(faulty: FaultyObjectStore) -> None:
    faulty.latency = 0.05
    start = time.monotonic()
    await faulty.put("k", b"v")
    await faulty.get("k")
    assert time.monotonic() - start >= 0.1

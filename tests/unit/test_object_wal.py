"""ObjectWAL specifics: object format, group commit, deletes, recovery, fencing, retries.

The contract itself runs in test_wal_contract.py; here the store is an in-memory one and,
where the store's own behaviour matters (create-only PUTs), S3 on moto.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tidelog.objectstore.base import ObjectStore
from tidelog.objectstore.faulty import FaultyObjectStore
from tidelog.objectstore.latency import LatencyObjectStore, LatencyProfile
from tidelog.objectstore.uri import open_object_store
from tidelog.stream.wal.base import WalError, WalFencedError, WalRecord
from tidelog.stream.wal.object_wal import ObjectWAL
from tidelog.stream.wal.object_wal_format import (
    HEADER_SIZE,
    ObjectHeader,
    PendingRecord,
    decode_header,
    decode_records,
    encode_object,
    object_key,
    parse_key,
)
from tidelog.stream.wal.ring_format import RECORD_HEADER_SIZE

MiB = 1 << 20
Hook = Callable[[], Awaitable[None]]


class GatedStore(FaultyObjectStore):
    """Counts and fails like `FaultyObjectStore`; a test can also run a hook before the next
    create-only PUT or after the next LIST, to interleave two writers exactly."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.before_put: Hook | None = None
        self.after_list: Hook | None = None

    async def put_if_absent(self, key: str, data: bytes | memoryview) -> None:
        hook, self.before_put = self.before_put, None
        if hook is not None:
            await hook()
        await super().put_if_absent(key, data)

    async def list(self, prefix: str = "") -> list[str]:
        keys = await super().list(prefix)
        hook, self.after_list = self.after_list, None
        if hook is not None:
            await hook()
        return keys


@pytest.fixture(params=["memory", "s3"])
def backend(request: pytest.FixtureRequest) -> ObjectStore:
    if request.param == "s3":
        moto = request.getfixturevalue("moto_s3")
        return open_object_store(str(moto["uri"]).replace("?", f"/w-{uuid.uuid4().hex}?", 1))
    return open_object_store("memory://")


async def opened(store: ObjectStore, epoch: int = 1, **options: Any) -> ObjectWAL:
    options.setdefault("batch_interval", 0.001)
    wal = ObjectWAL(store, **options)
    await wal.open(epoch)
    return wal


def records(wal: ObjectWAL) -> list[tuple[int, bytes]]:
    return [(r.base_offset, r.payload) for r in wal.recover()]


async def wal_keys(store: ObjectStore) -> list[int]:
    return sorted(s for k in await store.list() if (s := parse_key(k)) is not None)


async def settle(wal: ObjectWAL) -> None:
    """Let the background deleter finish."""
    await asyncio.sleep(0)
    while wal._deleter is not None:
        await asyncio.sleep(0.01)


# --- format ---


def test_object_golden_bytes() -> None:
    body = encode_object(7, 3, 100, 0x1000, [PendingRecord(5, 2, 10, 12, b"abc", 0x1000)])
    assert body == bytes.fromhex(
        "544c574f"  # magic "TLWO"
        "0001" "0000"  # version, reserved
        "0000000000000007"  # epoch
        "0000000000000003"  # sequence
        "0000000000001000"  # start position
        "0000000000001039"  # end position: start + 54-byte record header + 3
        "0000000000000064"  # trim
        "00000001"  # records
        "a9079379"  # crc32c of the header so far
        # one ring-format record: magic, crc32c, kind data, length 3, session 0, position,
        # stream id 5, stream epoch 2, offsets 10..12, payload
        "a15316a0a6" "01" "00000003" "00000000" "0000000000001000" "0000000000000005"
        "0000000000000002" "000000000000000a" "000000000000000c" "616263"
    )
    header = decode_header(body, 3)
    assert header == ObjectHeader(7, 3, 0x1000, 0x1039, 100, 1)
    assert list(decode_records(body, header)) == [
        WalRecord(5, 2, 10, 12, b"abc", 0x1000, 0x1000 + RECORD_HEADER_SIZE + 3)
    ]
    marker = encode_object(9, 4, 0x1039, 0x1039, [])
    assert marker == bytes.fromhex(
        "544c574f000100000000000000000009000000000000000400000000000010390000000000001039"
        "000000000000103900000000098fef40"
    )
    assert len(marker) == HEADER_SIZE
    assert object_key(42) == "00000000000000000042.wal"
    assert parse_key("a/b/00000000000000000042.wal") == 42
    assert parse_key("00000000000000000042.tmp") is None


def test_corrupt_objects_are_refused() -> None:
    body = bytearray(encode_object(1, 0, 0, 0, [PendingRecord(1, 1, 0, 0, b"x" * 10, 0)]))
    with pytest.raises(WalError):
        decode_header(body, 1)  # the key says another sequence number
    body[-1] ^= 1
    header = decode_header(body, 0)
    with pytest.raises(WalError):
        list(decode_records(body, header))
    body[10] ^= 1
    with pytest.raises(WalError):
        decode_header(body, 0)


# --- group commit ---


async def test_a_group_is_one_put() -> None:
    store = GatedStore(open_object_store("memory://"))
    wal = await opened(store, batch_interval=0.05)
    puts = store.requests["put"]
    ends = await asyncio.gather(*(wal.append(1, 1, i, i, b"p" * 100) for i in range(300)))
    assert ends == sorted(ends)
    assert store.requests["put"] - puts == wal.stats.groups == 1
    assert wal.stats.records == 300
    assert wal.stats.bytes == store.bytes_put  # the claim, then the group
    await wal.close()


async def test_batch_bytes_puts_before_the_interval() -> None:
    """With an hour-long interval, only the byte threshold can complete these appends."""
    store = GatedStore(open_object_store("memory://"))
    payload = b"x" * (16 << 10)
    record = RECORD_HEADER_SIZE + len(payload)
    wal = await opened(store, batch_interval=3600, batch_bytes=4 * record)
    done = await asyncio.wait_for(
        asyncio.gather(*(wal.append(1, 1, i, i, payload) for i in range(12))), 60
    )
    assert len(done) == 12 and wal.stats.groups == 3
    assert wal.stats.group_bytes.count == 3
    await wal.close()


# --- trimming and deletes ---


async def test_trimmed_objects_are_deleted_but_never_the_newest(backend: ObjectStore) -> None:
    wal = await opened(backend)
    ends = [await wal.append(1, 1, i, i, b"r%d" % i) for i in range(6)]
    await settle(wal)
    # One object per append; the claim (object 0, no records) went once object 1 existed.
    assert await wal_keys(backend) == list(range(1, 7))
    await wal.trim(ends[2])
    await settle(wal)
    assert await wal_keys(backend) == [4, 5, 6]
    await wal.trim(ends[5])
    while wal._deleter is not None or len(await wal_keys(backend)) > 1:
        await asyncio.sleep(0.01)
    assert await wal_keys(backend) == [6]  # the newest stays: it holds the next number
    await wal.close()  # writes the trim in a marker; the last data object goes
    assert await wal_keys(backend) == [7]
    wal = await opened(backend, epoch=2)
    assert records(wal) == [] and wal.trim_position == wal.end_position == ends[5]
    await wal.close()


@pytest.mark.parametrize("deletes_fail", [False, True])
async def test_crash_recovery_after_an_unrecorded_trim(deletes_fail: bool) -> None:
    inner = open_object_store("memory://")
    store = GatedStore(inner)
    wal = await opened(store)
    ends = [await wal.append(1, 1, i, i, b"r%d" % i) for i in range(10)]
    await wal.trim(ends[3])
    await settle(wal)
    tail = [await wal.append(2, 1, i, i, b"t%d" % i) for i in range(2)]  # record ends[3]
    if deletes_fail:
        store.fail_next("delete", 100)
    await wal.trim(ends[6])  # not recorded in any object: a crash follows (no close)
    await settle(wal)

    again = await opened(inner, epoch=2)
    got = records(again)
    assert got[-2:] == [(0, b"t0"), (1, b"t1")]
    if deletes_fail:
        # From the recorded trim: records 4-6 come back although uploaded (the engine
        # already has them in objects and skips them); nothing acknowledged is missing.
        assert [b for b, _ in got[:-2]] == list(range(4, 10))
        assert again.trim_position == ends[3]
    else:  # the deleted objects tell the trim
        assert [b for b, _ in got[:-2]] == list(range(7, 10))
        assert again.trim_position == ends[6]
    assert again.end_position == tail[-1]
    await again.close()


async def test_a_missing_object_in_the_middle_refuses_to_open() -> None:
    store = open_object_store("memory://")
    wal = await opened(store)
    for i in range(4):
        await wal.append(1, 1, i, i, b"x")
    await store.delete(object_key(2))  # records nobody uploaded: lost
    with pytest.raises(WalError, match="missing"):
        await opened(store, epoch=2)
    await wal.close()


async def test_foreign_keys_under_the_prefix_are_ignored() -> None:
    store = open_object_store("memory://")
    await store.put("notes.txt", b"hello")
    wal = await opened(store)
    await wal.append(1, 1, 0, 0, b"x")
    await wal.close()
    wal = await opened(store, epoch=2)
    assert records(wal) == [(0, b"x")]
    await wal.close()
    assert await store.get("notes.txt") == b"hello"


# --- fencing ---


async def test_a_newer_opener_fences_the_older_writer(backend: ObjectStore) -> None:
    old = await opened(backend, epoch=3)
    await old.append(1, 1, 0, 0, b"acknowledged")
    with pytest.raises(WalFencedError):
        await opened(backend, epoch=2)
    new = await opened(backend, epoch=4)
    with pytest.raises(WalFencedError):
        await old.append(1, 1, 1, 1, b"too late")
    assert records(new) == [(0, b"acknowledged")]
    await new.append(1, 2, 1, 1, b"new owner")
    await new.close()
    await old.close()
    last = await opened(backend, epoch=5)
    assert records(last) == [(0, b"acknowledged"), (1, b"new owner")]
    await last.close()


async def test_a_put_in_flight_when_the_newer_writer_opens_is_not_acknowledged(
    backend: ObjectStore,
) -> None:
    store = GatedStore(backend)
    old = await opened(store, epoch=1)
    await old.append(1, 1, 0, 0, b"before")
    newer: list[ObjectWAL] = []

    async def newer_opens_first() -> None:
        newer.append(await opened(backend, epoch=2))

    store.before_put = newer_opens_first
    with pytest.raises(WalFencedError):
        await old.append(1, 1, 1, 1, b"in flight")
    assert records(newer[0]) == [(0, b"before")]
    again = await opened(backend, epoch=3)  # nothing of the stale writer appeared later
    assert records(again) == [(0, b"before")]
    await again.close()
    await newer[0].close()
    await old.close()


async def test_a_put_landing_while_the_newer_writer_claims_is_recovered(
    backend: ObjectStore,
) -> None:
    """The older writer's PUT lands between the newer one's LIST and its claim: the claim
    finds the number taken, lists again, and the acknowledged record is recovered."""
    old = await opened(backend, epoch=1)
    store = GatedStore(backend)
    acked: list[int] = []

    async def old_writes_meanwhile() -> None:
        acked.append(await old.append(1, 1, 0, 0, b"raced"))

    store.after_list = old_writes_meanwhile
    new = await opened(store, epoch=2)
    assert acked and records(new) == [(0, b"raced")]
    assert store.requests["list"] == 2  # the first claim lost the race
    with pytest.raises(WalFencedError):
        await old.append(1, 1, 1, 1, b"too late")
    await new.close()
    await old.close()


# --- failures ---


async def test_failed_puts_are_retried_with_the_same_bytes() -> None:
    store = GatedStore(open_object_store("memory://"))
    wal = await opened(store)
    store.fail_next("put", 2)  # before the request: nothing landed
    await wal.append(1, 1, 0, 0, b"one")
    store.fail_next("put", after=True)  # landed, but the answer was lost
    await wal.append(1, 1, 1, 1, b"two")
    assert store.pending_faults("put") == 0
    await wal.close()
    wal = await opened(store, epoch=2)
    assert records(wal) == [(0, b"one"), (1, b"two")]
    await wal.close()


async def test_a_put_that_keeps_failing_fails_the_wal() -> None:
    store = GatedStore(open_object_store("memory://"))
    wal = await opened(store, put_attempts=3)
    store.fail_next("put", 3)
    results = await asyncio.gather(
        *(wal.append(1, 1, i, i, b"x") for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, WalError) for r in results)
    with pytest.raises(WalError):
        await wal.append(1, 1, 3, 3, b"x")
    await wal.close()
    wal = await opened(store, epoch=2)  # nothing was acknowledged, nothing half-stored
    assert records(wal) == []
    await wal.close()


async def test_emulated_store_errors_are_ridden_out() -> None:
    """The latency emulator's error rate hits WAL PUTs too; retries keep appends whole."""
    inner = open_object_store("memory://")
    store = LatencyObjectStore(inner, LatencyProfile(error_rate=0.3, seed=1))
    wal = ObjectWAL(store, batch_interval=0.001, put_attempts=20)
    for _ in range(20):  # the open's LIST/GET fail too: an open can be retried
        try:
            await wal.open(1)
            break
        except Exception:
            wal = ObjectWAL(store, batch_interval=0.001, put_attempts=20)
    for i in range(30):
        await wal.append(1, 1, i, i, b"v%d" % i)
    await wal.close()
    wal = await opened(inner, epoch=2)
    assert [b for b, _ in records(wal)] == list(range(30))
    await wal.close()


async def test_puts_per_gib_from_stats() -> None:
    """What bench/wal.py reports: PUTs (syncs) per GiB written."""
    store = GatedStore(open_object_store("memory://"))
    wal = await opened(store, batch_interval=0.01, batch_bytes=MiB)
    payload = b"z" * (64 << 10)
    await asyncio.gather(*(wal.append(1, 1, i, i, payload) for i in range(64)))  # 4 MiB
    await wal.close()
    assert wal.stats.syncs == store.requests["put"]
    assert wal.stats.bytes == store.bytes_put
    assert wal.stats.groups == 5  # 15 records fill a 1 MiB group; 64 = 4 x 15 + 4
    assert wal.stats.records == 64 and wal.stats.group_bytes.count == 5
    puts_per_gib = wal.stats.syncs / (wal.stats.bytes / (1 << 30))
    assert puts_per_gib >= 1024  # never fewer PUTs than GiB / batch.bytes

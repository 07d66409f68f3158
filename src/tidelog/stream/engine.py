"""The storage engine: streams over one WAL, a log cache, and objects in object storage.

Write path: `Stream.append` -> `reserve` (bounded WAL and cache: back-pressure) -> log cache
+ WAL group commit -> acknowledged. Background: the uploader turns the durable head of the
log cache into one stream set object (streams with `split_bytes` or more get a stream
object of their own), PUTs it, commits `{object, blocks}` and the new stream ends to
metadata in one transaction (compared against each stream's version: fencing), and only
then trims the WAL. Read path: log cache -> block cache -> range GET.

Metadata keys: `/streams/<id>` (epoch, start and uploaded end offsets, owner) and
`/objects/<id>` (object key, size, block index).

Cluster mode (`cluster=True`): the engine opens only the streams placed on its node, each
with epoch + 1; a failed upload compare fences the streams it names, not the engine; the
object index follows `/objects/` (other brokers' uploads, the controller's compaction);
garbage collection and object compaction run only while `cluster_jobs` is set (the
controller) and decide liveness from metadata, never from the streams open here.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from tidelog.metadata.base import (
    MAX_TXN_OPS,
    Fenced,
    Listing,
    MetadataStore,
    Txn,
    WatchEvent,
    follow,
)
from tidelog.objectstore.base import ObjectStore
from tidelog.stream.block_cache import BlockCache
from tidelog.stream.log_cache import CacheEntry, LogCache
from tidelog.stream.object_compaction import CompactionConfig, compact_objects
from tidelog.stream.object_format import BlockIndex, ObjectBuilder, Record
from tidelog.stream.object_index import ObjectIndex
from tidelog.stream.objects import OBJECTS, ObjectCatalog, meta_key, object_kind
from tidelog.stream.stream import Stream, StreamError, StreamMeta
from tidelog.stream.wal.base import WAL, Histogram

log = logging.getLogger(__name__)

STREAMS = "/streams/"
FOREIGN_BIT = 1 << 63
"""Set in the stream id of a WAL record that holds another broker's partition's batch, as
written by a same-zone proxy (docs/design/0003-zones.md): no replay takes it for one of
its streams (none has this id), the owner reads it by position."""
RECORD_OVERHEAD = 256  # bytes we assume a WAL adds around a payload (header, padding slack)
UPLOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# (payload) -> (max_timestamp, record_count): lets recovery describe WAL records without
# the engine knowing the batch format.
Describe = Callable[[bytes], tuple[int, int]]


class StorageError(Exception):
    """The engine can no longer guarantee durability; the broker must stop writing."""


class BackPressureTimeout(Exception):
    """The WAL or log cache stayed full longer than the append timeout."""


@dataclass(slots=True)
class EngineConfig:
    upload_bytes: int = 64 << 20
    upload_interval: float = 30.0
    split_bytes: int = 8 << 20
    block_bytes: int = 512 << 10
    cache_max_bytes: int = 1 << 30
    block_cache_bytes: int = 128 << 20
    append_timeout: float = 30.0
    gc_grace: float = 60.0
    compaction_interval: float = 60.0
    """Seconds between object compaction rounds (0: never)."""
    compaction: CompactionConfig = field(default_factory=CompactionConfig)
    gc_interval: float = 30.0
    """Cluster mode: seconds between garbage rounds (each lists objects and streams)."""
    orphan_audit_interval: float = 3600.0
    """Seconds between audits of the whole object store for objects no record names
    (0: never); one LIST request per 1,000 objects."""


def decode_stream(key: str, value: bytes, version: int) -> StreamMeta:
    v = json.loads(value)
    return StreamMeta(int(key[len(STREAMS):]), v["epoch"], v["start"], v["end"],
                      v.get("owner", -1), version, v.get("topic"))


def encode_stream(m: StreamMeta) -> bytes:
    rec: dict[str, object] = {"epoch": m.epoch, "start": m.start_offset, "end": m.end_offset}
    if m.owner >= 0:
        rec["owner"] = m.owner
    if m.topic is not None:
        rec["topic"] = m.topic
    return json.dumps(rec).encode()


class StreamEngine:
    def __init__(
        self,
        wal: WAL,
        store: ObjectStore,
        meta: MetadataStore,
        config: EngineConfig | None = None,
        describe: Describe | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        *,
        node_id: int = 0,
        cluster: bool = False,
    ) -> None:
        self.wal = wal
        self.node_id = node_id
        self.cluster = cluster
        self.cluster_jobs = not cluster
        """Run garbage collection and object compaction (cluster: only the controller)."""
        self.ack_deadline: float | None = None
        """Monotonic time after which no append may be acknowledged (the broker's lease
        may have expired by then); None: no lease (the embedded single broker)."""
        self.fenced_streams = 0
        self.released_streams = 0
        self.fenced_appends = 0
        """Appends made durable but not acknowledged: the lease may have expired, or the
        stream was fenced meanwhile (the record is in the WAL; a taker or the restart
        decides its fate)."""
        self.moved_streams = 0
        self.store = store
        self.meta = meta
        self.config = config or EngineConfig()
        self.cache = LogCache()
        self.blocks = BlockCache(store, self.config.block_cache_bytes)
        self.index = ObjectIndex()
        self.catalog = ObjectCatalog(meta, store, self.index, self.config.gc_grace, wall_clock)
        self.streams: dict[int, Stream] = {}
        self._describe = describe or (lambda p: (-1, 0))
        self._clock = clock
        self._space = asyncio.Event()
        self._upload_now = asyncio.Event()
        self._index_changed = asyncio.Condition()
        self._uploader: asyncio.Task[None] | None = None
        self._compactor: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._next_gc = 0.0
        self._next_audit = 0.0
        self._upload_lock = asyncio.Lock()
        self._failed: str | None = None
        self._inflight = 0  # bytes reserved by appends the WAL has not completed yet
        self._pins: dict[int, int] = {}
        """WAL position of a foreign record -> holds on it (a proxied produce in flight)."""
        self._trimmer: asyncio.Future[None] | None = None
        self.uploads = 0
        self.uploaded_bytes = 0
        self.objects_written = 0
        self.compactions = 0
        self.objects_compacted = 0
        # for the metrics endpoint, read at scrape time
        self.stream_objects_written = 0  # of objects_written; the others are stream set objects
        self.upload_seconds = Histogram(UPLOAD_BUCKETS)
        self.log_cache_hits = 0  # reads served by the log cache alone
        self.log_cache_misses = 0  # reads that needed objects
        self.backpressure_waits = 0

    # ---- lifecycle ------------------------------------------------------------------

    async def start(self, wal_epoch: int) -> None:
        """Open the WAL, load objects, take this node's streams (epoch + 1) and replay the
        WAL's tail into the log cache."""
        await self.wal.open(wal_epoch)
        listing = await self.meta.list_all(OBJECTS)
        self.catalog.load_objects(listing)
        await self.catalog.load_garbage()
        if self.cluster:
            self._follower = asyncio.create_task(self._follow_objects(listing.revision),
                                                 name="object-index")
        mine = [m for m in [decode_stream(e.key, e.value, e.version)
                            for e in await self.meta.list_all(STREAMS)]
                if not self.cluster or m.owner == self.node_id]
        metas = {m.stream_id: m for m in await self._take(mine)}
        next_offsets = {sid: m.end_offset for sid, m in metas.items()}
        replayed = 0
        for rec in self.wal.recover():
            sm = metas.get(rec.stream_id)
            if sm is None or rec.last_offset < sm.end_offset:
                continue  # deleted stream, or already in an object
            ts, count = self._describe(rec.payload)
            self.cache.add(CacheEntry(rec.stream_id, rec.base_offset, rec.last_offset,
                                      rec.payload, ts, count, rec.next_position))
            next_offsets[rec.stream_id] = rec.last_offset + 1
            replayed += 1
        for sid, m in metas.items():
            self.streams[sid] = Stream(self, m, next_offsets[sid])
        log.info("storage engine: %d streams, %d objects, %d WAL records replayed",
                 len(metas), len(self.index.objects), replayed)
        self._uploader = asyncio.create_task(self._upload_loop(), name="uploader")
        if self.config.compaction_interval > 0:
            self._compactor = asyncio.create_task(self._compaction_loop(), name="compactor")

    async def _take(self, metas: list[StreamMeta]) -> list[StreamMeta]:
        """Ownership: bump each stream's epoch (owner = this node), compared against the
        version read, in commits of at most `MAX_TXN_OPS`. A stream that changed meanwhile
        (another broker's write) is left out."""
        taken: list[StreamMeta] = []
        chunk = MAX_TXN_OPS // 2
        for i in range(0, len(metas), chunk):
            part = metas[i:i + chunk]
            while part:
                txn = Txn()
                for m in part:
                    new = replace(m, epoch=m.epoch + 1, owner=self.node_id)
                    txn.compares.append((meta_key(STREAMS, m.stream_id), m.version))
                    txn.puts.append((meta_key(STREAMS, m.stream_id), encode_stream(new)))
                try:
                    rev = await self.meta.commit(txn)
                except Fenced as exc:
                    lost = set(exc.keys)
                    log.warning("%d streams changed while being opened; left out", len(lost))
                    part = [m for m in part if meta_key(STREAMS, m.stream_id) not in lost]
                    continue
                for m in part:
                    m.epoch += 1
                    m.owner = self.node_id
                    m.version = rev
                taken.extend(part)
                break
        return taken

    async def open_stream(self, stream_id: int) -> Stream | None:
        """Open a stream placed on this node after the start (a new partition): epoch + 1.
        None when its record is gone or names another owner."""
        if stream_id in self.streams:
            return self.streams[stream_id]
        entry = await self.meta.get(meta_key(STREAMS, stream_id))
        if entry is None:
            return None
        m = decode_stream(entry.key, entry.value, entry.version)
        if self.cluster and m.owner != self.node_id:
            return None
        taken = await self._take([m])
        if not taken or stream_id in self.streams:
            return self.streams.get(stream_id)
        await self._await_index(taken[0])
        if stream_id in self.streams:
            return self.streams[stream_id]
        s = Stream(self, taken[0], taken[0].end_offset)
        self.streams[stream_id] = s
        return s

    async def close(self, flush: bool = True) -> None:
        """Stop the uploader; with `flush`, upload what the cache holds first."""
        if self._compactor is not None:
            self._compactor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._compactor
            self._compactor = None
        for task in (self._uploader, self._follower):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._uploader = self._follower = None
        if flush and self._failed is None:
            try:
                while await self._upload_some():
                    pass
            except Exception as exc:  # the WAL still holds the data: nothing is lost
                log.warning("final upload failed, data stays in the WAL: %s", exc)
        for s in self.streams.values():
            s.close()
        await self.wal.close()

    # ---- streams --------------------------------------------------------------------

    async def create_stream(self) -> Stream:
        """A new stream owned and opened here (the single broker; cluster placement uses
        `create_stream_records` and the owner opens it)."""
        return (await self.create_streams(1))[0]

    async def create_streams(self, count: int) -> list[Stream]:
        """`count` new streams owned and opened here, in two metadata calls (an id block
        and one commit), however many."""
        out: list[Stream] = []
        ids = list(await self.meta.next_ids("stream", count))
        chunk = MAX_TXN_OPS // 2
        for i in range(0, len(ids), chunk):
            metas = [StreamMeta(sid, 1, 0, 0, self.node_id) for sid in ids[i:i + chunk]]
            txn = Txn()
            for m in metas:
                txn.compares.append((meta_key(STREAMS, m.stream_id), 0))
                txn.puts.append((meta_key(STREAMS, m.stream_id), encode_stream(m)))
            rev = await self.meta.commit(txn)
            for m in metas:
                m.version = rev
                s = Stream(self, m, 0)
                self.streams[m.stream_id] = s
                out.append(s)
        return out

    async def create_stream_records(self, owners: list[int], topic: str | None = None
                                    ) -> list[tuple[int, int]]:
        """New streams placed on `owners` (epoch 0: not opened yet) for `topic`, in one
        commit per `MAX_TXN_OPS // 2`; (stream id, record version) each."""
        ids = list(await self.meta.next_ids("stream", len(owners)))
        out: list[tuple[int, int]] = []
        chunk = MAX_TXN_OPS // 2
        for i in range(0, len(ids), chunk):
            txn = Txn()
            part = ids[i:i + chunk]
            for sid, owner in zip(part, owners[i:i + chunk], strict=True):
                key = meta_key(STREAMS, sid)
                txn.compares.append((key, 0))
                txn.puts.append((key, encode_stream(StreamMeta(sid, 0, 0, 0, owner,
                                                               topic=topic))))
            rev = await self.meta.commit(txn)
            out += [(sid, rev) for sid in part]
        return out

    async def delete_stream(self, stream_id: int) -> None:
        # under the upload lock: an upload in flight commits against the stream's record
        async with self._upload_lock:
            s = self.streams.pop(stream_id, None)
            if s is not None:
                s.close()
            self.cache.drop_stream(stream_id)
            self.index.drop_stream(stream_id)
            await self.meta.delete(meta_key(STREAMS, stream_id))

    async def forget_stream(self, stream_id: int) -> None:
        """Stop serving a stream here whose record another broker deleted (its topic is
        gone): what it still holds in the log cache goes too."""
        async with self._upload_lock:
            s = self.streams.pop(stream_id, None)
            if s is not None:
                s.close()
            self.cache.drop_stream(stream_id)
            self.index.drop_stream(stream_id)

    async def release_stream(self, stream_id: int, why: str) -> bool:
        """Stop serving a stream here that another broker now owns (its record names a new
        owner or a newer epoch): appends in flight fail unacknowledged; its objects stay
        indexed (the index is cluster-wide). False when it was not open here."""
        async with self._upload_lock:
            s = self.streams.get(stream_id)
            if s is None:
                return False
            self._drop_local(s, why, forget_objects=False)
            self.released_streams += 1
            return True

    def _drop_local(self, s: Stream, why: str, forget_objects: bool) -> None:
        sid = s.stream_id
        unuploaded = self.unuploaded(sid)[0]
        (log.error if unuploaded else log.info)(
            "stream %d %s: closing it here%s", sid, why,
            f", dropping its {unuploaded} unuploaded bytes from the log cache"
            if unuploaded else "")
        self.streams.pop(sid, None)
        s.close()
        self.cache.drop_stream(sid)
        if forget_objects:
            self.index.drop_stream(sid)

    async def trim_stream(self, stream_id: int, new_start: int) -> None:
        """Offsets below `new_start` are gone (retention, compaction); objects holding only
        such offsets become garbage."""
        async with self._upload_lock:
            s = self.streams.get(stream_id)
            if s is None or new_start <= s.meta.start_offset:
                return
            m = s.meta
            new_start = min(new_start, s.confirm_offset)
            new = replace(m, start_offset=new_start)
            m.version = await self.meta.put_if(meta_key(STREAMS, stream_id),
                                               encode_stream(new), m.version)
            m.start_offset = new_start

    # ---- write path -----------------------------------------------------------------

    async def reserve(self, nbytes: int, timeout: float | None = None) -> None:
        """Wait until the WAL and the log cache have room for `nbytes` (back-pressure)."""
        if self._failed:
            raise StorageError(self._failed)
        need = 2 * (nbytes + RECORD_OVERHEAD)
        deadline: float | None = None
        while (self.wal.capacity - (self.wal.end_position - self.wal.trim_position)
               - self._inflight < need
               or self.cache.size + nbytes > self.config.cache_max_bytes):
            if need > self.wal.capacity:
                raise BackPressureTimeout(f"a {nbytes}-byte append cannot fit the WAL")
            self._upload_now.set()
            if deadline is None:
                limit = self.config.append_timeout  # the client's own timeout, if shorter
                deadline = self._clock() + (min(timeout, limit) if timeout else limit)
                self.backpressure_waits += 1
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise BackPressureTimeout("WAL full: uploads are not keeping up")
            self._space.clear()
            try:
                await asyncio.wait_for(self._space.wait(), remaining)
            except TimeoutError:
                raise BackPressureTimeout("WAL full: uploads are not keeping up") from None
            if self._failed:
                raise StorageError(self._failed)
        self._inflight += need

    async def append_foreign(self, stream_id: int, payload: bytes | memoryview,
                             timeout: float | None = None) -> int:
        """Make a batch of another broker's stream durable in this WAL, pinned (the WAL is
        not trimmed past it until `unpin`); returns its position. Waits for room as any
        append does."""
        await self.reserve(len(payload), timeout)
        end = await self._wal_write(FOREIGN_BIT | stream_id, 0, 0, 0, payload)
        at = self.wal.record_start(end, len(payload))
        if at is None:
            raise StorageError("this WAL cannot be read by position: no proxy produce")
        self._pins[at] = self._pins.get(at, 0) + 1
        return at

    def unpin(self, position: int) -> None:
        """The owner has its own copy of the foreign record at `position` (or will never
        read it); the WAL may be trimmed past it."""
        n = self._pins.get(position, 0) - 1
        if n > 0:
            self._pins[position] = n
            return
        self._pins.pop(position, None)
        if self._trimmer is None or self._trimmer.done():
            self._trimmer = asyncio.ensure_future(self._trim_unpinned())

    @property
    def pinned_bytes(self) -> int:
        """WAL bytes from the oldest pin on: what proxied produces in flight hold."""
        return self.wal.end_position - min(self._pins) if self._pins else 0

    def _trim_limit(self, upto: int) -> int:
        return min(upto, min(self._pins)) if self._pins else upto

    async def _trim_unpinned(self) -> None:
        """Trim what only foreign records held: up to the oldest pin, or the first record
        the log cache still needs (nothing while an own append has no position yet)."""
        async with self._upload_lock:
            head = self.cache.head()
            if head is not None:
                if head.wal_position < 0:
                    return
                upto = self.wal.record_start(head.wal_position, len(head.payload))
                if upto is None:
                    return
            elif self._inflight:
                return
            else:
                upto = self.wal.end_position
            upto = self._trim_limit(upto)
            if upto > self.wal.trim_position:
                await self.wal.trim(upto)
                self._space.set()

    def release(self, nbytes: int) -> None:
        """Give back a reservation whose append was cancelled before reaching the WAL."""
        self._inflight -= 2 * (nbytes + RECORD_OVERHEAD)

    async def wal_append(self, entry: CacheEntry, epoch: int) -> int:
        """Append a reserved entry; releases its reservation whatever happens."""
        return await self._wal_write(entry.stream_id, epoch, entry.base_offset,
                                     entry.last_offset, entry.payload)

    async def _wal_write(self, stream_id: int, epoch: int, base: int, last: int,
                         payload: bytes | bytearray | memoryview) -> int:
        try:
            return await self.wal.append(stream_id, epoch, base, last, payload)
        except BaseException as exc:
            # Offsets after this one may already be assigned: we cannot roll back, and the
            # record may or may not be durable. Stop taking writes; a restart recovers.
            self.fail(f"WAL append failed: {exc!r}")
            raise StorageError(self._failed) from exc
        finally:
            self.release(len(payload))

    def fail(self, reason: str) -> None:
        if self._failed is None:
            log.error("storage engine stops taking writes: %s", reason)
            self._failed = reason
            self._space.set()

    @property
    def failed(self) -> str | None:
        return self._failed

    def may_acknowledge(self) -> bool:
        """False once the broker's lease may have expired (one clock read per append)."""
        return self.ack_deadline is None or self._clock() < self.ack_deadline

    def appended(self) -> None:
        if self.cache.size >= self.config.upload_bytes:
            self._upload_now.set()

    # ---- upload ---------------------------------------------------------------------

    def unuploaded(self, stream_id: int) -> tuple[int, int | None]:
        """(bytes, oldest batch timestamp) of a stream's data not yet uploaded: only
        uploaded data can be compacted, so the log cleaner weighs this to upload early,
        as Kafka rolls a segment to make it cleanable."""
        entries = self.cache.entries(stream_id)
        if not entries:
            return 0, None
        return sum(len(e.payload) for e in entries), min(e.max_timestamp for e in entries)


    async def _upload_loop(self) -> None:
        backoff = 0.1
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._upload_now.wait(), self.config.upload_interval)
            self._upload_now.clear()
            try:
                await self.upload()
                await self._collect_garbage()
                backoff = 0.1
                self.appended()  # more than an upload's worth left: go again at once
            except Exception as exc:  # keep the data in the WAL and try again
                # (a Fenced commit closed the streams it named: the retry goes without them)
                log.warning("upload failed (retrying in %.1fs): %r", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._upload_now.set()

    async def upload(self) -> int:
        """Upload everything durable in the log cache, `upload_bytes` per object set;
        returns the bytes uploaded."""
        total = 0
        # bounded by what is cached now, so a steady stream of appends cannot keep one
        # call (and the garbage collection after it) going forever
        for _ in range(self.cache.size // max(self.config.upload_bytes, 1) + 1):
            n = await self._upload_some()
            if not n:
                break
            total += n
        return total

    async def _upload_some(self) -> int:
        async with self._upload_lock:
            entries = self.cache.confirmed_prefix(self.config.upload_bytes)
            if not entries:
                return 0
            started = time.perf_counter()
            by_stream: dict[int, list[CacheEntry]] = {}
            for e in entries:
                if e.stream_id in self.streams:
                    by_stream.setdefault(e.stream_id, []).append(e)
            metas: list[tuple[StreamMeta, int]] = []

            def ends(txn: Txn) -> None:
                for sid, es in by_stream.items():
                    m = self.streams[sid].meta
                    new = replace(m, end_offset=es[-1].last_offset + 1)
                    txn.compares.append((meta_key(STREAMS, sid), m.version))
                    txn.puts.append((meta_key(STREAMS, sid), encode_stream(new)))
                    metas.append((m, new.end_offset))

            try:
                rev, objects = await self._commit_objects(by_stream, ends)
            except Fenced as exc:
                await self._fenced(exc)
                raise
            for m, end in metas:
                m.end_offset, m.version = end, rev
            size = 0
            for key, builder in objects:
                for i, b in enumerate(builder.index):
                    if b.stream_id in self.streams:
                        self.blocks.put(key, b.position, builder.block_records(i), b.size)
                size += builder.size
            self.cache.drop_uploaded(entries)
            await self.wal.trim(self._trim_limit(entries[-1].wal_position))
            self._space.set()
            self.uploads += 1
            self.uploaded_bytes += size
            self.objects_written += len(objects)
            self.stream_objects_written += sum(object_kind(k) == "s" for k, _ in objects)
            self.upload_seconds.observe(time.perf_counter() - started)
            log.debug("uploaded %d bytes in %d objects", size, len(objects))
            return size

    # ---- moves -------------------------------------------------------------------------

    async def hand_over(self, stream_id: int, target: int,
                        extra: Callable[[Txn], None]) -> bool:
        """Move a sealed stream (`Stream.sealed`, appends settled) to `target`: upload what
        the log cache holds of it, then in one commit name `target` its owner (compared on
        the stream's version; `extra` adds the caller's part) and close it here. The
        target opens it with epoch + 1. False, with the stream unsealed and serving again,
        when the commit's compares failed."""
        s = self.streams.get(stream_id)
        if s is None:
            return False
        deadline = self._clock() + 30.0
        while self.unuploaded(stream_id)[0]:
            if await self._upload_some():
                continue
            # nothing uploadable: another stream's append ahead in WAL order is still on
            # its way to durable (uploads take WAL order's durable prefix); it lands
            # within a group commit
            if self._clock() > deadline:
                raise StreamError(f"stream {stream_id}: its tail could not be uploaded "
                                  "(an append ahead of it in the WAL is not durable)")
            await asyncio.sleep(0.002)
        async with self._upload_lock:
            if self.unuploaded(stream_id)[0] or self.streams.get(stream_id) is not s:
                raise StreamError(f"stream {stream_id} changed during its move")
            m = s.meta
            txn = Txn(compares=[(meta_key(STREAMS, stream_id), m.version)],
                      puts=[(meta_key(STREAMS, stream_id),
                             encode_stream(replace(m, owner=target)))])
            extra(txn)
            try:
                await self.meta.commit(txn)
            except Fenced:
                s.sealed = False
                return False
            self._drop_local(s, f"moved to broker {target}", forget_objects=False)
            self.moved_streams += 1
            return True

    # ---- takeover of another broker's WAL --------------------------------------------

    async def save_wal_tail(self, wal: WAL, metas: list[StreamMeta],
                            extra: Callable[[Txn, bool], None]) -> tuple[int, int]:
        """Takeover: write the records of `wal` (another broker's, opened here with a
        higher epoch, which fenced its writer) that `metas`' streams have not in objects
        yet straight into objects, and commit them with each stream's new end and owner
        -1 (unplaced: the controller places it), compared on each stream's version;
        `extra(txn, last)` adds the caller's part to every commit. The WAL scan runs in a
        thread and the objects are built as the uploader builds them; nothing goes through
        this broker's log cache.

        Returns (records, bytes) saved. Raises `Fenced` when a stream or the caller's
        compares changed (another taker, or the owner back): nothing of that commit is
        visible, and its objects are collected through their intents."""
        by_id = {m.stream_id: m for m in metas}
        tail = await asyncio.to_thread(self._wal_tail, wal, by_id)
        saved_records = saved_bytes = 0
        chunk = MAX_TXN_OPS // 4
        order = sorted(by_id)
        for i in range(0, max(len(order), 1), chunk):
            part = order[i:i + chunk]
            by_stream = {sid: tail[sid] for sid in part if sid in tail}

            def released(txn: Txn, part: list[int] = part, last: bool = i + chunk >= len(order),
                         by_stream: dict[int, list[CacheEntry]] = by_stream) -> None:
                for sid in part:
                    m = by_id[sid]
                    es = by_stream.get(sid)
                    end = es[-1].last_offset + 1 if es else m.end_offset
                    txn.compares.append((meta_key(STREAMS, sid), m.version))
                    txn.puts.append((meta_key(STREAMS, sid), encode_stream(
                        replace(m, end_offset=end, owner=-1))))
                extra(txn, last)

            _rev, objects = await self._commit_objects(by_stream, released)
            saved_records += sum(len(es) for es in by_stream.values())
            saved_bytes += sum(b.size for _k, b in objects)
        return saved_records, saved_bytes

    def _wal_tail(self, wal: WAL, metas: dict[int, StreamMeta]) -> dict[int, list[CacheEntry]]:
        """In a thread: the records of `wal` at or past each stream's end, in order."""
        tail: dict[int, list[CacheEntry]] = {}
        for rec in wal.recover():
            m = metas.get(rec.stream_id)
            if m is None or rec.last_offset < m.end_offset or rec.stream_epoch > m.epoch:
                continue  # not this broker's stream now, already in objects, or newer
            es = tail.setdefault(rec.stream_id, [])
            expected = es[-1].last_offset + 1 if es else m.end_offset
            if rec.base_offset != expected:
                log.error("stream %d: WAL record at offset %d where %d was expected (a gap "
                          "in the dead broker's WAL); saving what is there", rec.stream_id,
                          rec.base_offset, expected)
            ts, count = self._describe(rec.payload)
            es.append(CacheEntry(rec.stream_id, rec.base_offset, rec.last_offset,
                                 rec.payload, ts, count, rec.next_position))
        return tail

    async def _fenced(self, exc: Fenced) -> None:
        """An upload commit's compare failed: every stream it names that no longer is ours
        at our epoch (another broker opened it, or its topic was deleted) is closed here,
        alone; the caller retries the upload for the rest. Called under the upload lock."""
        for key in exc.keys:
            if not key.startswith(STREAMS):
                continue  # an intent a collector marked: the retry writes new objects
            sid = int(key[len(STREAMS):])
            s = self.streams.get(sid)
            if s is None:
                continue
            entry = await self.meta.get(key)
            now = None if entry is None else decode_stream(entry.key, entry.value,
                                                           entry.version)
            if now is not None and (now.epoch, now.owner) == (s.meta.epoch, s.meta.owner):
                log.warning("stream %d: record rewritten at our epoch %d; adopting it",
                            sid, now.epoch)
                s.meta.version, s.meta.start_offset = now.version, now.start_offset
                continue
            self.fenced_streams += 1
            where = "deleted" if now is None else f"epoch {now.epoch} on {now.owner}"
            self._drop_local(s, f"fenced ({where})", forget_objects=now is None)

    async def _commit_objects(
        self, by_stream: dict[int, list[CacheEntry]], add: Callable[[Txn], None]
    ) -> tuple[int, list[tuple[str, ObjectBuilder]]]:
        """Build and PUT the objects holding `by_stream`, then commit them referenced,
        with what `add` puts in the same transaction (the streams' records); returns the
        revision and the objects, indexed here. On any failure nothing is visible and the
        objects are abandoned (their intents collect them)."""
        objects = await self._build_objects(by_stream)
        try:
            for key, builder in objects:
                await self.store.put(key, builder.finish())
            txn = Txn()
            for key, builder in objects:
                self.catalog.reference(txn, key, builder)
            add(txn)
            rev = await self.meta.commit(txn)
        except BaseException:
            self.catalog.abandon(k for k, _ in objects)
            raise
        self.catalog.referenced(rev, objects)
        return rev, objects

    async def _build_objects(
        self, by_stream: dict[int, list[CacheEntry]]
    ) -> list[tuple[str, ObjectBuilder]]:
        shared = ObjectBuilder()
        objects: list[tuple[str, ObjectBuilder]] = []
        for sid, es in by_stream.items():
            total = sum(len(e.payload) for e in es)
            if total >= self.config.split_bytes:
                own = ObjectBuilder()
                self._add_blocks(own, sid, es)
                objects.append((await self.catalog.new_object("s"), own))
            else:
                self._add_blocks(shared, sid, es)
        if shared.index:
            objects.append((await self.catalog.new_object("ss"), shared))
        return objects

    def _add_blocks(self, builder: ObjectBuilder, sid: int, es: list[CacheEntry]) -> None:
        i = 0
        while i < len(es):
            j, size = i, 0
            while j < len(es) and (j == i or size + len(es[j].payload) <= self.config.block_bytes):
                size += len(es[j].payload)
                j += 1
            chunk = es[i:j]
            builder.add_block(sid, [(e.base_offset, e.last_offset, e.payload) for e in chunk],
                              sum(e.record_count for e in chunk),
                              max(e.max_timestamp for e in chunk))
            i = j

    async def replace_blocks(
        self, removed: dict[str, set[BlockIndex]],
        build: Callable[[], Awaitable[list[tuple[str, ObjectBuilder]]]],
    ) -> bool:
        """Swap `removed` blocks for the objects `build` writes, in one metadata commit:
        readers see either the old blocks or the new ones, never neither (compaction).

        `build` must cover exactly the offsets of the removed blocks that still matter; it
        runs outside the upload lock (its PUTs may be slow). Returns False, leaving
        everything as it was, when a removed block changed meanwhile (a concurrent GC)."""
        objects: list[tuple[str, ObjectBuilder]] = []
        try:
            objects = await build()
            for key, builder in objects:
                await self.store.put(key, builder.finish())
            async with self._upload_lock:
                live = self.index.objects
                if any(key not in live or not gone <= set(live[key])
                       for key, gone in removed.items()):
                    self.catalog.abandon(k for k, _ in objects)
                    return False
                txn = Txn()
                for key, builder in objects:
                    self.catalog.reference(txn, key, builder)
                changes = self.catalog.unlink(txn, removed)
                rev = await self.meta.commit(txn)
                self.catalog.unlinked(rev, changes)
                self.catalog.referenced(rev, objects)
                self.objects_written += len(objects)
                self.stream_objects_written += sum(object_kind(k) == "s" for k, _ in objects)
                return True
        except BaseException:
            self.catalog.abandon(k for k, _ in objects)
            raise

    async def _compaction_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.compaction_interval)
            try:
                await self.compact()
                await self._collect_garbage()
            except Exception as exc:  # the old objects stay referenced: nothing is lost
                log.warning("object compaction failed: %r", exc)

    async def compact(self) -> int:
        """Object compaction rounds until nothing is left to merge; returns objects merged."""
        if not self.cluster_jobs:
            return 0
        total = 0
        while True:
            merged, _ = await compact_objects(self, self.config.compaction,
                                              self._live_starts)
            if not merged:
                return total
            total += merged
            self.compactions += 1
            self.objects_compacted += merged

    async def _live_starts(self) -> dict[int, int]:
        """Each live stream's start offset: from metadata on a cluster (streams other
        brokers own are live too), from the open streams on a single broker."""
        if not self.cluster:
            return {sid: s.meta.start_offset for sid, s in self.streams.items()}
        return {m.stream_id: m.start_offset for m in
                (decode_stream(e.key, e.value, e.version)
                 for e in await self.meta.list_all(STREAMS))}

    async def _collect_garbage(self) -> None:
        """Unlink objects no live stream references; delete them after the grace period
        (readers already on them finish first)."""
        if not self.cluster_jobs:
            return
        if self.cluster:
            if self._clock() < self._next_gc:
                return
            self._next_gc = self._clock() + self.config.gc_interval
            objects = await self.meta.list_all(OBJECTS)  # first objects, then streams
            await self.catalog.unlink_unreferenced_cluster(objects, await self._live_starts())
        else:
            async with self._upload_lock:  # the unlink commit must not interleave
                starts = {sid: s.meta.start_offset for sid, s in self.streams.items()}
                await self.catalog.unlink_unreferenced(starts)
        await self.catalog.delete_expired()  # slow DELETEs: uploads go on meanwhile
        if self.config.orphan_audit_interval > 0 and self._clock() >= self._next_audit:
            self._next_audit = self._clock() + self.config.orphan_audit_interval
            await self.catalog.delete_orphans()

    async def _follow_objects(self, revision: int) -> None:
        """Keep the object index current with other brokers' uploads and the controller's
        compactions and unlinks (a reader must find rewritten blocks at their new place
        before the old object's grace period ends)."""
        await follow(self.meta, OBJECTS, revision, self._on_object, what="object index",
                     resync=self._reload_objects)

    async def _on_object(self, event: WatchEvent) -> None:
        if event.value is None:
            self.catalog.forget(int(event.key[len(OBJECTS):]))
        else:
            self.catalog.apply_object(event.value, event.version)
        async with self._index_changed:
            self._index_changed.notify_all()

    def _indexed_end(self, stream_id: int) -> int:
        return max((b.end_offset for _k, b in self.index.blocks(stream_id)), default=-1)

    async def await_indexed(self, stream_id: int, end: int, timeout: float) -> int:
        """Wait (at most `timeout`) until the object index reaches offset `end` of a
        stream: another broker's upload reaches it through the watch of `/objects/`.
        Returns how far the index reaches; offsets past it must not be read from objects
        here yet (a missing object would pass for a compacted-away gap)."""
        if self._indexed_end(stream_id) < end and timeout > 0:
            async with self._index_changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._index_changed.wait_for(
                        lambda: self._indexed_end(stream_id) >= end), timeout)
        return self._indexed_end(stream_id)

    async def _await_index(self, m: StreamMeta, timeout: float = 5.0) -> None:
        """Before serving a stream opened after the start: the objects its record counts
        (up to its end) may have been written by another broker (a takeover, a previous
        owner) and reach this index through the watch of `/objects/`, which can lag the
        watch that placed the stream here. Wait for them, so that a read below the end
        never takes a missing object for a compacted-away gap and skips it."""
        if not self.cluster or m.end_offset <= m.start_offset:
            return
        async with self._index_changed:
            try:
                await asyncio.wait_for(self._index_changed.wait_for(
                    lambda: self._indexed_end(m.stream_id) >= m.end_offset), timeout)
            except TimeoutError:
                log.warning("stream %d: the object index reaches offset %d, its record %d "
                            "after %.0fs; serving it anyway", m.stream_id,
                            self._indexed_end(m.stream_id), m.end_offset, timeout)

    async def _reload_objects(self, listing: Listing) -> None:
        live = {json.loads(e.value)["key"] for e in listing}
        for key in [k for k in self.catalog.objects if k not in live]:
            self.index.forget_object(key)
            del self.catalog.objects[key]
        self.catalog.load_objects(listing)
        async with self._index_changed:
            self._index_changed.notify_all()

    # ---- read path ------------------------------------------------------------------

    async def read(
        self, sid: int, start: int, end: int, max_bytes: int
    ) -> tuple[list[bytes | bytearray | memoryview], int]:
        """Whole batches of stream `sid` from `start` below `end`: the log cache, else
        objects (a stream owned elsewhere has only objects here)."""
        out: list[bytes | bytearray | memoryview] = []
        total = 0
        offset = start
        from_objects = False
        while offset < end and (total < max_bytes or not out):
            first_cached = self.cache.first_offset(sid)
            if first_cached is not None and offset >= first_cached:
                bufs, offset, n = self.cache.read(sid, offset, end, max_bytes, total)
                out.extend(bufs)
                total += n
                break
            i, blocks = self.index.find(sid, offset)
            # Gaps are offsets compaction removed: like Kafka, go on to the next record.
            if i >= len(blocks):
                if first_cached is None:
                    break
                offset = min(first_cached, end)
                continue
            key, b = blocks[i]
            if b.start_offset > offset:
                offset = min(b.start_offset, end)
                continue
            from_objects = True
            block = await self.blocks.get(key, b.position, b.size)
            if i + 1 < len(blocks):  # read-ahead for sequential consumers
                nk, nb = blocks[i + 1]
                self.blocks.prefetch(nk, nb.position, nb.size)
            offset, n = _take_records(block, offset, end, max_bytes, total, out)
            total += n
            if n == 0:
                if out:
                    break  # the next batch does not fit in max_bytes
                offset = min(b.end_offset, end)  # compaction emptied the block's tail
        if from_objects:
            self.log_cache_misses += 1
        elif out:
            self.log_cache_hits += 1
        return out, offset


def _take_records(
    block: list[Record], offset: int, end: int, max_bytes: int, have: int,
    out: list[bytes | bytearray | memoryview],
) -> tuple[int, int]:
    """Append the payloads of `block` covering `offset`.. to `out` (no copy)."""
    total = 0
    i = max(bisect.bisect_right(block, offset, key=lambda r: r[0]) - 1, 0)
    for base, last, payload in block[i:]:
        if base >= end:
            break
        if last >= offset:
            if have + total and have + total + len(payload) > max_bytes:
                break
            out.append(payload)
            total += len(payload)
            offset = last + 1
    return offset, total

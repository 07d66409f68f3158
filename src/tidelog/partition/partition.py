"""A Kafka partition over one stream: offsets, high watermark, timestamps, producer state.

Produce batches are validated and CRC-checked as bytes, given offsets by rewriting their
`baseOffset` in place, and appended to the stream in one piece; no record is decoded.
Idempotent and transactional batches are checked against the producer state inside the
stream's `assign` callback, so concurrent in-flight batches of one producer are ordered
by offset. The producer state is snapshotted to `/producers/<stream id>` (written only
once everything it reflects is durable) and rebuilt at load from the snapshot plus a scan
of the batch headers after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from tidelog.metadata.base import MetadataStore
from tidelog.partition.producer_state import (
    ABORT,
    COMMIT,
    DuplicateBatch,
    ProducerState,
    control_type,
)
from tidelog.partition.topic_config import TopicConfig, resolve
from tidelog.protocol import records
from tidelog.protocol.batch_rewrite import record_spans
from tidelog.protocol.record_reader import read_records, record_timestamps
from tidelog.stream.engine import BackPressureTimeout
from tidelog.stream.stream import Stream, StreamError

log = logging.getLogger(__name__)
PRODUCERS = "/producers/"
SNAPSHOT_INTERVAL = 30.0
SNAPSHOT_BYTES = 64 << 20
PRODUCER_EXPIRATION_MS = 86_400_000
_TXN_ATTRS = records.CONTROL_BIT | records.TRANSACTIONAL_BIT
DEFAULT_CONFIG = resolve({}, {})


class PartitionError(Exception):
    """A Kafka error for one partition; `code` is the ErrorCode name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class AppendResult:
    base_offset: int
    log_start_offset: int
    log_append_time: int = -1
    """The time stamped on the batches (LogAppendTime topics), else -1."""


def describe(payload: bytes) -> tuple[int, int]:
    """(max timestamp, record count) of stored batches, for WAL recovery."""
    max_ts, count = -1, 0
    for b in records.iter_headers(payload):
        max_ts = max(max_ts, b.max_timestamp)
        count += b.record_count
    return max_ts, count


def _check_sizes(batches: list[records.BatchInfo], total: int, cfg: TopicConfig) -> None:
    """Kafka's limits: each batch within max.message.bytes, the append within a segment."""
    for b in batches:
        if b.size > cfg.max_message_bytes:
            raise PartitionError("message_too_large", f"the record batch of {b.size} bytes "
                                 f"exceeds max.message.bytes {cfg.max_message_bytes}")
    if total > cfg.segment_bytes:
        raise PartitionError("record_list_too_large", f"the append of {total} bytes exceeds "
                             f"segment.bytes {cfg.segment_bytes}")


def _check_timestamps(batches: list[records.BatchInfo], cfg: TopicConfig, now: int) -> None:
    """CreateTime bounds (message.timestamp.before/after.max.ms), checked on each batch's
    first and largest timestamps: the headers carry them, the records stay unread. A batch
    without timestamps (-1) passes, as in Kafka."""
    low, high = now - cfg.message_timestamp_before_max_ms, now + cfg.message_timestamp_after_max_ms
    for b in batches:
        if b.base_timestamp != -1 and (b.base_timestamp < low or b.max_timestamp > high):
            raise PartitionError("invalid_timestamp", f"batch timestamps "
                                 f"[{b.base_timestamp}, {b.max_timestamp}] are outside "
                                 f"[{low}, {high}] (the broker's time {now} and the topic's "
                                 f"message.timestamp.before/after.max.ms)")


def _producer_batch(b: records.BatchInfo) -> records.BatchInfo | None:
    """The batch if the producer state must check it; refuses what clients may not send."""
    if b.is_control:
        raise records.InvalidRecordError("clients may not write control batches")
    if b.producer_id < 0:
        if b.is_transactional:
            raise records.InvalidRecordError("transactional batch without a producer id")
        return None
    if b.base_sequence < 0:
        raise records.InvalidRecordError("idempotent batch without a sequence number")
    return b


def _check_keys(buf: bytes, batches: list[records.BatchInfo]) -> None:
    """A compacted topic keeps the latest value per key: a record without one is refused,
    as Kafka does. The only per-record work on the produce path, and only here."""
    errors: list[tuple[int, str]] = []
    for info in batches:
        if info.is_control:
            continue
        _body, spans = record_spans(buf, info)  # keys only: no value is copied
        for i, (_start, _end, _offset, key, _tombstone) in enumerate(spans):
            if key is None:
                errors.append((i, "Compacted topic cannot accept message without key."))
    if errors:
        raise records.RecordErrors(f"{len(errors)} records without a key sent to a "
                                   f"compacted topic", errors)


class Partition:
    def __init__(self, topic: str, index: int, stream: Stream, leader_epoch: int = 0,
                 meta: MetadataStore | None = None,
                 producer_expiration_ms: int = PRODUCER_EXPIRATION_MS,
                 config: TopicConfig = DEFAULT_CONFIG) -> None:
        self.topic = topic
        self.index = index
        self.stream = stream
        self.leader_epoch = leader_epoch
        self.meta = meta
        self.producer_expiration_ms = producer_expiration_ms
        self.config = config
        """The topic's resolved config; the topic manager replaces it when configs change."""
        self.producers = ProducerState()
        self._snap_bytes = 0
        self._snap_time = time.monotonic()
        self._snap_task: asyncio.Task[None] | None = None
        self._snap_as_of: int | None = None
        """The offset the stored snapshot (or an empty log) reflects: an unchanged state
        at the same offset is not written again (partitions nobody produced to since)."""

    @property
    def high_watermark(self) -> int:
        return self.stream.confirm_offset

    @property
    def log_start_offset(self) -> int:
        return self.stream.start_offset

    @property
    def last_stable_offset(self) -> int:
        """The first offset of an open transaction, else the high watermark."""
        return self.producers.last_stable_offset(self.stream.confirm_offset)

    def aborted_transactions(self, start: int, end: int) -> list[tuple[int, int]]:
        """(producer id, first offset) of aborted transactions overlapping [start, end)."""
        return self.producers.aborted_transactions(start, end)

    async def append(self, batch_bytes: bytes, timeout: float | None = None) -> AppendResult:
        """Validate, check producer state, assign offsets and make durable.

        Raises `records.InvalidRecordError`, `producer_state.ProducerStateError` or
        `PartitionError` (the topic's size and timestamp limits); a retry of a recent batch
        returns the original offsets once they are durable.
        """
        batches = records.validate(batch_bytes)
        cfg = self.config
        if len(batch_bytes) > cfg.max_message_bytes or len(batch_bytes) > cfg.segment_bytes:
            _check_sizes(batches, len(batch_bytes), cfg)
        if cfg.checks_timestamps:
            _check_timestamps(batches, cfg, int(time.time() * 1000))
        if "compact" in cfg.cleanup_policy:
            _check_keys(batch_bytes, batches)
        first = batches[0]
        checked: records.BatchInfo | None = None
        if len(batches) == 1:
            if first.producer_id >= 0 or first.attributes & _TXN_ATTRS:
                checked = _producer_batch(first)
        elif any(b.producer_id >= 0 or b.attributes & _TXN_ATTRS for b in batches):
            raise records.InvalidRecordError(
                "an idempotent or transactional produce carries one batch per partition")
        buf = bytearray(batch_bytes)
        count = first.last_offset_delta + 1 if len(batches) == 1 else sum(
            b.last_offset_delta + 1 for b in batches)
        append_time = -1
        if cfg.log_append_time:
            append_time = max_ts = int(time.time() * 1000)
            records.set_log_append_time(buf, batches, append_time)
        else:
            max_ts = max(b.max_timestamp for b in batches)
        nrec = sum(b.record_count for b in batches)
        epoch = self.leader_epoch
        state = self.producers

        def assign(base: int) -> None:
            if checked is not None:
                state.append(checked, base)
            records.assign_offsets(buf, batches, base, epoch)

        try:
            base = await self.stream.append(buf, count, max_ts, nrec, assign, timeout)
        except DuplicateBatch as dup:
            await self._wait_durable(dup.last_offset, timeout)
            return AppendResult(dup.base_offset, self.log_start_offset)
        self._appended(len(buf))
        return AppendResult(base, self.log_start_offset, append_time)

    async def delete_records(self, offset: int) -> int:
        """Move the log start to `offset` (-1: the high watermark), as DeleteRecords does;
        returns the new log start (low watermark). Offsets below it stop being readable at
        once; the objects holding only them become garbage."""
        if "delete" not in self.config.cleanup_policy:
            raise PartitionError("policy_violation", f"records of {self.topic}-{self.index} "
                                 f"cannot be deleted: cleanup.policy has no delete")
        hw = self.high_watermark
        target = hw if offset == -1 else offset
        if target < 0 or target > hw:
            raise PartitionError("offset_out_of_range", f"offset {offset} is not in "
                                 f"[0, {hw}] (the high watermark) of {self.topic}-{self.index}")
        if target > self.log_start_offset:
            await self.stream.trim(target)
            self.producers.drop_below(self.log_start_offset)
        return self.log_start_offset

    async def write_marker(self, producer_id: int, producer_epoch: int, commit: bool,
                           coordinator_epoch: int = 0) -> int:
        """Append a COMMIT or ABORT marker ending the producer's transaction here; returns
        its offset once durable. Raises `ProducerStateError` (invalid_producer_epoch,
        transaction_coordinator_fenced)."""
        ts = int(time.time() * 1000)
        buf = bytearray(records.build_control_batch(
            producer_id, producer_epoch, commit, coordinator_epoch, ts))
        batches = records.iter_headers(buf)
        state, epoch = self.producers, self.leader_epoch
        kind = COMMIT if commit else ABORT

        def assign(base: int) -> None:
            state.check_marker(producer_id, producer_epoch, coordinator_epoch)
            records.assign_offsets(buf, batches, base, epoch)
            state.marker(producer_id, producer_epoch, kind, coordinator_epoch, base, ts)

        base = await self.stream.append(buf, 1, ts, 1, assign)
        self._appended(len(buf))
        return base

    async def _wait_durable(self, last_offset: int, timeout: float | None) -> None:
        """Wait until `last_offset` is below the high watermark (a duplicate's original)."""
        deadline = time.monotonic() + (timeout or 30.0)
        while self.stream.confirm_offset <= last_offset:
            if self.stream.closed:
                raise StreamError(f"stream {self.stream.stream_id} is closed")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackPressureTimeout("the original of a retried batch is not durable")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait_for_data(), remaining)

    # ---- producer state durability ------------------------------------------------------

    def _appended(self, nbytes: int) -> None:
        self._snap_bytes += nbytes
        if self.meta is None or self._snap_task is not None:
            return
        if self._snap_bytes >= SNAPSHOT_BYTES or (
                self.producers.changed
                and time.monotonic() - self._snap_time >= SNAPSHOT_INTERVAL):
            self._snap_task = asyncio.ensure_future(self._background_snapshot())

    async def _background_snapshot(self) -> None:
        try:
            await self.snapshot_producers()
        except Exception as exc:  # the next append tries again
            log.warning("producer snapshot of %s-%d failed: %r", self.topic, self.index, exc)
            self.producers.changed = True
        finally:
            self._snap_task = None

    async def snapshot_producers(self) -> None:
        """Expire idle producers and write the state once all it reflects is durable."""
        if self.meta is None:
            return
        state = self.producers
        state.expire(int(time.time() * 1000), self.producer_expiration_ms)
        state.trim(self.log_start_offset)
        as_of = self.stream.next_offset
        if not state.changed and as_of == self._snap_as_of:
            return
        data = state.dumps(as_of)
        state.changed = False
        self._snap_bytes, self._snap_time = 0, time.monotonic()
        while self.stream.confirm_offset < as_of:
            if self.stream.closed:
                return
            await self.wait_for_data()
        if not self.stream.closed:
            await self.meta.put(f"{PRODUCERS}{self.stream.stream_id}", data)
            self._snap_as_of = as_of

    async def restore_producers(self) -> None:
        """Rebuild the producer state: the snapshot, then the batch headers after it."""
        if self.meta is None:
            return
        entry = await self.meta.get(f"{PRODUCERS}{self.stream.stream_id}")
        state, start = ProducerState(), self.log_start_offset
        if entry is not None:
            data = json.loads(entry.value)
            if data["as_of"] <= self.high_watermark:
                state, start = ProducerState.from_json(data), max(start, data["as_of"])
            else:
                log.warning("%s-%d: producer snapshot at %d is past the log end %d; rebuilding",
                            self.topic, self.index, data["as_of"], self.high_watermark)
        end = self.high_watermark
        await self._replay(state, start, end)
        self.producers = state
        if end == start:  # nothing after the snapshot (or an empty log): it stands
            self._snap_as_of = self.stream.next_offset
        else:
            await self.snapshot_producers()

    async def _replay(self, state: ProducerState, start: int, end: int) -> None:
        offset = start
        while offset < end:
            bufs, nxt = await self.stream.fetch(offset, 1 << 20, end)
            if not bufs:
                break
            for buf in bufs:
                for b in records.iter_headers(buf):
                    if b.base_offset < offset or b.producer_id < 0:
                        continue
                    if not b.is_control:
                        state.record(b, b.base_offset)
                        continue
                    _off, _ts, key, value = read_records(buf, b)[0]
                    coord = struct.unpack_from(">hi", value)[1] if value and len(
                        value) >= 6 else -1
                    state.marker(b.producer_id, b.producer_epoch, control_type(key), coord,
                                 b.base_offset, b.max_timestamp)
            offset = nxt

    def in_memory(self, offset: int) -> bool:
        """`offset` is in the log cache: a read of it needs no object storage."""
        return self.stream.in_memory(offset)

    async def read(
        self, offset: int, max_bytes: int, end: int | None = None
    ) -> list[bytes | bytearray | memoryview]:
        """Whole batches from `offset` below `end` (default: the high watermark)."""
        bufs, _ = await self.stream.fetch(offset, max_bytes, end)
        return bufs

    def wait_for_data(self) -> asyncio.Future[None]:
        return self.stream.wait_for_data()

    def add_waiter(self, fut: asyncio.Future[None]) -> None:
        """Complete `fut` at the next append here (one future for a whole fetch)."""
        self.stream.add_waiter(fut)

    async def offset_for_timestamp(self, timestamp: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record whose timestamp is >= `timestamp`.

        Block and batch max timestamps skip what cannot match; only the batch that holds
        the answer is decompressed and walked.
        """
        for start, end, max_ts in self.stream.time_ranges():
            if max_ts < timestamp:
                continue
            found = await self._first_record(
                start, end, lambda b: b.max_timestamp >= timestamp, lambda ts: ts >= timestamp)
            if found is not None:
                return found
        return None

    async def max_timestamp(self) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record holding the largest timestamp."""
        ranges = self.stream.time_ranges()
        if not ranges:
            return None
        best = max(r[2] for r in ranges)
        for start, end, max_ts in ranges:
            if max_ts == best:
                found = await self._first_record(
                    start, end, lambda b: b.max_timestamp == best, lambda ts: ts == best)
                if found is not None:
                    return found
        return None

    async def _first_record(
        self, start: int, end: int, batch_may_match: Callable[[records.BatchInfo], bool],
        record_matches: Callable[[int], bool],
    ) -> tuple[int, int] | None:
        """First record in [start, end) whose timestamp matches: (offset, timestamp)."""
        offset = max(start, self.log_start_offset)
        while offset < end:
            bufs, nxt = await self.stream.fetch(offset, 1 << 20, end)
            if not bufs:
                break
            for buf in bufs:
                for b in records.iter_headers(buf):
                    if b.last_offset < offset or not batch_may_match(b):
                        continue
                    for rec_offset, ts in record_timestamps(buf, b):
                        if rec_offset >= offset and record_matches(ts):
                            return rec_offset, ts
            offset = nxt
        return None

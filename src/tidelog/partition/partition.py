"""A Kafka partition over one stream: offsets, high watermark, timestamps.

Produce batches are validated and CRC-checked as bytes, given offsets by rewriting their
`baseOffset` in place, and appended to the stream in one piece; no record is decoded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from tidelog.protocol import records
from tidelog.protocol.record_reader import record_timestamps
from tidelog.stream.stream import Stream


@dataclass(frozen=True, slots=True)
class AppendResult:
    base_offset: int
    log_start_offset: int


def describe(payload: bytes) -> tuple[int, int]:
    """(max timestamp, record count) of stored batches, for WAL recovery."""
    max_ts, count = -1, 0
    for b in records.iter_headers(payload):
        max_ts = max(max_ts, b.max_timestamp)
        count += b.record_count
    return max_ts, count


class Partition:
    def __init__(self, topic: str, index: int, stream: Stream, leader_epoch: int = 0) -> None:
        self.topic = topic
        self.index = index
        self.stream = stream
        self.leader_epoch = leader_epoch

    @property
    def high_watermark(self) -> int:
        return self.stream.confirm_offset

    @property
    def log_start_offset(self) -> int:
        return self.stream.start_offset

    async def append(self, batch_bytes: bytes, timeout: float | None = None) -> AppendResult:
        """Validate, assign offsets and make durable; raises `records.InvalidRecordError`."""
        batches = records.validate(batch_bytes)
        buf = bytearray(batch_bytes)
        count = batches[-1].last_offset_delta + 1 if len(batches) == 1 else sum(
            b.last_offset_delta + 1 for b in batches)
        max_ts = max(b.max_timestamp for b in batches)
        nrec = sum(b.record_count for b in batches)
        epoch = self.leader_epoch

        def assign(base: int) -> None:
            records.assign_offsets(buf, batches, base, epoch)

        base = await self.stream.append(buf, count, max_ts, nrec, assign, timeout)
        return AppendResult(base, self.log_start_offset)

    async def read(
        self, offset: int, max_bytes: int
    ) -> list[bytes | bytearray | memoryview]:
        bufs, _ = await self.stream.fetch(offset, max_bytes)
        return bufs

    def wait_for_data(self) -> asyncio.Future[None]:
        return self.stream.wait_for_data()

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

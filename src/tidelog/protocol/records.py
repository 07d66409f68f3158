"""Kafka record batches (magic v2) as bytes.

A produce request carries one or more batches back to back. The broker never decodes the
records inside a batch on the hot path: it reads the 61-byte header with one `struct`
call, checks the CRC32C (which covers everything from `attributes` to the end, so it does
not cover `baseOffset` or `partitionLeaderEpoch`), and assigns offsets by rewriting
`baseOffset` in place.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import crc32c

# baseOffset, batchLength, partitionLeaderEpoch, magic, crc, attributes, lastOffsetDelta,
# baseTimestamp, maxTimestamp, producerId, producerEpoch, baseSequence, recordCount
HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = HEADER.size  # 61
LOG_OVERHEAD = 12  # baseOffset + batchLength: bytes not counted in batchLength
CRC_START = 21  # first byte covered by the CRC (attributes)
MAGIC_OFFSET = 16
BASE_OFFSET = struct.Struct(">q")
LEADER_EPOCH = struct.Struct(">i")

COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_BIT = 0x08
TRANSACTIONAL_BIT = 0x10
CONTROL_BIT = 0x20


class InvalidRecordError(ValueError):
    """The bytes are not a well-formed v2 batch (maps to INVALID_RECORD / CORRUPT_MESSAGE)."""


class CorruptRecordError(InvalidRecordError):
    """CRC mismatch or truncated batch (maps to CORRUPT_MESSAGE)."""


class RecordErrors(InvalidRecordError):
    """Records the broker refuses one by one (KIP-467): INVALID_RECORD with the index of
    each bad record inside its batch, so the client fails exactly those."""

    def __init__(self, message: str, errors: list[tuple[int, str]]) -> None:
        super().__init__(message)
        self.errors = errors


class UnsupportedMagicError(InvalidRecordError):
    """Message format v0/v1 (maps to UNSUPPORTED_VERSION)."""


@dataclass(frozen=True, slots=True)
class BatchInfo:
    position: int
    """Byte position of the batch inside the buffer it was read from."""
    size: int
    base_offset: int
    last_offset_delta: int
    attributes: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def compression(self) -> int:
        return self.attributes & COMPRESSION_MASK

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL_BIT)

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL_BIT)


def read_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchInfo:
    """Header of the batch at `pos`; raises if fewer than a whole batch is present."""
    if len(buf) - pos < HEADER_SIZE:
        raise CorruptRecordError("truncated batch header")
    magic = buf[pos + MAGIC_OFFSET]
    if magic != 2:
        raise UnsupportedMagicError(f"record batch magic {magic} is not supported (need 2)")
    (base, length, _epoch, _magic, _crc, attrs, lod, bts, mts, pid, pep, bseq, count) = (
        HEADER.unpack_from(buf, pos)
    )
    size = length + LOG_OVERHEAD
    if length < HEADER_SIZE - LOG_OVERHEAD or pos + size > len(buf):
        raise CorruptRecordError(f"batch length {length} does not fit the buffer")
    return BatchInfo(pos, size, base, lod, attrs, bts, mts, pid, pep, bseq, count)


def iter_headers(buf: bytes | bytearray | memoryview) -> list[BatchInfo]:
    """Headers of every whole batch in `buf`; a partial trailing batch is ignored.

    Used on the read side, where a block may end mid-batch only if it was cut by a
    reader's size limit; batches we stored are always whole.
    """
    out: list[BatchInfo] = []
    pos, n = 0, len(buf)
    while n - pos >= HEADER_SIZE:
        (length,) = struct.unpack_from(">i", buf, pos + 8)
        if pos + length + LOG_OVERHEAD > n:
            break
        out.append(read_header(buf, pos))
        pos += length + LOG_OVERHEAD
    return out


def validate(buf: bytes | bytearray | memoryview) -> list[BatchInfo]:
    """Parse and CRC-check every batch of a produce payload; all or nothing."""
    mv = memoryview(buf)
    out: list[BatchInfo] = []
    pos, n = 0, len(mv)
    if n == 0:
        raise InvalidRecordError("empty record set")
    while pos < n:
        info = read_header(mv, pos)
        (_, _, _, _, crc, *_rest) = HEADER.unpack_from(mv, pos)
        if crc32c.crc32c(mv[pos + CRC_START : pos + info.size]) != crc:
            raise CorruptRecordError("record batch CRC32C mismatch")
        if info.last_offset_delta < 0 or info.record_count < 0:
            raise InvalidRecordError("negative lastOffsetDelta or record count")
        out.append(info)
        pos += info.size
    return out


def assign_offsets(
    buf: bytearray, batches: list[BatchInfo], base_offset: int, leader_epoch: int = 0
) -> int:
    """Rewrite each batch's baseOffset (and leader epoch) in place; returns the next offset."""
    nxt = base_offset
    for b in batches:
        BASE_OFFSET.pack_into(buf, b.position, nxt)
        LEADER_EPOCH.pack_into(buf, b.position + 12, leader_epoch)
        nxt += b.last_offset_delta + 1
    return nxt


_ATTRIBUTES = struct.Struct(">h")
_MAX_TIMESTAMP = struct.Struct(">q")
_CRC = struct.Struct(">I")


def set_log_append_time(buf: bytearray, batches: list[BatchInfo], timestamp: int) -> None:
    """Stamp each batch with the broker's time (topics with LogAppendTime): set the
    timestamp-type bit and maxTimestamp, then the CRC they are covered by. Consumers take
    every record's time from maxTimestamp in such a batch; the records stay as sent."""
    for b in batches:
        p = b.position
        _ATTRIBUTES.pack_into(buf, p + CRC_START, b.attributes | TIMESTAMP_TYPE_BIT)
        _MAX_TIMESTAMP.pack_into(buf, p + 35, timestamp)
        _CRC.pack_into(buf, p + 17, crc32c.crc32c(memoryview(buf)[p + CRC_START : p + b.size]))


def build_batch(
    records: Sequence[tuple[bytes | None, bytes | None]],
    base_offset: int = 0,
    timestamp: int = 0,
    attributes: int = 0,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """An uncompressed v2 batch of (key, value) records without headers.

    For the broker's own writes (and tests); clients build their own batches.
    """
    body = bytearray()
    for i, (key, value) in enumerate(records):
        rec = bytearray()
        rec += b"\x00"  # record attributes
        rec += _varint(0)  # timestamp delta
        rec += _varint(i)  # offset delta
        rec += _varint(-1) if key is None else _varint(len(key)) + key
        rec += _varint(-1) if value is None else _varint(len(value)) + value
        rec += _varint(0)  # header count
        body += _varint(len(rec)) + rec
    length = HEADER_SIZE - LOG_OVERHEAD + len(body)
    head = bytearray(
        HEADER.pack(
            base_offset, length, 0, 2, 0, attributes, max(len(records) - 1, 0),
            timestamp, timestamp, producer_id, producer_epoch, base_sequence, len(records),
        )
    )
    out = head + body
    struct.pack_into(">I", out, 17, crc32c.crc32c(bytes(out[CRC_START:])))
    return bytes(out)


def build_control_batch(
    producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int,
    timestamp: int,
) -> bytes:
    """A transaction marker: one control record, key (version 0, type 0 abort / 1 commit),
    value (version 0, coordinator epoch)."""
    key = struct.pack(">hh", 0, 1 if commit else 0)
    value = struct.pack(">hi", 0, coordinator_epoch)
    return build_batch([(key, value)], timestamp=timestamp,
                       attributes=CONTROL_BIT | TRANSACTIONAL_BIT, producer_id=producer_id,
                       producer_epoch=producer_epoch)


def _varint(value: int) -> bytes:
    v = (value << 1) ^ (value >> 63)  # zigzag
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)

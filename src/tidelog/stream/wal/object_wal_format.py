"""The format of `ObjectWAL`'s objects: one object per group commit, pinned by golden bytes.

- *key*: `{sequence:020d}.wal` under the WAL's prefix, so keys sort by sequence number.
- *object*: a fixed header, then the group's records back to back. A record is a ring-file
  record (`ring_format.RECORD_HEADER`, kind data, session 0, its own CRC32C over header and
  payload) followed by its payload; positions run on from `start` without gaps, so a record
  takes the same `RECORD_HEADER_SIZE + len(payload)` bytes of capacity as in a `FileWAL`.
- *header*: `{magic "TLWO", version u16, reserved u16, epoch u64, sequence u64, start u64,
  end u64, trim u64, count u32, crc32c u32}`, the CRC over everything before it. `epoch` is
  the writer's, `trim` its trim position when it wrote the object. An object with no record
  (`start == end`) is a *marker*: the claim written by `open`, or the trim written by
  `close`.

A PUT is atomic, so an object is whole or absent: a bad CRC is corruption, never a torn tail,
and decoding raises `WalError` instead of cutting.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import crc32c

from tidelog.stream.wal.base import WalError, WalRecord
from tidelog.stream.wal.ring_format import (
    KIND_DATA,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    RECORD_MAGIC,
    encode_record_header,
)

MAGIC = b"TLWO"
FORMAT_VERSION = 1
_HEADER_BODY = struct.Struct(">4sHHQQQQQI")
_U32 = struct.Struct(">I")
HEADER_SIZE = _HEADER_BODY.size + _U32.size
_CRC_FROM = 5
"""A record's CRC covers its header from `kind` on (as in `ring_format`)."""
_KEY = re.compile(r"^(\d{20})\.wal$")

Buffer = bytes | bytearray | memoryview


def object_key(sequence: int) -> str:
    return f"{sequence:020d}.wal"


def parse_key(key: str) -> int | None:
    """The sequence number of a WAL object key (a path under the prefix), None if not one."""
    match = _KEY.match(key.rpartition("/")[2])
    return int(match.group(1)) if match else None


@dataclass(frozen=True, slots=True)
class ObjectHeader:
    epoch: int
    sequence: int
    start: int
    """Position of the first record (the end of the previous object)."""
    end: int
    """Position right after the last record."""
    trim: int
    count: int
    """Records in the object."""


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """A record to encode: stream coordinates, payload and its position."""

    stream_id: int
    stream_epoch: int
    base_offset: int
    last_offset: int
    payload: Buffer
    position: int


def encode_header(header: ObjectHeader) -> bytes:
    body = _HEADER_BODY.pack(
        MAGIC,
        FORMAT_VERSION,
        0,
        header.epoch,
        header.sequence,
        header.start,
        header.end,
        header.trim,
        header.count,
    )
    return body + _U32.pack(crc32c.crc32c(body))


def encode_object(
    epoch: int, sequence: int, trim: int, start: int, records: Sequence[PendingRecord]
) -> bytes:
    """One object holding `records` (positions consecutive from `start`)."""
    parts: list[Buffer] = []
    position = start
    for r in records:
        if r.position != position:
            raise ValueError(f"record at {r.position}, expected {position}")
        parts.append(
            encode_record_header(
                KIND_DATA,
                0,
                r.position,
                r.stream_id,
                r.stream_epoch,
                r.base_offset,
                r.last_offset,
                r.payload,
            )
        )
        parts.append(r.payload)
        position += RECORD_HEADER_SIZE + len(r.payload)
    header = ObjectHeader(epoch, sequence, start, position, trim, len(records))
    return b"".join([encode_header(header), *parts])


def decode_header(buf: Buffer, sequence: int | None = None) -> ObjectHeader:
    """The header at the start of `buf`; `sequence` (from the key) must match if given."""
    view = memoryview(buf)
    if len(view) < HEADER_SIZE:
        raise WalError(f"WAL object {sequence}: {len(view)} bytes, shorter than a header")
    body = view[: _HEADER_BODY.size]
    (crc,) = _U32.unpack_from(view, _HEADER_BODY.size)
    if crc32c.crc32c(body) != crc:
        raise WalError(f"WAL object {sequence}: header CRC mismatch")
    magic, version, _, epoch, seq, start, end, trim, count = _HEADER_BODY.unpack(body)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise WalError(f"WAL object {sequence}: not a Tidelog WAL object (format {version})")
    if sequence is not None and seq != sequence:
        raise WalError(f"WAL object {sequence} says it is object {seq}")
    if end < start:
        raise WalError(f"WAL object {sequence}: end {end} before start {start}")
    return ObjectHeader(epoch, seq, start, end, trim, count)


def decode_records(buf: Buffer, header: ObjectHeader) -> Iterator[WalRecord]:
    """Every record of the object, checked (CRC, positions, count, length)."""
    view = memoryview(buf)
    at, position = HEADER_SIZE, header.start
    for _ in range(header.count):
        if at + RECORD_HEADER_SIZE > len(view):
            raise WalError(f"WAL object {header.sequence}: truncated")
        head = view[at : at + RECORD_HEADER_SIZE]
        magic, crc, kind, length, _, pos, sid, sepoch, base, last = RECORD_HEADER.unpack(head)
        payload = view[at + RECORD_HEADER_SIZE : at + RECORD_HEADER_SIZE + length]
        if (
            magic != RECORD_MAGIC
            or kind != KIND_DATA
            or pos != position
            or len(payload) != length
            or crc32c.crc32c(payload, value=crc32c.crc32c(head[_CRC_FROM:])) != crc
        ):
            raise WalError(f"WAL object {header.sequence}: bad record at position {position}")
        next_position = position + RECORD_HEADER_SIZE + length
        yield WalRecord(sid, sepoch, base, last, bytes(payload), position, next_position)
        at += RECORD_HEADER_SIZE + length
        position = next_position
    if position != header.end or at != len(view):
        raise WalError(f"WAL object {header.sequence}: records do not match the header")

"""Fetch responses encoded straight into a list of buffers.

The record bytes of a fetch are most of the response. Encoding them through kio's
dataclasses copies them three times (join, write, getvalue); here they go out as the very
buffers the log cache or block cache holds, and the socket writes the list with one
`writelines`. Every served version is checked byte for byte against kio's encoding
(`tests/unit/test_fetch_encoder.py`).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

Buffer = bytes | bytearray | memoryview

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_HEAD_V0 = struct.Struct(">ii")  # size placeholder is separate; correlation, throttle
_PART = struct.Struct(">ihqqq")  # index, error, high watermark, last stable, log start
_ABORTED = struct.Struct(">qq")
MIN_VERSION, MAX_VERSION = 4, 16
FLEXIBLE_FROM = 12
TOPIC_ID_FROM = 13


@dataclass(slots=True)
class PartitionOut:
    index: int
    error_code: int
    high_watermark: int
    last_stable_offset: int
    log_start_offset: int
    records: Sequence[Buffer] = ()
    aborted: Sequence[tuple[int, int]] | None = None
    """(producer_id, first_offset) of aborted transactions, or None."""
    preferred_read_replica: int = -1


@dataclass(slots=True)
class TopicOut:
    name: str
    topic_id: uuid.UUID | None
    partitions: list[PartitionOut] = field(default_factory=list)


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_fetch_response(
    version: int,
    correlation_id: int,
    topics: Sequence[TopicOut],
    error_code: int = 0,
    session_id: int = 0,
    throttle_ms: int = 0,
) -> list[Buffer]:
    """The whole size-prefixed response frame as buffers (records not copied)."""
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise ValueError(f"fetch version {version} is not served")
    flexible = version >= FLEXIBLE_FROM
    head = bytearray(b"\x00\x00\x00\x00")
    head += _I32.pack(correlation_id)
    if flexible:
        head += b"\x00"  # response header v1: no tagged fields
    head += _I32.pack(throttle_ms)
    if version >= 7:
        head += _I16.pack(error_code) + _I32.pack(session_id)
    out: list[Buffer] = [head]
    cur = head  # small fields accumulate here; record buffers are appended as they are

    def array_len(n: int) -> bytes:
        return _uvarint(n + 1) if flexible else _I32.pack(n)

    cur += array_len(len(topics))
    for t in topics:
        if version >= TOPIC_ID_FROM:
            cur += (t.topic_id or uuid.UUID(int=0)).bytes
        else:
            name = t.name.encode()
            cur += (_uvarint(len(name) + 1) if flexible else _I16.pack(len(name))) + name
        cur += array_len(len(t.partitions))
        for p in t.partitions:
            cur += _PART.pack(p.index, p.error_code, p.high_watermark, p.last_stable_offset,
                              p.log_start_offset)[: 4 + 2 + 8 + 8 + (8 if version >= 5 else 0)]
            if p.aborted is None:
                cur += b"\x00" if flexible else _I32.pack(-1)
            else:
                cur += array_len(len(p.aborted))
                for pid, first in p.aborted:
                    cur += _ABORTED.pack(pid, first)
                    if flexible:
                        cur += b"\x00"
            if version >= 11:
                cur += _I32.pack(p.preferred_read_replica)
            size = sum(len(b) for b in p.records)
            cur += _uvarint(size + 1) if flexible else _I32.pack(size)
            if p.records:
                out.extend(p.records)
                cur = bytearray()
                out.append(cur)
            if flexible:
                cur += b"\x00"  # partition tagged fields
        if flexible:
            cur += b"\x00"  # topic tagged fields
    if flexible:
        cur += b"\x00"  # response tagged fields
    total = sum(len(b) for b in out) - 4
    _I32.pack_into(head, 0, total)
    return out

"""Reading the records inside a batch: offsets and timestamps only.

Off the hot path: ListOffsets by timestamp and max timestamp need the first *record*
matching, not the first batch, so the one batch that can hold it is decompressed and
walked here. Codecs through `cramjam` (one well-kept library for gzip, snappy, lz4 and
zstd); snappy may come raw or in the xerial framing the Java client writes.
"""

from __future__ import annotations

import struct
import zlib

import cramjam

from tidelog.protocol.records import (
    HEADER_SIZE,
    TIMESTAMP_TYPE_BIT,
    BatchInfo,
    InvalidRecordError,
)

XERIAL_MAGIC = b"\x82SNAPPY\x00"
_BE_I32 = struct.Struct(">i")


def _xerial(data: bytes) -> bytes:
    out = bytearray()
    pos = 16  # magic (8) + version (4) + compatible version (4)
    while pos + 4 <= len(data):
        (n,) = _BE_I32.unpack_from(data, pos)
        pos += 4
        out += bytes(cramjam.snappy.decompress_raw(data[pos : pos + n]))
        pos += n
    return bytes(out)


def decompress(codec: int, data: bytes) -> bytes:
    if codec == 0:
        return data
    if codec == 1:
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    if codec == 2:
        if data.startswith(XERIAL_MAGIC):
            return _xerial(data)
        return bytes(cramjam.snappy.decompress_raw(data))
    if codec == 3:
        return bytes(cramjam.lz4.decompress(data))
    if codec == 4:
        return bytes(cramjam.zstd.decompress(data))
    raise InvalidRecordError(f"unknown compression codec {codec}")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Zigzag varint at `pos`: (value, next position)."""
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise InvalidRecordError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def record_timestamps(buf: bytes | bytearray | memoryview, info: BatchInfo) -> list[
        tuple[int, int]]:
    """(offset, timestamp) of every record in the batch `info` describes."""
    if info.attributes & TIMESTAMP_TYPE_BIT:  # LogAppendTime: one time for the batch
        return [(info.base_offset + i, info.max_timestamp) for i in range(info.record_count)]
    return [(offset, ts) for offset, ts, _key, _value in read_records(buf, info)]


def read_records(
    buf: bytes | bytearray | memoryview, info: BatchInfo
) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """(offset, timestamp, key, value) of every record in the batch; headers skipped.

    For the broker's own internal topics and tools, not the hot path.
    """
    body = decompress(info.compression, bytes(buf[info.position + HEADER_SIZE :
                                                  info.position + info.size]))
    log_append = bool(info.attributes & TIMESTAMP_TYPE_BIT)
    out = []
    pos = 0
    for _ in range(info.record_count):
        length, pos = _varint(body, pos)
        end = pos + length
        pos += 1  # attributes
        ts_delta, pos = _varint(body, pos)
        off_delta, pos = _varint(body, pos)
        key, pos = _bytes(body, pos)
        value, pos = _bytes(body, pos)
        ts = info.max_timestamp if log_append else info.base_timestamp + ts_delta
        out.append((info.base_offset + off_delta, ts, key, value))
        pos = end
    return out


def _bytes(buf: bytes, pos: int) -> tuple[bytes | None, int]:
    n, pos = _varint(buf, pos)
    if n < 0:
        return None, pos
    return buf[pos : pos + n], pos + n

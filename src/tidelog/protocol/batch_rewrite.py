"""Rewriting a stored batch with some of its records removed (log compaction).

The kept records' bytes are copied unchanged: each record carries its offset and
timestamp as deltas from the batch header, so keeping the header's base offset, base
timestamp and last offset delta keeps every record's offset and time (gaps are allowed,
as in Kafka). Only the record count, the length, the codec (written uncompressed) and the
CRC change. Off the hot path: a background compactor calls this.
"""

from __future__ import annotations

import struct

import crc32c

from tidelog.protocol.record_reader import _bytes, _varint, decompress
from tidelog.protocol.records import (
    COMPRESSION_MASK,
    CRC_START,
    HEADER_SIZE,
    LOG_OVERHEAD,
    BatchInfo,
)

_LENGTH = struct.Struct(">i")
_CRC = struct.Struct(">I")
_ATTRS = struct.Struct(">h")
_COUNT = struct.Struct(">i")
CRC_POS = 17
ATTRS_POS = 21
COUNT_POS = HEADER_SIZE - 4


def record_spans(
    buf: bytes | bytearray | memoryview, info: BatchInfo
) -> tuple[bytes, list[tuple[int, int, int, bytes | None, bool]]]:
    """The batch's (decompressed) records body and each record's byte span in it, with
    its offset, key and whether its value is null (a tombstone)."""
    body = decompress(info.compression, bytes(buf[info.position + HEADER_SIZE :
                                                  info.position + info.size]))
    out: list[tuple[int, int, int, bytes | None, bool]] = []
    pos = 0
    for _ in range(info.record_count):
        start = pos
        length, pos = _varint(body, pos)
        end = pos + length
        pos += 1  # attributes
        _ts_delta, pos = _varint(body, pos)
        off_delta, pos = _varint(body, pos)
        key, pos = _bytes(body, pos)
        vlen, _ = _varint(body, pos)
        out.append((start, end, info.base_offset + off_delta, key, vlen < 0))
        pos = end
    return body, out


def rebuild_batch(buf: bytes | bytearray | memoryview, info: BatchInfo, body: bytes,
                  keep: list[tuple[int, int]]) -> bytes:
    """The batch with only the records whose body spans are in `keep`, uncompressed."""
    records = b"".join(body[s:e] for s, e in keep)
    out = bytearray(buf[info.position : info.position + HEADER_SIZE])
    out += records
    _LENGTH.pack_into(out, 8, len(out) - LOG_OVERHEAD)
    _ATTRS.pack_into(out, ATTRS_POS, info.attributes & ~COMPRESSION_MASK)
    _COUNT.pack_into(out, COUNT_POS, len(keep))
    _CRC.pack_into(out, CRC_POS, crc32c.crc32c(memoryview(out)[CRC_START:]))
    return bytes(out)

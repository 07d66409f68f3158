from __future__ import annotations

import pytest

from tidelog.stream.object_format import (
    FOOTER,
    INDEX_ENTRY,
    ObjectBuilder,
    ObjectFormatError,
    iter_records,
    parse_footer,
    parse_index,
)

GOLDEN = bytes.fromhex(
    # block 0: stream 7, records [0..1] "ab", [2..2] "c"
    "0000000000000000" "0000000000000001" "00000002" "6162"
    "0000000000000002" "0000000000000002" "00000001" "63"
    # index entry: stream 7, offsets [0, 3), position 0, size 43, 3 records, max ts 99
    "0000000000000007" "0000000000000000" "0000000000000003" "0000000000000000"
    "0000002b" "00000003" "0000000000000063"
    # footer: index at 43, 48 bytes, version 1, reserved, magic
    "000000000000002b" "00000030" "0001" "000000000000" "54444c4f"
)


def build() -> bytes:
    b = ObjectBuilder()
    b.add_block(7, [(0, 1, b"ab"), (2, 2, b"c")], record_count=3, max_timestamp=99)
    return b"".join(bytes(x) for x in b.finish())


def test_golden_bytes() -> None:
    assert build() == GOLDEN


def test_parse_back() -> None:
    data = build()
    pos, size = parse_footer(data[-FOOTER.size:])
    [entry] = parse_index(data[pos : pos + size])
    assert (entry.stream_id, entry.start_offset, entry.end_offset) == (7, 0, 3)
    block = memoryview(data)[entry.position : entry.position + entry.size]
    assert [(b, last, bytes(p)) for b, last, p in iter_records(block)] == [
        (0, 1, b"ab"), (2, 2, b"c")]
    assert INDEX_ENTRY.size == 48


def test_bad_magic() -> None:
    data = bytearray(build())
    data[-1] ^= 1
    with pytest.raises(ObjectFormatError):
        parse_footer(bytes(data[-FOOTER.size:]))

"""Object layout shared by stream set objects and stream objects.

    [data block]...[data block][index][footer]

A *data block* holds contiguous records of one stream (~512 KiB, never splitting a
record); each record is framed as `{base_offset, last_offset, length}` + the opaque payload,
so the engine walks a block without knowing what the payload is. The *index* has one
fixed-size entry per block; the fixed *footer* says where the index is. A reader of an
unknown object reads the footer, then the index, then only the blocks it needs (range
GETs). Every field is big-endian; the format is pinned by a golden-bytes test.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

MAGIC = b"TDLO"
FORMAT_VERSION = 1
# stream_id, start_offset, end_offset (exclusive), position, size, record_count, max_timestamp
INDEX_ENTRY = struct.Struct(">QqqQIIq")
# index_position, index_size, format_version, reserved, magic
FOOTER = struct.Struct(">QIH6s4s")
# base_offset, last_offset, payload length
RECORD = struct.Struct(">qqI")


Record = tuple[int, int, bytes | bytearray | memoryview]
"""`(base_offset, last_offset, payload)`."""


class ObjectFormatError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class BlockIndex:
    stream_id: int
    start_offset: int
    end_offset: int
    position: int
    size: int
    record_count: int
    max_timestamp: int

    def to_list(self) -> list[int]:
        return [self.stream_id, self.start_offset, self.end_offset, self.position, self.size,
                self.record_count, self.max_timestamp]

    @classmethod
    def from_list(cls, v: Sequence[int]) -> BlockIndex:
        return cls(*v)


class ObjectBuilder:
    """Collects blocks and produces the object's buffers without copying the batches."""

    def __init__(self) -> None:
        self.blocks: list[list[bytes | bytearray | memoryview]] = []
        self.index: list[BlockIndex] = []
        self.size = 0

    def add_block(
        self,
        stream_id: int,
        records: Sequence[tuple[int, int, bytes | bytearray | memoryview]],
        record_count: int,
        max_timestamp: int,
        span: tuple[int, int] | None = None,
    ) -> None:
        """One block of `(base_offset, last_offset, payload)` records, contiguous offsets.

        `span` (start, end) is the offset range the block answers for when it is wider than
        its records: compaction removed records at its edges (gaps are Kafka semantics)."""
        bufs: list[bytes | bytearray | memoryview] = []
        size = 0
        for base, last, payload in records:
            bufs.append(RECORD.pack(base, last, len(payload)))
            bufs.append(payload)
            size += RECORD.size + len(payload)
        start, end = span if span is not None else (records[0][0], records[-1][1] + 1)
        self.index.append(BlockIndex(stream_id, start, end, self.size, size, record_count,
                                     max_timestamp))
        self.blocks.append(bufs)
        self.size += size

    def block_records(self, i: int) -> list[Record]:
        """Block `i` as records, over the caller's own buffers (for the block cache)."""
        bufs = self.blocks[i]
        return [(*RECORD.unpack(bufs[j])[:2], bufs[j + 1]) for j in range(0, len(bufs), 2)]

    def finish(self) -> list[bytes | bytearray | memoryview]:
        index = b"".join(INDEX_ENTRY.pack(*e.to_list()) for e in self.index)
        footer = FOOTER.pack(self.size, len(index), FORMAT_VERSION, b"\x00" * 6, MAGIC)
        return [buf for block in self.blocks for buf in block] + [index, footer]


def parse_footer(data: bytes) -> tuple[int, int]:
    """(index_position, index_size) from the object's last FOOTER.size bytes."""
    if len(data) != FOOTER.size:
        raise ObjectFormatError("footer has the wrong size")
    pos, size, version, _, magic = FOOTER.unpack(data)
    if magic != MAGIC:
        raise ObjectFormatError("not a tidelog object (bad magic)")
    if version != FORMAT_VERSION:
        raise ObjectFormatError(f"unsupported object format version {version}")
    return pos, size


def parse_index(data: bytes) -> list[BlockIndex]:
    if len(data) % INDEX_ENTRY.size:
        raise ObjectFormatError("index size is not a multiple of the entry size")
    return [BlockIndex(*t) for t in INDEX_ENTRY.iter_unpack(data)]


def iter_records(block: memoryview) -> list[Record]:
    """`(base_offset, last_offset, payload view)` of every record in a block."""
    out: list[Record] = []
    pos, n = 0, len(block)
    while pos + RECORD.size <= n:
        base, last, ln = RECORD.unpack_from(block, pos)
        pos += RECORD.size
        if pos + ln > n:
            raise ObjectFormatError("record runs past the end of its block")
        out.append((base, last, block[pos : pos + ln]))
        pos += ln
    return out

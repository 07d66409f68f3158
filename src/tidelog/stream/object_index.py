"""Where each stream's uploaded offsets live: stream -> sorted blocks of objects.

Built from the metadata store on start (each object's record lists its blocks), so a read
needs no LIST and no index GET: one range GET per block, or none when the block is cached.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from tidelog.stream.object_format import BlockIndex


@dataclass(slots=True)
class _Blocks:
    ends: list[int] = field(default_factory=list)
    blocks: list[tuple[str, BlockIndex]] = field(default_factory=list)


class ObjectIndex:
    def __init__(self) -> None:
        self._streams: dict[int, _Blocks] = {}
        self.objects: dict[str, list[BlockIndex]] = {}

    def add_object(self, key: str, blocks: list[BlockIndex]) -> None:
        self.objects[key] = blocks
        touched: set[int] = set()
        for b in blocks:
            s = self._streams.setdefault(b.stream_id, _Blocks())
            s.blocks.append((key, b))
            touched.add(b.stream_id)
        for sid in touched:
            s = self._streams[sid]
            s.blocks.sort(key=lambda kb: kb[1].start_offset)
            s.ends = [b.end_offset for _, b in s.blocks]

    def find(self, stream_id: int, offset: int) -> tuple[int, list[tuple[str, BlockIndex]]]:
        """(i, blocks): blocks[i] is the first block ending after `offset`; i may be len."""
        s = self._streams.get(stream_id)
        if s is None:
            return 0, []
        return bisect.bisect_right(s.ends, offset), s.blocks

    def blocks(self, stream_id: int) -> list[tuple[str, BlockIndex]]:
        s = self._streams.get(stream_id)
        return s.blocks if s else []

    def drop_stream(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    def unreferenced(self, starts: dict[int, int]) -> list[str]:
        """Objects none of whose blocks holds live data (garbage): every block belongs to
        a deleted stream or lies wholly below its stream's start offset (`starts`)."""
        return [k for k, bl in self.objects.items()
                if not any(b.end_offset > starts.get(b.stream_id, b.end_offset)
                           for b in bl)]

    def forget_object(self, key: str) -> None:
        blocks = self.objects.pop(key, None) or []
        for sid in {b.stream_id for b in blocks}:
            s = self._streams.get(sid)
            if s is not None:
                s.blocks = [kb for kb in s.blocks if kb[0] != key]
                s.ends = [b.end_offset for _, b in s.blocks]
